"""Scenario outage: Orthanc killed while runs are processed, restarted on the same storage and ports."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from bench.reliability.harness import (
    Bench,
    Destination,
    count_outputs,
    fmt_s,
    journal_rows,
    journal_state_counts,
    logger,
    send_dataset,
    wait_drained,
)
from testkit.node import make_xa, wait_until
from testkit.orthanc import start_orthanc


def scenario_outage(bench: Bench) -> tuple[str, bool]:
    """Orthanc stopped while runs are processed, restarted on the same storage and ports."""
    args = bench.args
    if bench.orthanc is None:
        return "PACS outage: skipped (Orthanc is not installed; bash scripts/setup.sh installs it)", False
    t0 = time.monotonic()
    processor = bench.processor(args.outage_processor, delay_s=args.outage_delay_s)
    runs = [make_xa(frames=4, size=64, seed=20_000 + i) for i in range(args.outage_runs)]
    expected = set().union(*(processor.expected_uids(str(r.SOPInstanceUID)) for r in runs))
    pacs_dir = bench.workdir / "outage" / "orthanc"
    pacs = start_orthanc(pacs_dir, binary=bench.orthanc)
    dicom_port, http_port = pacs.dicom_port, pacs.http_port
    dest = Destination(pacs, None)
    node = bench.node("outage", processor, **dest.node_settings())
    state = Path(node.cfg["state_dir"])
    statuses: list[int | None] = []
    crashes = 0
    try:
        node.start()
        sender = threading.Thread(target=lambda: statuses.extend(send_dataset(node.port, r) for r in runs),
                                  name="outage-sender", daemon=True)
        sender.start()
        quarter = max(1, len(expected) // 4)
        wait_until(lambda: journal_state_counts(state)["outbox:delivered"] >= quarter, 120,
                   f"{quarter} output(s) delivered before the outage")
        pacs.process.kill()  # an abrupt outage (a graceful stop may serve on for seconds)
        pacs.process.wait(30)
        down_at = time.monotonic()
        before = journal_state_counts(state)["outbox:delivered"]
        logger.info("outage: Orthanc stopped after %d output(s) delivered", before)
        sender.join(120)
        processed_during = journal_state_counts(state)
        def processed_and_tried() -> bool:
            counts = journal_state_counts(state)
            if counts["done"] + counts["failed"] < len(runs):
                return False
            pending = [r for r in journal_rows(state, "outbox") if r["state"] == "pending"]
            return not pending or any(r["attempts"] > 0 for r in pending)

        wait_until(processed_and_tried, min(args.drain_timeout, 120 + 5 * len(runs)),
                   "every run processed and a failed delivery attempt")
        pause = threading.Event()
        pause.wait(max(0.0, args.outage_s - (time.monotonic() - down_at)))  # the outage lasts at least --outage-s
        waiting = journal_state_counts(state)
        pending_rows = [r for r in journal_rows(state, "outbox") if r["state"] == "pending"]
        failed_attempts = sum(r["attempts"] for r in pending_rows)
        pacs = start_orthanc(pacs_dir, binary=bench.orthanc, dicom_port=dicom_port, http_port=http_port)
        dest = Destination(pacs, None)
        up_at = time.monotonic()
        outage_s = up_at - down_at
        delivered_ok = wait_drained(state, args.drain_timeout)
        back_s = time.monotonic() - up_at
        after = journal_state_counts(state)["outbox:delivered"] - waiting["outbox:delivered"]
        if not node.alive():
            crashes += 1
        present, lost, duplicates = count_outputs(dest, expected)
    finally:
        node.terminate()
        pacs.stop()
    elapsed = time.monotonic() - t0
    answered = sum(s == 0 for s in statuses)
    line = (
        f"PACS outage: {len(runs)} runs ({processor.describe()}), {answered} answered Success, Orthanc killed "
        f"after {before} of {len(expected)} outputs were delivered (runs still processing: "
        f"{processed_during['received'] + processed_during['processing']}), down {fmt_s(outage_s)} while "
        f"{len(pending_rows)} outputs waited ({failed_attempts} failed delivery attempts), restarted on the same "
        f"storage and ports: {after} of {len(pending_rows)} delivered after it came back (all within "
        f"{fmt_s(back_s)}), {present} of {len(expected)} outputs at the PACS, {lost} lost, {duplicates} duplicates, "
        f"{crashes} crashes, {fmt_s(elapsed)}"
    )
    ok = (lost == 0 and duplicates == 0 and crashes == 0 and delivered_ok and answered == len(runs)
          and after == len(pending_rows) and len(pending_rows) > 0)
    return line, ok
