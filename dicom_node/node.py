"""The running node: journal + spool + workers + outbox + delivery + SCP + metrics.

Start-up order makes a restart after a crash safe: open the journal, clean the spool and the
outbox, put interrupted runs back in the queue, load the processors, each in a processing
process of its own (fail fast on a bad model; see :mod:`dicom_node.isolation`),
start delivery and workers, then accept associations and write the ready file. Shutdown
(SIGTERM/SIGINT) runs in reverse within ``shutdown_timeout_s``: stop accepting, let workers
finish the run in hand, stop delivery; unfinished work stays in the journal for the next start.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from types import FrameType

import pydicom.config

from dicom_node.config import NodeConfig
from dicom_node.errors import NodeConfigError
from dicom_node.isolation import IsolatedProcessor
from dicom_node.journal import Journal
from dicom_node.metrics import MetricsServer, NodeMetrics
from dicom_node.outbox import Outbox
from dicom_node.process_settings import READING_VALIDATION
from dicom_node.pipeline import RunProcessor
from dicom_node.queue.worker import WorkerPool
from dicom_node.scp import StorageSCP
from dicom_node.sender import DeliveryLoop, DicomDestination, FolderDestination
from dicom_node.spool import Spool, StoredInstance
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
        self._isolated: list[IsolatedProcessor] = []

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
        ssl_ctx = server_context(cfg.tls) if cfg.tls.enabled else None
        self.journal = journal = Journal(cfg.journal_path)
        spool = Spool(cfg.spool_dir, journal, cfg.limits, keep_other=cfg.other_objects == "keep")
        spool.prepare(keep_processed=cfg.processing.keep_processed)
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
        self.workers = WorkerPool(
            journal, spool, outbox, processors, self.metrics,
            keep_processed=cfg.processing.keep_processed, on_outputs=self.delivery.wake,
        )
        self._register_gauges(journal)
        self.delivery.start()
        self.workers.start()
        pending = journal.received_ids()
        for instance_id in pending:
            self.workers.submit(instance_id)
        if pending:
            logger.info("%d received run(s) queued from the journal", len(pending))
        if cfg.metrics.enabled:
            self.metrics_server = MetricsServer(self.metrics.registry, (cfg.metrics.bind_address, cfg.metrics.port))
            self.metrics_server.start()
        self.scp = StorageSCP(cfg, spool, self._on_stored, self.metrics, ssl_context=ssl_ctx)
        self.scp.start()
        self._write_ready_file()

    def _on_stored(self, stored: StoredInstance) -> None:
        if self.workers is not None:
            self.workers.submit(stored.id)

    def _register_gauges(self, journal: Journal) -> None:
        reg = self.metrics
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

