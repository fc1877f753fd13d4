"""Scenario bad: the sample files and the mutants sent to a running node, and the verdict on each answer."""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from bench.reliability.harness import (
    Bench,
    BenchError,
    Processor,
    StoreAttempt,
    fmt_s,
    journal_rows,
    logger,
    store_bytes,
    storescu_file,
    wait_drained,
)
from bench.reliability.mutants import CONTEXT_REFUSED, SUCCESS, make_mutants, sample_bases, synthetic_bases
from testkit.node import echo
from testkit.paths import samples_path

#: Restarts tried after the node exits before a scenario gives up.
MAX_RESTARTS = 5
#: Failure statuses that are a correct refusal (PS3.4 B.2.3; 0x0110 is this node's internal error).
REFUSAL_STATUSES = {0x0117, 0x0122}
FINAL_STATES = {"done", "skipped", "kept", "superseded", "failed"}


def is_refusal(status: int) -> bool:
    """True for the C-STORE failure statuses that are a correct refusal (see the docstring)."""
    return (status >> 8) in (0xA7, 0xA9) or (status >> 12) == 0xC or status in REFUSAL_STATUSES


def answer_label(attempt: StoreAttempt) -> str | None:
    """The answer as a label (``0x0000``, ``0xC210``..., ``context refused``); None without one."""
    if attempt.outcome == "context-refused":
        return CONTEXT_REFUSED
    if attempt.outcome != "answered" or attempt.status is None:
        return None
    return f"0x{attempt.status:04X}"


@dataclass
class SendRecord:
    """What happened to one bad-input send (a row of bad_inputs.tsv)."""

    name: str
    kind: str
    family: str
    description: str
    sop_uid: str
    attempt: StoreAttempt
    #: The answers predicted from what was broken (samples: Success); None: not predictable.
    expected: frozenset[str] | None = None
    echo_ok: bool = True
    crashed: bool = False
    final_state: str = ""
    final_detail: str = ""
    verdict: str = ""


