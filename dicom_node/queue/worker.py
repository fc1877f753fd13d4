"""The worker pool: claims received instances, runs the processor, commits outputs.

Each run is processed as soon as it is journaled (the SCP submits its id; no "series stable"
wait). A worker claims the row (``received -> processing``: only one worker wins), processes it
outside any lock, writes the outputs into the outbox and commits them together with the
instance's final state. On shutdown, workers finish the run in hand (bounded by the grace
period); anything unfinished stays ``received``/``processing`` and is processed at the next start.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from dicom_node.errors import (
    JournalError,
    NodeError,
    NotSegmentable,
    ProcessingError,
    StorageError,
)
from dicom_node.isolation import ProcessingInterrupted
from dicom_node.journal import DEFERRED_PREFIX, InstanceRow, Journal
from dicom_node.metrics import NodeMetrics
from dicom_node.outbox import Outbox, OutputWriteDeferred
from dicom_node.pipeline import RunProcessor
from dicom_node.spool import Spool, StoredInstance
from tavicore.errors import TavisegError

logger = logging.getLogger(__name__)

_POLL_S = 0.5
_STOP = -1  # queue sentinel: wake a worker so that it sees the stop flag at once


def stored_instance(row: InstanceRow, spool: Spool) -> StoredInstance:
    """The processor's view of a journal row."""
    return StoredInstance(
        id=row.id,
        path=spool.path_of(row.file),
        kind=row.kind,
        sop_instance_uid=row.sop_instance_uid,
        sop_class_uid=row.sop_class_uid,
        study_instance_uid=row.study_instance_uid,
        frames=row.frames,
        size_bytes=row.size_bytes,
    )


class WorkerPool:
    """Threads processing received instances, one processor per thread.

    Args:
        journal, spool, outbox: The node's stores.
        processors: One processor per worker thread (models are not shared between threads).
        metrics: Counters and histograms to update.
        keep_processed: Keep spool files of processed instances.
        on_outputs: Called after outputs are committed (wakes the delivery loop).
    """

    def __init__(
        self,
        journal: Journal,
        spool: Spool,
        outbox: Outbox,
        processors: Sequence[RunProcessor],
        metrics: NodeMetrics,
        *,
        keep_processed: bool = False,
        on_outputs: Callable[[], None] = lambda: None,
        on_deferred: Callable[[int], None] = lambda instance_id: None,
    ) -> None:
        if not processors:
            raise NodeError("worker pool: at least one processor is needed")
        self.journal = journal
        self.spool = spool
        self.outbox = outbox
        self.metrics = metrics
        self.keep_processed = keep_processed
        self.on_outputs = on_outputs
        self.on_deferred = on_deferred  # a run whose outputs could not be written: retry it later
        self._queue: queue.Queue[int] = queue.Queue()
        self._stop = threading.Event()
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(p,), name=f"worker-{i}", daemon=True)
            for i, p in enumerate(processors)
        ]

    def start(self) -> None:
        """Start the worker threads."""
        for t in self._threads:
            t.start()

    def submit(self, instance_id: int) -> None:
        """Queue a journaled ``received`` instance for processing."""
        self._queue.put(instance_id)

    def depth(self) -> int:
        """Instances queued in memory and not yet picked up."""
        return self._queue.qsize()

    def busy(self) -> int:
        """Instances being processed right now."""
        with self._busy_lock:
            return self._busy

    def stop(self, timeout: float) -> None:
        """Stop taking work; wait up to ``timeout`` s for runs in hand to finish."""
        self._stop.set()
        for _ in self._threads:
            self._queue.put(_STOP)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0.0))
        alive = sum(t.is_alive() for t in self._threads)
        if alive:
            logger.warning(
                "%d worker(s) still busy after %.0f s; their runs are re-processed at the next start",
                alive, timeout,
            )

    def _run(self, processor: RunProcessor) -> None:
        while not self._stop.is_set():
            try:
                instance_id = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if instance_id == _STOP:
                break
            with self._busy_lock:
                self._busy += 1
            try:
                self.process_one(instance_id, processor)
            except JournalError as exc:
                logger.error("instance #%d: journal unavailable, left for the next start: %s", instance_id, exc)
            except Exception:  # keep the worker alive; the instance is re-processed at the next start
                logger.exception("instance #%d: unexpected error in the worker", instance_id)
            finally:
                with self._busy_lock:
                    self._busy -= 1

    def process_one(self, instance_id: int, processor: RunProcessor) -> str | None:
        """Claim, process and commit one instance.

        Returns:
            The final state (``done``, ``skipped``, ``failed``), ``deferred`` when its outputs
            could not be written (back to ``received``, retried through ``on_deferred``), or
            None when another worker had claimed it or it was superseded.

        Raises:
            JournalError: the journal could not be updated (the instance stays unfinished).
        """
        row = self.journal.claim(instance_id)
        if row is None:
            return None
        instance = stored_instance(row, self.spool)
        self.metrics.queue_seconds.observe(time.time() - row.received_at)
        t0 = time.monotonic()
        state, detail, rows, files, kinds = "done", "", [], [], []
        qc_frames: dict[str, int] = {}
        try:
            outputs = processor.process(instance)
            qc_frames = next((o.qc_frames for o in outputs if o.qc_frames), {})
            rows = self.outbox.write(outputs)
            files = sorted({r.file for r in rows})
            kinds = [o.kind for o in outputs]
            detail = f"{len(outputs)} output(s): {', '.join(kinds)}"
        except ProcessingInterrupted:
            logger.warning("instance #%d: processing interrupted by the shutdown; processed again at the next start",
                           row.id)
            return None
        except OutputWriteDeferred as exc:
            self.journal.defer(row.id, f"{DEFERRED_PREFIX}: {exc}")
            logger.warning("instance #%d %s: outputs not written, retried later: %s", row.id, row.sop_instance_uid, exc)
            self.on_deferred(row.id)
            return "deferred"
        except NotSegmentable as exc:
            state, detail, qc_frames = "skipped", str(exc), exc.qc_frames or {}
        except (ProcessingError, StorageError) as exc:
            state, detail = "failed", str(exc)
        except TavisegError as exc:
            state, detail = "failed", f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug in a processor must not kill the worker: record it
            logger.exception("instance #%d (%s): unexpected error while processing", row.id, row.sop_instance_uid)
            state, detail = "failed", f"unexpected {type(exc).__name__}: {exc}"
        try:
            stale = self.journal.finish(row.id, state, detail=detail, outputs=rows)
        except JournalError:
            self.outbox.discard(files)
            raise
        self.outbox.discard(stale)
        for kind in kinds:
            self.metrics.outputs.labels(kind=kind).inc()
        for key, count in qc_frames.items():
            if key.startswith("run:"):
                self.metrics.qc_runs.labels(verdict=key[4:]).inc(count)
            elif count:
                self.metrics.qc_frames.labels(outcome=key).inc(count)
        elapsed = time.monotonic() - t0
        self.metrics.processing_seconds.observe(elapsed)
        self.metrics.processed.labels(result=state).inc()
        log = logger.info if state != "failed" else logger.error
        log("instance #%d %s %s in %.2f s: %s", row.id, row.sop_instance_uid, state, elapsed, detail)
        if state in ("done", "skipped") and not self.keep_processed:
            self.spool.discard([row.file])
            self.journal.forget_spool_file(row.id)
        if rows:
            self.on_outputs()
        return state

