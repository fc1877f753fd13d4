"""The running node: journal + spool + workers + outbox + delivery + SCP + metrics.

Start-up order makes a restart after a crash safe: open the journal, clean the spool and the
outbox, put interrupted runs back in the queue, load the processors, each in a processing
process of its own (fail fast on a bad model; see :mod:`dicom_node.isolation`),
start delivery and workers, then accept associations and write the ready file. Shutdown
(SIGTERM/SIGINT) runs in reverse within ``shutdown_timeout_s``: stop accepting, let workers
finish the run in hand, stop delivery; unfinished work stays in the journal for the next start.

While it runs, :class:`Housekeeper` retries runs whose outputs could not be written (disk full)
with the outbox's back-off, picks up runs that ``taviseg requeue`` put back, and deletes spool
files of failed runs and kept objects past their retention (``limits.keep_failed_days``,
``keep_other_days``). :class:`EscapingFilter`, installed on the process's log handlers, escapes
control characters in every record, so no received value can forge a log line.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from types import FrameType

import pydicom.config

from dicom_node.config import NodeConfig
from dicom_node.errors import NodeConfigError, NodeError
from dicom_node.isolation import IsolatedProcessor
from dicom_node.journal import Journal
from dicom_node.metrics import MetricsServer, NodeMetrics
from dicom_node.outbox import Outbox
from dicom_node.pipeline import RunProcessor
from dicom_node.process_settings import READING_VALIDATION
from dicom_node.queue.worker import WorkerPool
from dicom_node.scp import StorageSCP
from dicom_node.sender import (
    DeliveryLoop,
    DicomDestination,
    FolderDestination,
    retry_delay,
)
from dicom_node.sop import is_valid_uid
from dicom_node.spool import Spool, StoredInstance
from dicom_node.status import escape_control
from dicom_node.threads import WakeableThread
from dicom_node.tls import server_context

logger = logging.getLogger(__name__)

#: Node restarts that found a run processing, after which the run is failed (not re-queued).
#: A run processed in the node's own process may itself be what killed the node: it gets
#: ``MAX_INTERRUPTIONS_IN_PROCESS``. In the isolated child (the default) a run cannot take the node
#: down (a decoder crash fails the run, see :mod:`dicom_node.isolation`), so a restart comes from
#: outside (an operator, systemd, a power cut) and only a backstop applies: an acknowledged run must
#: not be failed because the node was restarted three times while it was being segmented.
MAX_INTERRUPTIONS_IN_PROCESS = 3
MAX_INTERRUPTIONS_ISOLATED = 10
#: How often the housekeeper looks for requeued runs, and for expired spool files.
PICKUP_S = 2.0
RETENTION_SWEEP_S = 3600.0

_QUOTED_VALUE = re.compile(r"(value\s+)'.*'", re.DOTALL)
_UID_FIELD = re.compile(r"(UID[^:\n]*:\s*)(.+)$", re.DOTALL)  # "Affected SOP Instance UID : <value>" (debug dumps)


def _withhold_invalid_uid(match: re.Match) -> str:
    value = match.group(2).strip()
    return match.group(0) if is_valid_uid(value) or value.startswith("=") else match.group(1) + "<withheld>"


class EscapingFilter(logging.Filter):
    """A handler filter: each record becomes ONE line, whatever its values contain.

    The message (with its arguments) has its control characters escaped; a traceback keeps its
    lines but each continuation line is indented with ``  | `` so it cannot pass for a record.
    pynetdicom's records have the received values they quote (``value '...'``) withheld.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_escaped", False):
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string: show it as it is
            message = f"{record.msg!r} % {record.args!r}"
        if record.name.startswith("pynetdicom"):  # it quotes received values: withhold all but valid UIDs
            message = _QUOTED_VALUE.sub(r"\1<withheld>", message)
            message = _UID_FIELD.sub(_withhold_invalid_uid, message)
        record.msg, record.args = escape_control(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = "\n".join("  | " + escape_control(line) for line in record.exc_text.splitlines())
        if record.stack_info:
            record.stack_info = "\n".join("  | " + escape_control(line) for line in record.stack_info.splitlines())
        record._escaped = True
        return True


def install_log_escaping(handlers: list[logging.Handler] | None = None) -> list[logging.Handler]:
    """Add the :class:`EscapingFilter` to ``handlers`` (default: the root logger's); returns
    them, for :func:`remove_log_escaping` (counted: several nodes in one process may share a
    handler, the filter stays until the last one removes it)."""
    chosen = list(handlers if handlers is not None else logging.getLogger().handlers)
    with _ESCAPING_LOCK:
        for handler in chosen:
            if _ESCAPING_USERS.get(handler, 0) == 0:
                handler.addFilter(_ESCAPING)
            _ESCAPING_USERS[handler] = _ESCAPING_USERS.get(handler, 0) + 1
    return chosen


def remove_log_escaping(handlers: list[logging.Handler]) -> None:
    """Undo :func:`install_log_escaping`."""
    with _ESCAPING_LOCK:
        for handler in handlers:
            left = _ESCAPING_USERS.get(handler, 0) - 1
            if left <= 0:
                _ESCAPING_USERS.pop(handler, None)
                handler.removeFilter(_ESCAPING)
            else:
                _ESCAPING_USERS[handler] = left


_ESCAPING = EscapingFilter()
_ESCAPING_USERS: dict[logging.Handler, int] = {}
_ESCAPING_LOCK = threading.Lock()


class Housekeeper(WakeableThread):
    """Background thread: deferred retries, requeued runs, spool retention.

    Args:
        journal, spool: The node's stores.
        submit: Queues an instance id for the workers.
        cfg: The node configuration (delivery back-off, retention days).
    """

    def __init__(self, journal: Journal, spool: Spool, submit, cfg: NodeConfig) -> None:
        self.journal = journal
        self.spool = spool
        self.submit = submit
        self.cfg = cfg
        self._lock = threading.Lock()
        self._due: list[tuple[float, int]] = []  # (due time, instance id)
        self._tries: dict[int, int] = {}
        self._last_sweep = 0.0
        self._picked_up: set[int] = set()
        super().__init__("housekeeper")

    def defer(self, instance_id: int) -> float:
        """Retry ``instance_id`` after the outbox back-off for its number of tries; the delay."""
        with self._lock:
            tries = self._tries[instance_id] = self._tries.get(instance_id, 0) + 1
            delay = retry_delay(tries, self.cfg.delivery)
            heapq.heappush(self._due, (time.monotonic() + delay, instance_id))
        self._wake.set()
        logger.warning("instance #%d: outputs retried in %.1f s (try %d)", instance_id, delay, tries + 1)
        return delay

    def waiting(self) -> int:
        """Runs waiting for their retry."""
        with self._lock:
            return len({i for _, i in self._due})

    def _run(self) -> None:
        next_pickup = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            due: list[int] = []
            with self._lock:
                while self._due and self._due[0][0] <= now:
                    due.append(heapq.heappop(self._due)[1])
                scheduled = {i for _, i in self._due}
                wait = min(self._due[0][0] - now, PICKUP_S) if self._due else PICKUP_S
            for instance_id in due:
                self.submit(instance_id)
            try:
                if now >= next_pickup:
                    next_pickup = now + PICKUP_S
                    requeued = set(self.journal.requeued_ids())  # by `taviseg requeue`, not yet claimed
                    for instance_id in sorted(requeued - self._picked_up - scheduled):
                        self.submit(instance_id)
                    self._picked_up = requeued
                if time.time() - self._last_sweep >= RETENTION_SWEEP_S:
                    self._last_sweep = time.time()
                    self.sweep()
            except NodeError as exc:
                logger.error("housekeeping: %s", exc)
            except Exception:  # keep the node running
                logger.exception("housekeeping: unexpected error")
            self._wake.wait(max(wait, 0.05))
            self._wake.clear()

    def sweep(self) -> int:
        """Delete spool files of failed runs and kept objects past their retention; how many."""
        limits, removed = self.cfg.limits, 0
        for state, days in (("failed", limits.keep_failed_days), ("kept", limits.keep_other_days)):
            if days <= 0:
                continue
            for instance_id, name in self.journal.expired_spool_files(state, time.time() - days * 86400):
                self.spool.discard([name])
                self.journal.forget_spool_file(instance_id)
                removed += 1
        if removed:
            logger.info("retention: %d spool file(s) of failed runs or kept objects deleted", removed)
        return removed


class Node:
    """One DICOM node process.

    Args:
        cfg: The validated configuration.
        processors: Processors to use (one per worker); default: built from ``cfg.processing``.
    """

    def __init__(self, cfg: NodeConfig, processors: list[RunProcessor] | None = None) -> None:
        self.cfg = cfg
        self.metrics = NodeMetrics()
        self.journal: Journal | None = None
        self._processors = processors
        self._stopped = threading.Event()
        self.scp: StorageSCP | None = None
        self.workers: WorkerPool | None = None
        self.delivery: DeliveryLoop | None = None
        self.metrics_server: MetricsServer | None = None
        self.housekeeper: Housekeeper | None = None
        self._isolated: list[IsolatedProcessor] = []
        self._log_handlers: list[logging.Handler] = []
        self._spool: Spool | None = None

    def start(self) -> None:
        """Recover state, start every component and accept associations.

        Raises:
            NodeConfigError: model, TLS or destination settings cannot be used.
            StorageError / JournalError: the state folder is unusable.
            OSError: a port cannot be bound.
        """
        cfg = self.cfg
        # pydicom's reading validation warns with the offending value (a name, a birth date):
        # never let received values reach the logs (restored by stop()).
        READING_VALIDATION.acquire(id(self), pydicom.config.IGNORE)
        self._log_handlers = install_log_escaping()
        ssl_ctx = server_context(cfg.tls) if cfg.tls.enabled else None
        self.journal = journal = Journal(cfg.journal_path)
        spool = Spool(cfg.spool_dir, journal, cfg.limits, keep_other=cfg.other_objects == "keep")
        spool.prepare(keep_processed=cfg.processing.keep_processed)
        self._spool = spool
        if cfg.destinations:
            destinations = [DicomDestination(d, cfg.ae_title) for d in cfg.destinations]
        else:
            destinations = [FolderDestination(cfg.results_dir)]
            logger.info("no destination configured: outputs go to %s", cfg.results_dir)
        outbox = Outbox(cfg.outbox_dir, journal, [d.name for d in destinations],
                        keep_delivered=cfg.delivery.keep_delivered)
        outbox.prepare()
        isolated = not self._processors
        requeued, failed = journal.recover_interrupted(
            MAX_INTERRUPTIONS_ISOLATED if isolated else MAX_INTERRUPTIONS_IN_PROCESS
        )
        if requeued or failed:
            logger.warning("recovered %d interrupted run(s); %d failed after repeated interruptions",
                           len(requeued), len(failed))
        if not isolated:
            processors = self._processors
        else:  # each worker's processor in its own process: a decoder crash fails a run, not the node
            for _ in range(cfg.processing.workers):
                self._isolated.append(
                    IsolatedProcessor(cfg.processing, onnx_cache_dir=cfg.state_dir / "onnx-cache")
                )
            processors = list(self._isolated)
        logger.info("processor %s version %s, %d worker(s)", processors[0].name, processors[0].version, len(processors))

        self.delivery = DeliveryLoop(journal, outbox, destinations, cfg.delivery, self.metrics)
        self.housekeeper = Housekeeper(journal, spool, lambda i: self.workers.submit(i) if self.workers else None, cfg)
        self.workers = WorkerPool(
            journal, spool, outbox, processors, self.metrics,
            keep_processed=cfg.processing.keep_processed, on_outputs=self.delivery.wake,
            on_deferred=self.housekeeper.defer,
        )
        self._register_gauges(journal)
        self.delivery.start()
        self.workers.start()
        pending = journal.received_ids()
        for instance_id in pending:
            self.workers.submit(instance_id)
        if pending:
            logger.info("%d received run(s) queued from the journal", len(pending))
        self.housekeeper.start()
        if cfg.metrics.enabled:
            self.metrics_server = MetricsServer(self.metrics.registry, (cfg.metrics.bind_address, cfg.metrics.port),
                                                health=self.problems)
            self.metrics_server.start()
        self.scp = StorageSCP(cfg, spool, self._on_stored, self.metrics, ssl_context=ssl_ctx)
        self.scp.start()
        self._write_ready_file()

    def _on_stored(self, stored: StoredInstance) -> None:
        if self.workers is not None:
            self.workers.submit(stored.id)

    def problems(self) -> list[str]:
        """What keeps the node from serving normally now (empty: healthy): ``/healthz``."""
        found, limits = [], self.cfg.limits
        if self.scp is not None and self.scp.slots_in_use() >= limits.max_associations:
            found.append(f"every association slot in use ({limits.max_associations})")
        if self._spool is not None:
            try:
                free = shutil.disk_usage(self._spool.instances_dir).free
            except OSError as exc:
                found.append(f"spool disk unreadable: {exc.strerror or exc}")
            else:
                if free < limits.min_free_bytes:
                    found.append(f"spool disk free space {free} bytes below "
                                 f"limits.min_free_bytes={limits.min_free_bytes}")
        waiting = len(self.journal.deferred(limit=10000)) if self.journal is not None else 0
        if waiting:
            found.append(f"{waiting} run(s) waiting for disk space to write their outputs")
        return found

    def _register_gauges(self, journal: Journal) -> None:
        reg = self.metrics
        reg.gauge("association_slots_used", "accepted associations now (connections still negotiating excluded)",
                  lambda: {(): float(self.scp.slots_in_use() if self.scp else 0)})
        reg.gauge("pending_connections", "connections whose association is not accepted yet",
                  lambda: {(): float(self.scp.guard.pending() if self.scp and self.scp.guard else 0)})
        reg.gauge("deferred_runs", "runs waiting for disk space to write their outputs",
                  lambda: {(): float(len(journal.deferred(limit=10000)))})
        reg.gauge("instances", "journaled instances by state",
                  lambda: {(k,): float(v) for k, v in journal.instance_counts().items()}, ("state",))
        reg.gauge("outbox", "outbox objects by destination and state",
                  lambda: {(d, s): float(n) for d, c in journal.outbox_counts().items() for s, n in c.items()},
                  ("destination", "state"))
        reg.gauge("busy_workers", "runs being processed now",
                  lambda: {(): float(self.workers.busy() if self.workers else 0)})

    def _write_ready_file(self) -> None:
        path = self.cfg.ready_file
        if path is None:
            return
        info = {
            "pid": os.getpid(),
            "ae_title": self.cfg.ae_title,
            "dicom_port": self.scp.port if self.scp else self.cfg.port,
            "metrics_port": self.metrics_server.port if self.metrics_server else None,
            "started_at": time.time(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, path)

    def stop(self) -> None:
        """Graceful shutdown within ``shutdown_timeout_s`` (idempotent)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        deadline = time.monotonic() + self.cfg.shutdown_timeout_s

        def left() -> float:
            return max(deadline - time.monotonic(), 0.1)

        logger.info("shutting down")
        if self.cfg.ready_file is not None:
            self.cfg.ready_file.unlink(missing_ok=True)
        if self.scp is not None:
            self.scp.stop(min(left(), 10.0))
        if self.housekeeper is not None:
            self.housekeeper.stop(min(left(), 5.0))
        if self.workers is not None:
            self.workers.stop(left())
        for processor in self._isolated:
            processor.close(min(left(), 10.0))
        if self.delivery is not None:
            self.delivery.stop(left())
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.journal is not None:
            self.journal.close()
        READING_VALIDATION.release(id(self))
        logger.info("stopped")
        remove_log_escaping(self._log_handlers)
        self._log_handlers = []


def serve(cfg: NodeConfig, *, stop_event: threading.Event | None = None) -> int:
    """Run the node until SIGTERM/SIGINT (or ``stop_event``); returns the exit code (0).

    Raises:
        NodeConfigError and other NodeError: start-up failed (nothing is left running).
    """
    stop = stop_event or threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %s received", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    node = Node(cfg)
    try:
        node.start()
    except OSError as exc:
        node.stop()
        raise NodeConfigError(
            f"node start-up failed (DICOM {cfg.bind_address}:{cfg.port}, metrics port "
            f"{cfg.metrics.port}, state {cfg.state_dir}): {exc}"
        ) from exc
    except BaseException:
        node.stop()
        raise
    try:
        while not stop.wait(1.0):
            pass
    finally:
        node.stop()
    return 0