def scenario_bad(bench: Bench) -> tuple[str, bool]:
    """Samples + mutants against a running node; see the module docstring for the verdicts."""
    args = bench.args
    t0 = time.monotonic()
    samples_dir = samples_path()
    if samples_dir is None:
        raise BenchError("real DICOM samples not found: set TAVISEG_DICOM_SAMPLES or place them in "
                         "../shared/dicom-samples (with MANIFEST.tsv)")
    processor = bench.processor(args.bad_processor)
    node = bench.node("bad", processor)
    state = Path(node.cfg["state_dir"])
    scratch = bench.workdir / "bad" / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"bad-{args.seed}")
    records: list[SendRecord] = []
    crashes = 0
    node.start()
    try:
        by_uid: dict[str, SendRecord] = {}

        def handle_crash(when: str) -> None:
            """Count the exit, name the instance being processed, restart (bounded)."""
            nonlocal crashes
            for _ in range(MAX_RESTARTS):
                crashes += 1
                culprits = [r["sop_instance_uid"] for r in journal_rows(state, "instances")
                            if r["state"] == "processing"]
                for uid in culprits:
                    if uid in by_uid:
                        by_uid[uid].crashed = True
                crash_log = bench.workdir / "bad" / f"crash-{crashes:03d}.log"
                crash_log.write_text(node.log()[-20000:])
                logger.error("node exited with %s %s while processing %s; log tail in %s; restarting",
                             node.proc.returncode, when, [by_uid[u].name if u in by_uid else u for u in culprits],
                             crash_log)
                try:
                    node.start()
                    return
                except RuntimeError as exc:
                    logger.error("node restart failed: %s", str(exc).splitlines()[0])
            raise BenchError(f"bad inputs: the node does not come back after {MAX_RESTARTS} restarts")

        def after_send(record: SendRecord) -> None:
            records.append(record)
            by_uid[record.sop_uid] = record
            if node.alive():
                record.echo_ok = echo(node.port) == 0x0000
                if not record.echo_ok and node.alive():
                    logger.error("node did not answer C-ECHO after %s", record.name)
            if not node.alive():
                record.echo_ok = True  # not an echo failure: the exit is counted as a crash
                handle_crash(f"after {record.name} was sent")

        def drain() -> bool:
            deadline = time.monotonic() + args.drain_timeout
            while time.monotonic() < deadline:
                if wait_drained(state, min(30.0, max(deadline - time.monotonic(), 1.0))):
                    return True
                if not node.alive():
                    handle_crash("while draining")
            return False

        for path in sorted(samples_dir.glob("*.dcm")):
            meta = pydicom.dcmread(path, stop_before_pixels=True)
            if bench.storescu:
                attempt = storescu_file(bench.storescu, node.port, path)
            else:
                attempt = store_bytes(node.port, path.read_bytes(), scratch, fallback=(
                    str(meta.SOPClassUID), str(meta.SOPInstanceUID), str(meta.file_meta.TransferSyntaxUID)))
            after_send(SendRecord(path.name, "sample", "unchanged", "sample file as it is",
                                  str(meta.SOPInstanceUID), attempt, frozenset({SUCCESS})))
        bases = synthetic_bases() + sample_bases(samples_dir)
        for mutant in make_mutants(args.mutants, bases, rng):
            attempt = store_bytes(node.port, mutant.data, scratch, fallback=mutant.fallback)
            after_send(SendRecord(mutant.name, "mutant", mutant.family, mutant.description,
                                  attempt.sop_uid or mutant.sop_uid, attempt, mutant.expected))
            if len(records) % 50 == 0:
                logger.info("bad inputs: %d sent", len(records))
        drained = drain()
        if not drained:
            logger.error("bad inputs: node not drained after %.0f s", args.drain_timeout)
        peak_kib = sum(node.tree_memory_kib("VmHWM"))
        leftovers = [p.name for p in (state / "spool" / "incoming").iterdir()] if node.alive() else []
    finally:
        node.terminate()
    elapsed = time.monotonic() - t0
    return _judge_bad(bench, records, state, crashes, peak_kib, leftovers, processor, elapsed)


