"""The node's Application Entity: association policy, C-ECHO, and the C-STORE handler.

The C-STORE handler only makes the received data set durable (see :mod:`dicom_node.spool`) and
answers; decoding and inference happen in the workers. Data sets are received straight to disk
(pynetdicom's ``STORE_RECV_CHUNKED_DATASET``) into the spool's ``incoming/`` folder, then renamed
into the spool: never decoded and re-encoded. An unlimited maximum PDU is advertised by default
(``limits.max_pdu_size: 0``), PDUs are read with one copy out of the kernel and their data
reach the file with no copy in Python (:mod:`dicom_node.pdu_reader`), the supported contexts
pynetdicom copies for every association share their UIDs (:class:`~dicom_node.sop.SharedUidContext`),
and the disk writes a data set while it arrives (:class:`EarlyWriteback`), so the fsync before
Success only waits for the last megabytes: that is what brings receiving to dcmtk's storescp's
speed (storescp does not fsync at all; ``bench/receive.py`` measures both).

This module is the only place where the node's domain errors become DICOM statuses.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.config import NodeConfig
from dicom_node.errors import InstanceRejected, StorageError
from dicom_node.metrics import NodeMetrics
from dicom_node.pdu_reader import FastPduReader
from dicom_node.process_settings import RECEIVE_TO_DISK, TEMP_FOLDER
from dicom_node.sop import (
    TRANSFER_SYNTAXES,
    VERIFICATION_SOP_CLASS,
    SharedUidContext,
    StoreStatus,
    accepted_sop_classes,
)
from dicom_node.spool import Spool, StoredInstance

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, diagnostic): rejected-permanent, service-user, calling AE not recognised.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)


class EarlyWriteback:
    """Starts writing data sets being received to disk while they arrive.

    The C-STORE handler fsyncs each received file before answering Success (see
    :mod:`dicom_node.spool`). Left alone, the kernel writes a 100 MB run back only at that
    fsync, and the sender waits for all of it (about 0.2 s at 500 MB/s). Here a background
    thread, woken every ``step_bytes`` received (``EVT_DATA_RECV``), calls ``fdatasync`` on
    the files in ``incoming/`` that grew by ``step_bytes`` since their last one, so the disk
    writes while the network delivers and the handler's fsync only waits for the tail.
    Durability is unchanged: this only starts the writes earlier, Success still follows the
    handler's own fsync, and an error here is only logged (the handler's fsync reports it).

    Args:
        folder: The spool's ``incoming/`` folder (where pynetdicom writes received data sets).
        step_bytes: Received bytes between two write-back passes.
    """

    def __init__(self, folder: Path, step_bytes: int = 8 << 20) -> None:
        self.folder = Path(folder)
        self.step_bytes = int(step_bytes)
        self._received = 0  # bytes since the last wake-up (updated without a lock: approximate)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._synced: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="early-writeback", daemon=True)

    def start(self) -> None:
        """Start the write-back thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (a pass in progress finishes first, bounded by ``timeout``)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def on_data(self, event: Event) -> None:
        """``EVT_DATA_RECV`` handler (with pynetdicom's own PDU reader): :meth:`count` the PDU."""
        self.count(len(event.data))

    def count(self, nbytes: int) -> None:
        """``nbytes`` received (DUL threads): wake the thread every ``step_bytes``."""
        self._received += nbytes
        if self._received >= self.step_bytes:
            self._received = 0
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            self.write_back()

    def write_back(self) -> int:
        """One pass: fdatasync every incoming file that grew by ``step_bytes``; how many."""
        synced, seen = 0, set()
        sync = getattr(os, "fdatasync", os.fsync)
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            logger.debug("early write-back: cannot list %s: %s", self.folder, exc)
            return 0
        for entry in entries:
            seen.add(entry.name)
            try:
                size = entry.stat().st_size
                if size - self._synced.get(entry.name, 0) < self.step_bytes:
                    continue
                fd = os.open(entry.path, os.O_RDONLY)
                try:
                    sync(fd)
                finally:
                    os.close(fd)
            except FileNotFoundError:  # accepted (renamed into the spool) or removed meanwhile
                continue
            except OSError as exc:
                logger.debug("early write-back of %s failed: %s", entry.name, exc)
                continue
            self._synced[entry.name] = size
            synced += 1
        for name in set(self._synced) - seen:
            del self._synced[name]
        return synced


