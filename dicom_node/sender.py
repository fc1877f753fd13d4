"""Delivering the outbox: C-STORE to DICOM destinations (optionally TLS), or a folder.

:class:`DeliveryLoop` is a thread that wakes when a worker commits outputs or a retry is due,
sends due outbox rows per destination (several objects per association), and records each
outcome: delivered; retried later with exponential back-off; or given up after
``delivery.give_up_after_s`` with the reason kept in the journal.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pydicom
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.presentation import build_context

from dicom_node.config import DeliveryConfig, DestinationConfig
from dicom_node.errors import DeliveryError, JournalError
from dicom_node.journal import Journal, OutboxRow
from dicom_node.metrics import NodeMetrics
from dicom_node.outbox import Outbox
from dicom_node.sop import is_valid_uid
from dicom_node.tls import client_context
from tavicore.fileio import fsync_dir, fsync_file

logger = logging.getLogger(__name__)

#: Name of the folder destination used when no C-STORE destination is configured.
FOLDER_DESTINATION = "folder"
_WARNING_STATUSES = {0x0001, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class SendResult:
    """Outcome of sending one file: delivered or not, the status text and a reason."""

    ok: bool
    status: str
    detail: str = ""


class Destination(Protocol):
    """Somewhere output files go."""

    name: str

    def send(self, paths: Sequence[Path]) -> list[SendResult]:
        """Send files in order; one result per file (never raises for a delivery failure)."""
        ...


class DicomDestination:
    """A C-STORE SCP (PACS): one association per call, all files sent over it.

    Args:
        cfg: AE title, host, port, timeout and optional TLS of the destination.
        calling_ae_title: The node's AE title.
    """

    def __init__(self, cfg: DestinationConfig, calling_ae_title: str) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.calling_ae_title = calling_ae_title
        self._tls = client_context(cfg.tls) if cfg.tls is not None else None

    def send(self, paths: Sequence[Path]) -> list[SendResult]:
        """C-STORE ``paths``; a failed association fails every file with its reason."""
        try:
            metas = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
        except (OSError, InvalidDicomError) as exc:
            return [SendResult(False, "unreadable", f"outbox file unreadable: {exc}")] * len(paths)
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.cfg.timeout_s
        ae.connection_timeout = self.cfg.timeout_s
        pairs = sorted({(str(m.SOPClassUID), str(m.file_meta.TransferSyntaxUID)) for m in metas})
        if len(pairs) > 128:
            return [SendResult(False, "too-many-contexts", "more than 128 presentation contexts")] * len(paths)
        ae.requested_contexts = [build_context(sop, [ts]) for sop, ts in pairs]
        tls_args = None
        if self._tls is not None:
            tls_args = (self._tls, self.cfg.tls.server_hostname or self.cfg.host)  # type: ignore[union-attr]
        assoc = ae.associate(self.cfg.host, self.cfg.port, ae_title=self.cfg.ae_title, tls_args=tls_args)
        if not assoc.is_established:
            reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no connection"
            return [SendResult(False, "association-failed", f"association to {self.name} {reason}")] * len(paths)
        results: list[SendResult] = []
        try:
            for path in paths:
                if not assoc.is_established:
                    results.append(SendResult(False, "association-lost", "association ended early"))
                    continue
                try:
                    rsp = assoc.send_c_store(path)
                except (ValueError, RuntimeError, OSError) as exc:
                    results.append(SendResult(False, "send-error", f"{type(exc).__name__}: {exc}"))
                    continue
                status = rsp.get("Status") if rsp else None
                if status is None:
                    results.append(SendResult(False, "no-response", "no valid C-STORE response"))
                elif status == 0x0000 or status in _WARNING_STATUSES:
                    results.append(SendResult(True, f"0x{status:04X}"))
                else:
                    comment = str(rsp.get("ErrorComment", "") or "")
                    results.append(SendResult(False, f"0x{status:04X}", f"refused: {comment}".strip()))
        finally:
            if assoc.is_established:
                assoc.release()
        return results


class FolderDestination:
    """A folder: ``<root>/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` (UIDs checked first).

    The embedded default when no C-STORE destination is configured.
    """

    name = FOLDER_DESTINATION

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def send(self, paths: Sequence[Path]) -> list[SendResult]:
        """Copy each file durably into its study folder."""
        results = []
        for path in paths:
            try:
                ds = pydicom.dcmread(
                    path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SOPInstanceUID"]
                )
                study, sop = str(ds.get("StudyInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))
                if not (is_valid_uid(study) and is_valid_uid(sop)):
                    raise DeliveryError(f"output {path.name} has no valid Study/SOP Instance UID")
                folder = self.root / study
                folder.mkdir(parents=True, exist_ok=True)
                dest = folder / f"{sop}.dcm"
                part = folder / f".{sop}.part"
                shutil.copyfile(path, part)
                fsync_file(part)
                os.replace(part, dest)
                fsync_dir(folder)
                results.append(SendResult(True, "written"))
            except (OSError, DeliveryError, InvalidDicomError) as exc:
                results.append(SendResult(False, "write-error", str(exc)))
        return results


def retry_delay(attempts: int, cfg: DeliveryConfig) -> float:
    """Back-off before the next try after ``attempts`` failed tries (>= 1)."""
    return min(cfg.initial_retry_s * cfg.backoff_factor ** max(attempts - 1, 0), cfg.max_retry_s)


class DeliveryLoop:
    """Background thread delivering due outbox rows.

    Args:
        journal: The node's journal.
        outbox: Where the files are.
        destinations: By name (the names the outbox rows use).
        cfg: Retry policy.
        metrics: Counters and latency histogram to update.
    """

    def __init__(
        self,
        journal: Journal,
        outbox: Outbox,
        destinations: Sequence[Destination],
        cfg: DeliveryConfig,
        metrics: NodeMetrics,
    ) -> None:
        self.journal = journal
        self.outbox = outbox
        self.destinations = {d.name: d for d in destinations}
        self.cfg = cfg
        self.metrics = metrics
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delivery", daemon=True)

    def start(self) -> None:
        """Start delivering in the background."""
        self._thread.start()

    def wake(self) -> None:
        """New outputs are pending: deliver now rather than at the next due time."""
        self._wake.set()

    def stop(self, timeout: float) -> None:
        """Finish the current batch (bounded by ``timeout``) and stop."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("delivery still busy after %.0f s; pending objects are retried at the next start", timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_due()
                nxt = self.journal.next_attempt_time()
            except JournalError as exc:
                logger.error("delivery: journal unavailable: %s", exc)
                nxt = time.time() + 5.0
            except Exception:  # keep delivering: pending rows stay in the journal
                logger.exception("delivery: unexpected error; retrying in 5 s")
                nxt = time.time() + 5.0
            wait = 60.0 if nxt is None else min(max(nxt - time.time(), 0.0), 60.0)
            self._wake.wait(wait)
            self._wake.clear()

    def deliver_due(self) -> int:
        """Send every due row once (grouped per destination); returns how many were delivered."""
        delivered = 0
        due = self.journal.due_outputs(time.time())
        by_dest: dict[str, list[OutboxRow]] = {}
        for row in due:
            by_dest.setdefault(row.destination, []).append(row)
        for name, rows in by_dest.items():
            dest = self.destinations.get(name)
            if dest is None:
                for row in rows:
                    self._record(row, SendResult(False, "unknown-destination",
                                                 f"destination {name!r} is no longer configured"), give_up=True)
                continue
            for start in range(0, len(rows), self.cfg.max_per_association):
                if self._stop.is_set():
                    return delivered
                batch = rows[start:start + self.cfg.max_per_association]
                results = dest.send([self.outbox.path_of(r.file) for r in batch])
                for row, res in zip(batch, results):
                    delivered += self._record(row, res)
        return delivered

    def _record(self, row: OutboxRow, res: SendResult, *, give_up: bool = False) -> int:
        now = time.time()
        if res.ok:
            self.journal.mark_delivered(row.id, res.status)
            self.outbox.release(row.file)
            self.metrics.delivered.labels(destination=row.destination).inc()
            inst = self.journal.get_instance(row.instance_id)
            if inst is not None:
                self.metrics.end_to_end_seconds.labels(destination=row.destination).observe(now - inst.received_at)
            logger.info("delivered %s %s to %s (%s)", row.kind, row.sop_instance_uid, row.destination, res.status)
            return 1
        self.metrics.delivery_failures.labels(destination=row.destination).inc()
        first = row.first_attempt_at if row.first_attempt_at is not None else now
        if give_up or now - first >= self.cfg.give_up_after_s:
            reason = f"given up after {row.attempts + 1} attempt(s): {res.status} {res.detail}".strip()
            self.journal.mark_attempt_failed(row.id, status=res.status, detail=reason, next_attempt_at=None)
            self.outbox.release(row.file)
            self.metrics.given_up.labels(destination=row.destination).inc()
            logger.error("gave up delivering %s %s to %s: %s", row.kind, row.sop_instance_uid, row.destination, reason)
            return 0
        delay = retry_delay(row.attempts + 1, self.cfg)
        self.journal.mark_attempt_failed(
            row.id, status=res.status, detail=res.detail, next_attempt_at=now + delay
        )
        logger.warning(
            "delivery of %s %s to %s failed (%s %s); retry in %.0f s",
            row.kind, row.sop_instance_uid, row.destination, res.status, _short(res.detail), delay,
        )
        return 0


def _short(text: str, limit: int = 200) -> str:
    return re.sub(r"\s+", " ", text)[:limit]
