"""``taviseg status``: the spool, the work queue and the outbox, read from the journal.

Reads the journal read-only (SQLite WAL lets it run while the node writes), so it works whether
or not the node is running. Shows UIDs, states and counts, never patient data; a failure detail
is shown without its traceback (one line, control characters escaped; the whole detail is
logged at debug level). :func:`requeue_failed` (``taviseg requeue``) puts failed runs back in
the queue: a running node picks them up within seconds, a stopped one at its next start.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from dicom_node.config import NodeConfig
from dicom_node.journal import Journal

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_control(text: str) -> str:
    """``text`` with every control character (newline, CR, ESC, NUL, C1, line separators...)
    written as a visible escape (``\\n``, ``\\x1b``, ``\\u2028``)."""
    def repl(match: re.Match) -> str:
        c = match.group()
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or (
            f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
    return _CONTROL.sub(repl, text)


_TRACEBACK = "Traceback (most recent call last)"
DETAIL_LIMIT = 300


def short_detail(detail: str, limit: int = DETAIL_LIMIT) -> str:
    """A failure detail for people: no traceback (its last line, the exception, is kept), one
    line with control characters escaped, at most ``limit`` characters."""
    text = str(detail or "")
    if _TRACEBACK in text:
        head, _, tb = text.partition(_TRACEBACK)
        lines = [line.strip() for line in tb.splitlines() if line.strip()]
        last = next((line for line in reversed(lines) if not line.startswith(("File ", "^", "~"))), "")
        text = " ".join(part for part in (head.strip().rstrip(":"), last) if part)
    text = escape_control(" ".join(text.split(" ")).strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."

logger = logging.getLogger(__name__)


def read_ready_file(path: Path) -> dict[str, Any]:
    """The ready file of a running node: pid, AE title, DICOM and metrics ports."""
    return json.loads(Path(path).read_text())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def node_status(cfg: NodeConfig, *, recent: int = 10) -> dict[str, Any]:
    """Summary of a node's state.

    Args:
        cfg: The node's configuration (where its journal is).
        recent: How many recent problem rows (failed/skipped instances, failed/retrying outputs).

    Returns:
        A JSON-serialisable mapping: running (pid or None), instances (by state),
        queue (waiting/processing), outbox (per destination and state), problems.

    Raises:
        JournalError: no journal at the configured place, or unreadable.
    """
    journal = Journal(cfg.journal_path, readonly=True)
    try:
        counts = journal.instance_counts()
        outbox = journal.outbox_counts()
        problem_rows = journal.instances(states=("failed", "skipped"), limit=recent)
        for r in problem_rows:
            logger.debug("instance #%d %s: %s", r.id, r.state, r.detail)
        problems = [
            {"id": r.id, "sop_instance_uid": r.sop_instance_uid, "state": r.state, "detail": short_detail(r.detail)}
            for r in problem_rows
        ]
        deferred = [
            {"id": r.id, "sop_instance_uid": r.sop_instance_uid, "detail": short_detail(r.detail)}
            for r in journal.deferred(limit=recent)
        ]
        retrying = [
            {"id": r.id, "destination": r.destination, "kind": r.kind, "sop_instance_uid": r.sop_instance_uid,
             "state": r.state, "attempts": r.attempts, "last_status": r.last_status,
             "detail": short_detail(r.detail), "next_attempt_at": r.next_attempt_at}
            for r in journal.outputs(states=("pending", "failed"), limit=recent)
            if r.state == "failed" or r.attempts > 0
        ]
    finally:
        journal.close()
    running = None
    if cfg.ready_file is not None and cfg.ready_file.is_file():
        info = read_ready_file(cfg.ready_file)
        if _pid_alive(int(info.get("pid", 0))):
            running = info
    spool_files = sum(1 for _ in cfg.spool_dir.joinpath("instances").glob("*.dcm")) if cfg.spool_dir.is_dir() else 0
    return {
        "journal": str(cfg.journal_path),
        "running": running,
        "instances": counts,
        "queue": {"waiting": counts["received"], "processing": counts["processing"]},
        "spool_files": spool_files,
        "outbox": outbox,
        "problem_instances": problems,
        "waiting_for_disk": deferred,
        "problem_outputs": retrying,
    }


def requeue_failed(cfg: NodeConfig, *, sop_instance_uids: list[str] | None = None) -> dict[str, Any]:
    """Put failed runs back in the queue (all of them when ``sop_instance_uids`` is None).

    Returns:
        ``{"requeued": [{id, sop_instance_uid}...], "missing_file": [...], "unknown": [uids]}``:
        runs requeued, failed runs whose spool file is gone (retention), UIDs with no failed run.

    Raises:
        JournalError: no journal at the configured place, or it cannot be written.
    """
    journal = Journal(cfg.journal_path)
    try:
        done, gone = journal.requeue(sop_instance_uids=sop_instance_uids)
    finally:
        journal.close()
    found = {r.sop_instance_uid for r in done + gone}
    for r in done:
        logger.info("instance #%d %s requeued", r.id, r.sop_instance_uid)
    for r in gone:
        logger.warning("instance #%d %s not requeued: its spool file was deleted", r.id, r.sop_instance_uid)
    return {
        "requeued": [{"id": r.id, "sop_instance_uid": r.sop_instance_uid} for r in done],
        "missing_file": [{"id": r.id, "sop_instance_uid": r.sop_instance_uid} for r in gone],
        "unknown": [u for u in (sop_instance_uids or []) if u not in found],
    }


def format_status(status: dict[str, Any]) -> str:
    """Human-readable rendering of :func:`node_status`."""
    lines = []
    run = status["running"]
    if run:
        lines.append(f"node:     running (pid {run['pid']}, DICOM port {run['dicom_port']})")
    else:
        lines.append("node:     not running (or no ready_file configured)")
    lines.append(f"journal:  {status['journal']}")
    q = status["queue"]
    lines.append(f"queue:    {q['waiting']} waiting, {q['processing']} processing")
    inst = status["instances"]
    lines.append("spool:    " + ", ".join(f"{k} {v}" for k, v in inst.items()) + f" ({status['spool_files']} file(s))")
    if status["outbox"]:
        for dest, c in sorted(status["outbox"].items()):
            lines.append(f"outbox:   {dest}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    else:
        lines.append("outbox:   empty")
    for p in status["problem_instances"]:
        lines.append(f"  instance #{p['id']} {p['sop_instance_uid']} {p['state']}: {p['detail']}")
    for p in status.get("waiting_for_disk", []):
        lines.append(f"  instance #{p['id']} {p['sop_instance_uid']} retrying: {p['detail']}")
    for p in status["problem_outputs"]:
        when = dt.datetime.fromtimestamp(p["next_attempt_at"]).strftime("%H:%M:%S")
        tail = f"next try {when}" if p["state"] == "pending" else "given up"
        lines.append(
            f"  output #{p['id']} {p['kind']} -> {p['destination']} {p['state']} after {p['attempts']} "
            f"attempt(s), {p['last_status']} {p['detail']} ({tail})"
        )
    return "\n".join(lines)
