"""Receive throughput: the node's C-STORE SCP against dcmtk's storescp, same file, same sender.

One uncompressed multi-frame X-Ray Angiographic Image (default: 100 frames of 1000x1000
8-bit phantom pixels, about 100 MB) is sent ``--repeats`` times with dcmtk ``storescu`` to
(a) dcmtk ``storescp`` in its default configuration (single process, default max PDU,
writing into a temporary folder, no fsync) and (b) the real node process
(``python -m taviseg serve``, default limits: unlimited max PDU, chunked receive to disk,
fsync of the file and of the spool folder before Success). The node's processor skips every
run without reading it (:func:`receive_only_processor`), so what is timed is receiving, not
segmenting. The two receivers are interleaved (the order alternates per repeat), each
received file is removed (the node's once its worker has deleted it) and ``sync`` is called
between sends (outside the timing), so neither receiver pays for the other's write-back nor
for freeing the blocks of an earlier send. A send is timed from the start of
``storescu`` to its exit (association, C-STORE, response, release: the same overhead for
both). Prints ONE summary line on stdout (medians; MB = 10**6 bytes), e.g.::

    receive 100 frames 1000x1000 (100 MB) x5: node 239 MB/s, storescp 299 MB/s, ratio 0.80x

and the per-send times, best figures and the node's store-handler time on stderr. The node
acknowledges an instance only once it is on disk; storescp never fsyncs, so the bytes it has
acknowledged may still be only in the page cache. On 2 cores with a disk that writes about
640 MB/s, writing 100 MB takes at least 0.15 s, which is most of a send: the node's PDU reader
(:mod:`dicom_node.pdu_reader`) makes the receive path itself 1.3-1.4x storescp ("bare" below),
and the early write-back (:class:`dicom_node.scp.EarlyWriteback`) overlaps most of the disk
writes with the transfer, so the node lands at storescp's speed (bench/RESULTS.md).

    .venv/bin/python bench/receive.py [--frames 100] [--size 1000] [--repeats 5] [--decompose] [--cpu]

``--decompose`` adds, interleaved with the others, a second node with pynetdicom's own PDU
reader (``limits.fast_pdu_reader: false``: "node/pynetdicom-reader"), and pynetdicom alone with
the node's receive settings (unlimited max PDU, the node's PDU reader, chunked to a file)
answering Success without an fsync ("bare"), after one ("bare+fsync"), after one with the
node's early write-back running during the transfer ("bare+writeback": the node's durability
without the rest of the node), and without fsync but with pynetdicom's own reader
("bare/pynetdicom-reader"). It prints each receiver's median against storescp on stderr: what
the reader gains, what durability costs, and what the rest of the node adds.

``--cpu`` also reads the user and system CPU time of the node's process and of storescp from
``/proc/PID/stat`` before and after each send (the node's receiving runs in its main process;
its processing process is not counted) and prints the medians per send on stderr.

About 15 s with the defaults on 2 busy cores (phantom generation included), 45 s with
``--decompose --repeats 8``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dicom_node.config import ProcessingConfig
from dicom_node.errors import NotSegmentable
from dicom_node.pipeline import OutputObject
from dicom_node.spool import StoredInstance
from tavicore.fileio import fsync_file

REPO = Path(__file__).resolve().parent.parent
# run as a script: testkit (imported lazily) is not in the .venv's editable install yet
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    BenchError,
    require_tool,
    run_main,
    setup_logging,
    storescu,
    wait_until,
    work_folder,
)

logger = logging.getLogger("bench.receive")

#: What the node's configuration names as its processor (this module is imported by the node).
RECEIVE_ONLY_PROCESSOR = "bench.receive:receive_only_processor"
READY_TIMEOUT_S = 60.0


class ReceiveOnlyProcessor:
    """A processor that skips every run without opening it (the receive benchmark's node)."""

    name = "receive-only (benchmark)"
    version = "bench-receive-1"

    def process(self, instance: StoredInstance) -> list[OutputObject]:
        """Skip the run: the file is dropped from the spool, nothing is decoded or sent."""
        raise NotSegmentable(f"receive benchmark: instance #{instance.id} is not processed")


def receive_only_processor(cfg: ProcessingConfig) -> ReceiveOnlyProcessor:
    """Factory named by ``processing.processor_factory`` in the benchmark's node configuration."""
    return ReceiveOnlyProcessor()


def build_run_file(path: Path, *, frames: int, size: int, seed: int = 0) -> int:
    """Write a ``frames`` x ``size`` x ``size`` 8-bit phantom XA run (Explicit VR LE); its size in bytes."""
    from tavidata.phantom import PhantomConfig, generate_run, patient_seed
    from tavidata.phantom.dicom_export import write_xa_run

    config = PhantomConfig(size=size, seed=seed)
    run = generate_run(config, patient_seed(config, 0), 0, n_frames=frames)
    write_xa_run(path, run, patient_id="BENCHRECV")
    return path.stat().st_size


def fmt(value: float) -> str:
    """No decimals from 100 up, else three significant figures (384, 95.4, 0.328)."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def echo_ok(port: int, called: str) -> bool:
    """True when a C-ECHO (dcmtk echoscu) to ``127.0.0.1:port`` succeeds."""
    proc = subprocess.run([require_tool("echoscu"), "-aet", "ANGIO", "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)
    return proc.returncode == 0


@dataclass
class StoreScp:
    """dcmtk storescp in its default configuration, writing into ``folder``."""

    port: int
    folder: Path
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self) -> StoreScp:
        """Start and wait (bounded, polling C-ECHO) until it answers.

        Raises:
            BenchError: it exited or did not answer in time.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([require_tool("storescp"), "--output-directory", str(self.folder),
                                      str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise BenchError(f"storescp exited with {self.proc.returncode}: "
                                 f"{self.log_path.read_text(errors='replace')[-2000:]}")
            return echo_ok(self.port, "STORESCP")

        wait_until(ready, READY_TIMEOUT_S, "storescp answering C-ECHO")
        return self

    def received(self) -> list[Path]:
        """Files written so far."""
        return [p for p in self.folder.iterdir() if p.is_file()]

    def stop(self) -> None:
        """Terminate (bounded wait, then kill)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class BareScp:
    """pynetdicom alone, configured as the node receives (``--decompose``): unlimited max PDU,
    the node's PDU reader (pynetdicom's own with ``fast_reader`` off), chunked data sets written
    straight to a file. With ``fsync`` on, the file is fsynced before Success (what durability
    costs), and with ``early_writeback`` also on, the node's :class:`EarlyWriteback` runs while
    the data arrives (the node's durability without the rest of the node); else nothing (the
    receive path's own speed)."""

    def __init__(self, folder: Path) -> None:
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Verification, XRayAngiographicImageStorage

        from dicom_node.pdu_reader import FastPduReader
        from dicom_node.process_settings import RECEIVE_TO_DISK, TEMP_FOLDER
        from dicom_node.scp import EarlyWriteback
        from testkit.orthanc import free_port

        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fsync = self.early_writeback = False
        self.fast_reader = True
        self._reader = FastPduReader(on_bytes=self._count)
        self._writeback = EarlyWriteback(folder)
        self._writeback.start()
        # the node's own process-wide switches: chunked receive into this folder's temp files
        RECEIVE_TO_DISK.acquire(id(self), True)
        TEMP_FOLDER.acquire(id(self), str(folder))
        ae = AE("BARE")
        ae.maximum_pdu_size = 0
        ae.add_supported_context(XRayAngiographicImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.add_supported_context(Verification)
        self.port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_CONN_OPEN, self._on_conn_open),
                                                    (evt.EVT_C_STORE, self._on_store)])

    def configure(self, target: str) -> None:
        """Set the switches for one of the ``bare`` targets of ``--decompose``."""
        self.fsync = target in ("bare+fsync", "bare+writeback")
        self.early_writeback = target == "bare+writeback"
        self.fast_reader = target != "bare/pynetdicom-reader"

    def _on_conn_open(self, event) -> None:
        if self.fast_reader:
            self._reader.on_conn_open(event)

    def _count(self, nbytes: int) -> None:  # the node's reader tells each PDU's size
        if self.early_writeback:
            self._writeback.count(nbytes)

    def _on_store(self, event) -> int:
        path = Path(event.dataset_path)
        if self.fsync:
            fsync_file(path)
        os.replace(path, self.folder / "received.dcm")
        return 0x0000

    def received(self) -> list[Path]:
        """Files kept so far."""
        return [p for p in self.folder.iterdir() if p.is_file()]

    def stop(self) -> None:
        """Shut the server down, stop the write-back thread, restore the process-wide settings."""
        from dicom_node.process_settings import RECEIVE_TO_DISK, TEMP_FOLDER

        self.server.shutdown()
        self._writeback.stop()
        TEMP_FOLDER.release(id(self))
        RECEIVE_TO_DISK.release(id(self))


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by process ``pid``, from ``/proc/PID/stat``.

    Raises:
        OSError: the process is gone or ``/proc`` is not there (not Linux).
    """
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": fields 3, 4, ... of proc(5)
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks  # utime, stime: fields 14 and 15


def node_store_seconds(metrics_port: int) -> tuple[float, int]:
    """(sum, count) of the node's C-STORE handler histogram (durable store, after the data arrived)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total, count = 0.0, 0
    for line in text.splitlines():
        if line.startswith("taviseg_node_store_seconds_sum"):
            total = float(line.split()[-1])
        elif line.startswith("taviseg_node_store_seconds_count"):
            count = int(float(line.split()[-1]))
    return total, count


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100, help="frames of the run (default 100)")
    parser.add_argument("--size", type=int, default=1000, help="rows = columns (default 1000)")
    parser.add_argument("--repeats", type=int, default=5, help="sends to each receiver (default 5)")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    parser.add_argument("--decompose", action="store_true",
                        help="also time bare pynetdicom (node settings) without and with fsync, and with "
                             "pynetdicom's own PDU reader (stderr)")
    parser.add_argument("--cpu", action="store_true",
                        help="also report the receivers' user and system CPU seconds per send, read from "
                             "/proc/PID/stat (stderr)")
    parser.add_argument("-v", "--verbose", action="store_true", help="INFO diagnostics on stderr")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.repeats < 1 or args.size < 64:
        parser.error("--frames and --repeats must be >= 1, --size >= 64")
    setup_logging(logger, args.verbose)

    from testkit.node import NodeProcess, base_config, journal_counts, write_config
    from testkit.orthanc import free_port

    with work_folder(args.keep, "taviseg-bench-receive-") as work:
        scp: StoreScp | None = None
        nodes: dict[str, NodeProcess] = {}
        bare: BareScp | None = None
        try:
            path = work / "run.dcm"
            t0 = time.perf_counter()
            size_bytes = build_run_file(path, frames=args.frames, size=args.size)
            logger.info("built %s: %d frames %dx%d, %d bytes in %.1f s", path.name, args.frames, args.size, args.size,
                        size_bytes, time.perf_counter() - t0)

            scp = StoreScp(free_port(), work / "storescp", work / "storescp.log").start()

            def state_of(target: str) -> Path:
                return work / target.replace("/", "-")

            def start_node(target: str, **limits) -> NodeProcess:
                cfg = base_config(state_of(target), processing={"processor_factory": RECEIVE_ONLY_PROCESSOR},
                                  metrics={"enabled": True, "port": 0}, limits=limits)
                config = write_config(state_of(target).with_suffix(".yaml"), cfg)
                nodes[target] = NodeProcess(config).start(timeout=READY_TIMEOUT_S)
                return nodes[target]

            node = start_node("node")
            metrics_port = int(json.loads(node.ready_file.read_text())["metrics_port"])
            targets = ["storescp", "node"]
            if args.decompose:
                start_node("node/pynetdicom-reader", fast_pdu_reader=False)
                bare = BareScp(work / "bare")
                targets += ["node/pynetdicom-reader", "bare", "bare+fsync", "bare+writeback", "bare/pynetdicom-reader"]

            def settle() -> None:
                for p in scp.received() + (bare.received() if bare else []):
                    p.unlink()
                os.sync()

            times: dict[str, list[float]] = {t: [] for t in targets}
            cpu: dict[str, list[tuple[float, float]]] = {t: [] for t in targets if not t.startswith("bare")}
            pids = {"storescp": scp.proc.pid, **{name: n.proc.pid for name, n in nodes.items()}}
            handler: list[float] = []
            for i in range(args.repeats):
                order = targets if i % 2 == 0 else targets[::-1]
                for target in order:
                    settle()
                    cpu_before = cpu_seconds(pids[target]) if args.cpu and target in pids else None
                    if target.startswith("bare"):
                        bare.configure(target)
                        elapsed = storescu(path, bare.port, "BARE")
                    elif target == "storescp":
                        elapsed = storescu(path, scp.port, "STORESCP")
                        if len(scp.received()) != 1:
                            raise BenchError(f"storescp answered Success but wrote {len(scp.received())} file(s)")
                    else:
                        before = node_store_seconds(metrics_port)
                        elapsed = storescu(path, nodes[target].port, "TAVISEG")
                        wait_until(
                            lambda target=target, i=i: journal_counts(state_of(target)).get("skipped", 0) == i + 1,
                            60, f"{target} journaling send {i + 1} (skipped by the receive-only processor)")
                        # the worker deletes the skipped file after journaling it: wait, so that freeing
                        # its blocks (and any discard) happens before the next send, not during it
                        instances = state_of(target) / "spool" / "instances"
                        wait_until(lambda instances=instances: not any(instances.iterdir()), 60,
                                   f"{target} deleting the file of send {i + 1}")
                        if target == "node":
                            handler.append(node_store_seconds(metrics_port)[0] - before[0])
                    times[target].append(elapsed)
                    if cpu_before is not None:
                        user, system = cpu_seconds(pids[target])
                        cpu[target].append((user - cpu_before[0], system - cpu_before[1]))
                    logger.info("send %d to %-8s %.3f s (%.0f MB/s)", i + 1, target, elapsed,
                                size_bytes / 1e6 / elapsed)
            settle()
        finally:
            for running in nodes.values():
                running.terminate()
            if scp is not None:
                scp.stop()
            if bare is not None:
                bare.stop()

    mb = size_bytes / 1e6
    med = {k: mb / statistics.median(v) for k, v in times.items()}
    best = {k: mb / min(v) for k, v in times.items()}
    logger.info("best: node %.0f MB/s, storescp %.0f MB/s, ratio %.2fx; node C-STORE handler "
                "(header check, fsync, rename, journal) median %.3f s of median send %.3f s",
                best["node"], best["storescp"], best["node"] / best["storescp"],
                statistics.median(handler), statistics.median(times["node"]))
    if args.cpu:
        print("cpu per send (medians, user + system): " + ", ".join(
            f"{k} {statistics.median(u for u, _ in v):.2f} s + {statistics.median(s for _, s in v):.2f} s"
            for k, v in cpu.items()), file=sys.stderr)
    if args.decompose:
        print("decomposition (medians): " + ", ".join(
            f"{k} {fmt(v)} MB/s ({v / med['storescp']:.2f}x)" for k, v in med.items()), file=sys.stderr)
    print(f"receive {args.frames} frames {args.size}x{args.size} ({fmt(mb)} MB) x{args.repeats}: "
          f"node {fmt(med['node'])} MB/s, storescp {fmt(med['storescp'])} MB/s, "
          f"ratio {med['node'] / med['storescp']:.2f}x")
    return 0


if __name__ == "__main__":
    run_main(main, logger)