def status_dataset(status: int, comment: str = "") -> Dataset:
    """A C-STORE response status with an Error Comment (LO: at most 64 characters)."""
    ds = Dataset()
    ds.Status = int(status)
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


class StorageSCP:
    """The listening AE (Verification + Storage), started in background threads.

    Args:
        cfg: Node configuration (AE title, address, callers, limits, TLS).
        spool: Where received instances are made durable.
        on_stored: Called with each instance answered Success (submits images to the workers).
        metrics: Counters and histograms to update.
        ssl_context: Server TLS context (None: plain TCP).
    """

    def __init__(
        self,
        cfg: NodeConfig,
        spool: Spool,
        on_stored: Callable[[StoredInstance], None],
        metrics: NodeMetrics,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.cfg = cfg
        self.spool = spool
        self.on_stored = on_stored
        self.metrics = metrics
        self.ssl_context = ssl_context
        self._allowed: dict[str, tuple[str, ...]] = {}
        for caller in cfg.allowed_callers:
            self._allowed[caller.ae_title.strip()] = self._allowed.get(caller.ae_title.strip(), ()) + (
                caller.hosts if caller.hosts else ("*",)
            )
        self.ae = self._build_ae()
        self._server: ThreadedAssociationServer | None = None
        self._receiving = False
        self._writeback: EarlyWriteback | None = None

    def _build_ae(self) -> AE:
        cfg, limits = self.cfg, self.cfg.limits
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_pdu_size = limits.max_pdu_size
        ae.maximum_associations = limits.max_associations
        ae.network_timeout = limits.network_timeout_s
        ae.acse_timeout = limits.acse_timeout_s
        ae.dimse_timeout = limits.dimse_timeout_s
        ae.require_called_aet = cfg.require_called_ae_title
        if not cfg.allow_any_caller:
            ae.require_calling_aet = sorted(self._allowed)
        ae.add_supported_context(VERIFICATION_SOP_CLASS)
        for uid in accepted_sop_classes(cfg.other_objects):
            ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
        return ae

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._server is None:
            return self.cfg.port
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Listen on ``bind_address:port`` in a background thread.

        Receiving straight to disk is switched on process-wide, and temp files are created in
        the spool's ``incoming/`` folder (same file system: the rename into the spool is atomic).

        Raises:
            OSError: the address cannot be bound.
        """
        RECEIVE_TO_DISK.acquire(id(self), True)
        TEMP_FOLDER.acquire(id(self), str(self.spool.incoming_dir))
        self._receiving = True
        self._writeback = EarlyWriteback(self.spool.incoming_dir)
        self._writeback.start()
        reader = FastPduReader(self.cfg.limits.fast_pdu_reader, on_bytes=self._writeback.count)
        handlers = [
            (evt.EVT_CONN_OPEN, reader.on_conn_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        if not reader.active:  # the node's reader counts the bytes itself, without EVT_DATA_RECV
            handlers.append((evt.EVT_DATA_RECV, self._writeback.on_data))
        try:
            self._server = self.ae.start_server(
                (self.cfg.bind_address, self.cfg.port),
                block=False,
                evt_handlers=handlers,
                ssl_context=self.ssl_context,
                contexts=[SharedUidContext.of(cx) for cx in self.ae.supported_contexts],
            )
        except BaseException:
            self._release_settings()
            self._writeback.stop()
            self._writeback = None
            raise
        logger.info(
            "AE %s listening on %s:%d%s (%d storage SOP classes, other objects: %s)",
            self.cfg.ae_title, self.cfg.bind_address, self.port,
            " with TLS" if self.ssl_context else "",
            len(accepted_sop_classes(self.cfg.other_objects)), self.cfg.other_objects,
        )

    def stop(self, timeout: float) -> None:
        """Stop listening; let running associations end (bounded by ``timeout``), then abort them."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server = None
        deadline = time.monotonic() + timeout
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in self.ae.active_associations:
            logger.warning("aborting association with %s at shutdown", assoc.requestor.ae_title)
            assoc.abort()
        self._release_settings()
        if self._writeback is not None:
            self._writeback.stop()
            self._writeback = None

    def _release_settings(self) -> None:
        if self._receiving:
            TEMP_FOLDER.release(id(self))
            RECEIVE_TO_DISK.release(id(self))
            self._receiving = False

    # ---- handlers ---------------------------------------------------------------------------

    def caller_allowed(self, ae_title: str, address: str) -> bool:
        """True when the calling AE title (and host, where configured) may associate."""
        if self.cfg.allow_any_caller:
            return True
        hosts = self._allowed.get(ae_title.strip())
        return hosts is not None and ("*" in hosts or address in hosts)

    def _on_requested(self, event: Event) -> None:
        requestor = event.assoc.requestor
        # requestor.ae_title is only set during negotiation, after this event: read the request.
        calling, address = str(requestor.primitive.calling_ae_title), str(requestor.address)
        if not self.caller_allowed(calling, address):
            logger.warning("association from %s (calling AE %r) rejected: caller not allowed", address, calling)
            self.metrics.associations.labels(result="rejected").inc()
            event.assoc.acse.send_reject(*REJECT_CALLING_AE)
            event.assoc.kill()  # waits until the DUL has sent the A-ASSOCIATE-RJ (as pynetdicom's own checks do)

    def _on_accepted(self, event: Event) -> None:
        self.metrics.associations.labels(result="accepted").inc()
        logger.debug("association from %s accepted", event.assoc.requestor.ae_title)

    def _on_echo(self, event: Event) -> int:
        return StoreStatus.SUCCESS

    def _on_store(self, event: Event) -> Dataset | int:
        t0 = time.monotonic()
        req = event.request
        sop_class = str(req.AffectedSOPClassUID or "")
        sop_instance = str(req.AffectedSOPInstanceUID or "")
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            path = self._received_file(event)
            stored = self.spool.accept(
                path,
                calling_aet=calling,
                sop_class_uid=sop_class,
                sop_instance_uid=sop_instance,
                transfer_syntax_uid=str(event.context.transfer_syntax),
            )
        except InstanceRejected as exc:
            logger.warning("C-STORE of %s from %s refused (0x%04X): %s", sop_instance, calling, exc.status, exc)
            self.metrics.refused.labels(status=f"0x{exc.status:04X}").inc()
            return status_dataset(exc.status, str(exc))
        except StorageError as exc:
            logger.error("C-STORE of %s from %s: out of resources: %s", sop_instance, calling, exc)
            self.metrics.refused.labels(status="0xA700").inc()
            return status_dataset(StoreStatus.OUT_OF_RESOURCES, str(exc))
        except Exception as exc:  # a bug must never answer Success nor kill the association
            logger.exception("C-STORE of %s from %s: unexpected error", sop_instance, calling)
            self.metrics.refused.labels(status="0x0110").inc()
            return status_dataset(StoreStatus.PROCESSING_FAILURE, f"internal error: {type(exc).__name__}")
        self.metrics.received.labels(kind=stored.kind).inc()
        self.metrics.received_bytes.inc(stored.size_bytes)
        self.metrics.store_seconds.observe(time.monotonic() - t0)
        if stored.kind == "image":
            self.on_stored(stored)
        return StoreStatus.SUCCESS

    def _received_file(self, event: Event) -> Path:
        """The file pynetdicom received the data set into (written here if it kept it in memory)."""
        try:
            received = event.dataset_path
        except AttributeError:  # chunked receive switched off: the data set is in memory
            received = None
        if received is not None:
            return Path(received)
        try:
            data = event.encoded_dataset(include_meta=True)
        except (AttributeError, ValueError) as exc:
            raise InstanceRejected(f"no data set in the request: {exc}", StoreStatus.CANNOT_UNDERSTAND) from exc
        with tempfile.NamedTemporaryFile(dir=self.spool.incoming_dir, suffix=".dcm", delete=False) as f:
            f.write(data)
        return Path(f.name)