def _judge_bad(bench: Bench, records: list[SendRecord], state: Path, crashes: int, peak_kib: int,
               leftovers: list[str], processor: Processor, elapsed: float) -> tuple[str, bool]:
    rows_by_uid: dict[str, list[dict[str, Any]]] = {}
    for row in journal_rows(state, "instances"):
        rows_by_uid.setdefault(row["sop_instance_uid"], []).append(row)
    statuses: Counter = Counter()
    finals: Counter = Counter()
    unexpected = died = 0
    for rec in records:
        a = rec.attempt
        if a.outcome == "not-sendable":
            rec.verdict = "not sendable"
            continue
        if rec.crashed:
            rec.verdict = "crash"
        elif a.outcome == "context-refused":
            rec.verdict = "correct"
            statuses["context refused"] += 1
        elif a.outcome != "answered" or a.status is None:
            rec.verdict = f"wrong: {a.outcome}"
        elif a.status == 0x0000:
            rows = rows_by_uid.get(rec.sop_uid, [])
            if not rows:
                rec.verdict = "wrong: Success but not in the journal"
            else:
                last = rows[-1]
                rec.final_state, rec.final_detail = last["state"], last["detail"]
                finals[last["state"]] += 1
                if last["detail"].startswith("unexpected"):
                    unexpected += 1
                if "processing process died" in last["detail"]:
                    died += 1
                ok = all(r["state"] in FINAL_STATES and (r["state"] != "failed" or r["detail"]) for r in rows)
                rec.verdict = "correct" if ok else f"wrong: Success, journal state {last['state']}"
            statuses["0x0000"] += 1
        elif rec.kind == "mutant" and is_refusal(a.status):
            rec.verdict = "correct"
            statuses[f"0x{a.status:04X}"] += 1
        else:
            rec.verdict = f"wrong: status 0x{a.status:04X}"
            statuses[f"0x{a.status:04X}"] += 1
        if rec.verdict != "correct" and rec.verdict != "crash":
            logger.error("bad input %s (%s): %s %s", rec.name, rec.description, rec.verdict, a.detail)
        elif rec.expected is not None and answer_label(a) not in rec.expected:
            logger.error("bad input %s (%s): answered %s, expected %s", rec.name, rec.description,
                         answer_label(a), " or ".join(sorted(rec.expected)))
    table = bench.workdir / "bad" / "bad_inputs.tsv"
    with table.open("w") as f:
        f.write("name\tkind\tfamily\tdescription\tmode\toutcome\tstatus\texpected\techo\tfinal_state\tverdict\t"
                "detail\n")
        for r in records:
            a = r.attempt
            status = "" if a.status is None else f"0x{a.status:04X}"
            expected = "any" if r.expected is None else " or ".join(sorted(r.expected))
            detail = re.sub(r"\s+", " ", (r.final_detail or a.detail))[:300]
            f.write(f"{r.name}\t{r.kind}\t{r.family}\t{r.description}\t{a.mode}\t{a.outcome}\t{status}\t{expected}\t"
                    f"{'ok' if r.echo_ok else 'FAIL'}\t{r.final_state}\t{r.verdict}\t{detail}\n")
    sendable = [r for r in records if r.attempt.outcome != "not-sendable"]
    mutants_sent = sum(r.kind == "mutant" for r in sendable)
    samples_sent = sum(r.kind == "sample" for r in sendable)
    raw = sum(r.attempt.mode == "raw" for r in sendable)
    not_sendable = len(records) - len(sendable)
    correct = sum(r.verdict == "correct" for r in sendable)
    predicted = [r for r in sendable if r.expected is not None]
    as_predicted = sum(r.verdict == "correct" and answer_label(r.attempt) in r.expected for r in predicted)
    wrong = sum(r.verdict.startswith("wrong") for r in sendable)
    no_answer = sum(r.attempt.outcome in ("no-answer", "no-association") for r in sendable)
    echo_fail = sum(not r.echo_ok for r in sendable)
    refusals = ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items()) if k != "0x0000")
    finals_text = ", ".join(f"{v} {k}" for k, v in sorted(finals.items(), key=lambda kv: -kv[1]))
    stuck = sum(r.verdict.startswith("wrong: Success") for r in sendable)
    echo_text = ("node answered C-ECHO after every send" if echo_fail == 0
                 else f"node did not answer C-ECHO after {echo_fail} send(s)")
    line = (
        f"bad inputs: {len(sendable)} sent ({samples_sent} sample files, {mutants_sent} mutants; {raw} sent raw), "
        f"{not_sendable} not sendable; expected status {as_predicted} of {len(predicted)} (the sends whose status "
        f"follows from what was broken: samples, pixel data, header values the node checks, unreadable data sets), "
        f"acceptable answer {correct} of {len(sendable)} (Success the journal finishes, or a PS3.4 refusal; any "
        f"status allowed for the {len(sendable) - len(predicted)} whose damage does not decide it), "
        f"{wrong} wrong answers "
        f"({no_answer} without an answer, {stuck} stuck), {crashes} crashes, {echo_text}; "
        f"{statuses['0x0000']} Success ({finals_text or 'none'}; {died} failed because the run killed the "
        f"processing process, {unexpected} unexpected-error failures), "
        f"refused: {refusals or 'none'}; {len(leftovers)} temp files left in incoming/; "
        f"{processor.describe()}, node peak RSS {peak_kib / 1024**2:.2f} GiB (node + processing processes), "
        f"{fmt_s(elapsed)}"
    )
    ok = (correct == len(sendable) and as_predicted == len(predicted) and crashes == 0 and echo_fail == 0
          and mutants_sent >= min(500, bench.args.mutants) and not leftovers)
    if mutants_sent < min(500, bench.args.mutants):
        logger.error("only %d mutants were sent (%d not sendable)", mutants_sent, not_sendable)
    logger.info("per-send table: %s", table)
    return line, ok
