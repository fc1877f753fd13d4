"""Scenario load: concurrent senders; processed runs, the node's peak memory and the wall time."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pydicom

from bench.reliability.harness import (
    Bench,
    count_outputs,
    destination,
    fmt_s,
    journal_state_counts,
    logger,
    wait_drained,
)
from testkit.node import make_xa


def scenario_load(bench: Bench) -> tuple[str, bool]:
    """Concurrent senders; processed count, node peak memory and wall time."""
    args = bench.args
    t0 = time.monotonic()
    processor = bench.processor(args.load_processor)
    n_senders, per = args.senders, args.runs_per_sender
    folders = []
    runs: list[pydicom.Dataset] = []
    for s in range(n_senders):
        folder = bench.workdir / "load" / f"sender{s}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per):
            runs.append(make_xa(folder / f"run{j:03d}.dcm", frames=8, size=128, seed=30_000 + s * 1000 + j))
        folders.append(folder)
    expected = set().union(*(processor.expected_uids(str(r.SOPInstanceUID)) for r in runs))
    with destination(bench, "load") as dest:
        node = bench.node("load", processor, limits={"min_free_bytes": 0, "max_associations": n_senders + 2},
                          **dest.node_settings())
        state = Path(node.cfg["state_dir"])
        node.start()
        try:
            baseline_kib = sum(node.tree_memory_kib("VmRSS"))
            start = time.monotonic()
            answered, how = _load_send(bench, node.port, folders)
            answered_s = time.monotonic() - start
            drained = wait_drained(state, args.drain_timeout)
            wall = time.monotonic() - start
            own_kib, children_kib = node.tree_memory_kib("VmHWM")
            crashes = 0 if node.alive() else 1
            counts = journal_state_counts(state)
        finally:
            node.terminate()
        present, lost, duplicates = count_outputs(dest, expected)
        dest_name = dest.name
    total = n_senders * per
    line = (
        f"load: {n_senders} concurrent senders ({how}) x {per} runs (8 frames 128x128 XA), {answered} of {total} "
        f"answered Success in {fmt_s(answered_s)}, {counts['done']} of {total} processed ({processor.describe()}), "
        f"{present} of {len(expected)} outputs at {dest_name}, {lost} lost, {duplicates} duplicates, "
        f"{crashes} crashes, "
        f"node peak RSS {(own_kib + children_kib) / 1024**2:.2f} GiB (VmHWM: node process {own_kib / 1024**2:.2f} + "
        f"processing process {children_kib / 1024**2:.2f}; {baseline_kib / 1024**2:.2f} GiB after start-up), "
        f"wall {fmt_s(wall)} from first send to last delivery ({total / wall:.2f} runs/s); "
        f"total {fmt_s(time.monotonic() - t0)}"
    )
    ok = answered == total and counts["done"] == total and lost == 0 and duplicates == 0 and crashes == 0 and drained
    return line, ok


def _load_send(bench: Bench, port: int, folders: list[Path]) -> tuple[int, str]:
    """All senders at once; the number of Success answers and how they were sent."""
    files = [sorted(f.glob("*.dcm")) for f in folders]
    if bench.storescu:
        procs = [subprocess.Popen([bench.storescu, "-v", "-x=", "-aet", "STORESCU", "-aec", "TAVISEG", "127.0.0.1",
                                   str(port), *map(str, fs)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for fs in files]
        answered = 0
        for p in procs:
            try:
                out, _ = p.communicate(timeout=bench.args.drain_timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate(timeout=30)
                logger.error("storescu (pid %d) did not finish in time", p.pid)
            answered += out.count("Received Store Response (Success)")
        return answered, "dcmtk storescu processes"
    results: list[int] = []
    lock = threading.Lock()

    def one(fs: list[Path]) -> None:
        from testkit.node import send
        statuses = send(port, fs, calling="STORESCU")
        with lock:
            results.extend(s for s in statuses if s == 0)

    threads = [threading.Thread(target=one, args=(fs,)) for fs in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join(bench.args.drain_timeout)
    return len(results), "pynetdicom threads"
