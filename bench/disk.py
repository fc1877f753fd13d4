"""Disk write speed with ``fdatasync``, and how long a final ``fdatasync`` waits after write-back.

The node answers a C-STORE only once the instance is on disk, so the disk sets a floor under its
receive time (bench/receive.py, bench/RESULTS.md). This script measures, in ``--dir`` (default:
the system's temporary folder; point it at the node's spool disk):

1. **write speed**: ``--size-mib`` MiB of zeros written in 1 MiB blocks, then one
   ``fdatasync``, timed from the first write to the end of the sync (what
   ``dd if=/dev/zero of=F bs=1M count=200 conv=fdatasync`` reports), ``--repeats`` times;
2. **final sync after write-back**: ``--writeback-mib`` MiB written in 128 KiB blocks (the size
   of a P-DATA PDU) with, every ``--step-mib`` MiB, (a) nothing, (b) ``fdatasync`` (what the
   node's :class:`dicom_node.scp.EarlyWriteback` does, here in line rather than in a thread),
   (c) Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` (asynchronous write-out, no journal
   commit); then the time of the final ``fdatasync``, which is what a sender waits for after
   its last byte. ``--repeats`` times each, interleaved.

Prints ONE summary line on stdout (medians; MB = 10**6 bytes), e.g.::

    disk /tmp: write 200 MiB + fdatasync 640 MB/s (590, 684, 638); final fdatasync after 64 MiB
    written: no write-back 0.205 s, fdatasync every 8 MiB 0.021 s, sync_file_range every 8 MiB 0.079 s

    .venv/bin/python bench/disk.py [--dir DIR] [--size-mib 200] [--writeback-mib 64] [--step-mib 8]
        [--repeats 3]

A few seconds; the files are deleted afterwards. Figures on a shared virtual machine vary by
tens of per cent from run to run.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

MIB = 1 << 20
PDU = 128 * 1024
#: sync_file_range flag (linux/fs.h): start write-out of dirty pages in the range, do not wait.
SYNC_FILE_RANGE_WRITE = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def sync_file_range(fd: int, offset: int, nbytes: int) -> None:
    """Linux ``sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)``.

    Raises:
        OSError: the call failed (e.g. not Linux, or a file system without it).
    """
    func = _libc.sync_file_range
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    if func(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sync_file_range: {os.strerror(err)}")


def write_speed(path: Path, size_mib: int) -> float:
    """MB/s of writing ``size_mib`` MiB of zeros in 1 MiB blocks followed by one fdatasync."""
    block = bytes(MIB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t0 = time.perf_counter()
        for _ in range(size_mib):
            os.write(fd, block)
        os.fdatasync(fd)
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink()
    return size_mib * MIB / 1e6 / elapsed


def final_sync_after(path: Path, total_mib: int, step_mib: int, policy: str) -> float:
    """Seconds of the final fdatasync after ``total_mib`` MiB written with write-back ``policy``.

    ``policy`` is ``none``, ``fdatasync`` or ``sync_file_range``, applied every ``step_mib`` MiB.
    """
    block = os.urandom(PDU)  # not zeros: nothing along the way may skip or compress them
    actions: dict[str, Callable[[int, int, int], None]] = {
        "none": lambda fd, start, n: None,
        "fdatasync": lambda fd, start, n: os.fdatasync(fd),
        "sync_file_range": sync_file_range,
    }
    action = actions[policy]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        written = synced = 0
        while written < total_mib * MIB:
            written += os.write(fd, block)
            if written - synced >= step_mib * MIB:
                action(fd, synced, written - synced)
                synced = written
        t0 = time.perf_counter()
        os.fdatasync(fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink()


def main(argv: list[str] | None = None) -> int:
    """Run both measurements; one summary line on stdout. Returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="folder on the disk to measure (default: the temporary folder)")
    parser.add_argument("--size-mib", type=int, default=200, help="write-speed file size (default 200)")
    parser.add_argument("--writeback-mib", type=int, default=64, help="write-back file size (default 64)")
    parser.add_argument("--step-mib", type=int, default=8, help="write-back step (default 8, the node's)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement (default 3)")
    args = parser.parse_args(argv)
    if min(args.size_mib, args.writeback_mib, args.step_mib, args.repeats) < 1:
        parser.error("sizes, step and repeats must be >= 1")
    if not args.dir.is_dir():
        parser.error(f"--dir {args.dir}: not a folder")
    path = args.dir / f"taviseg-bench-disk-{os.getpid()}.bin"
    speeds = [write_speed(path, args.size_mib) for _ in range(args.repeats)]
    policies = ("none", "fdatasync", "sync_file_range")
    waits: dict[str, list[float]] = {p: [] for p in policies}
    for i in range(args.repeats):
        for policy in policies if i % 2 == 0 else policies[::-1]:
            os.sync()  # start each from a clean page cache state, outside the timing
            waits[policy].append(final_sync_after(path, args.writeback_mib, args.step_mib, policy))
    w = {p: statistics.median(v) for p, v in waits.items()}
    print(f"disk {args.dir}: write {args.size_mib} MiB + fdatasync {statistics.median(speeds):.0f} MB/s "
          f"({', '.join(f'{s:.0f}' for s in speeds)}); final fdatasync after {args.writeback_mib} MiB written: "
          f"no write-back {w['none']:.3f} s, fdatasync every {args.step_mib} MiB {w['fdatasync']:.3f} s, "
          f"sync_file_range every {args.step_mib} MiB {w['sync_file_range']:.3f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as exc:  # name the problem (folder, call), no traceback
        print(f"disk bench failed: {exc}", file=sys.stderr)
        sys.exit(1)
