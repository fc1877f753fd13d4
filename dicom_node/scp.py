"""The node's Application Entity: association policy, C-ECHO, and the C-STORE handler.

The C-STORE handler only makes the received data set durable (see :mod:`dicom_node.spool`) and
answers; decoding and inference happen in the workers. Data sets are received straight to disk
(pynetdicom's ``STORE_RECV_CHUNKED_DATASET``) into the spool's ``incoming/`` folder, then renamed
into the spool: never decoded and re-encoded. An unlimited maximum PDU is advertised by default
(``limits.max_pdu_size: 0``), which is what makes receiving as fast as dcmtk's storescp.

This module is the only place where the node's domain errors become DICOM statuses.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydicom import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.config import NodeConfig
from dicom_node.errors import InstanceRejected, StorageError
from dicom_node.metrics import NodeMetrics
from dicom_node.sop import (
    TRANSFER_SYNTAXES,
    VERIFICATION_SOP_CLASS,
    StoreStatus,
    accepted_sop_classes,
)
from dicom_node.spool import Spool, StoredInstance

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, diagnostic): rejected-permanent, service-user, calling AE not recognised.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)


class _ReceiveToDisk:
    """Process-wide pynetdicom settings for receiving straight to disk, shared by every SCP.

    pynetdicom creates the chunked-receive temp file with ``NamedTemporaryFile()`` and no
    folder, so the folder can only be chosen through ``tempfile.tempdir``. SCPs that run at the
    same time in one process (tests) each register their ``incoming/`` folder; the most recently
    started one still running is in force, and the process's own settings come back when the last
    one stops, whatever the order of stops.
    """

    _lock = threading.Lock()
    _active: list[tuple[int, str]] = []
    _saved: tuple[bool, str | None] | None = None

    @classmethod
    def acquire(cls, owner: int, folder: Path) -> None:
        with cls._lock:
            if not cls._active:
                cls._saved = (_config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir)
            cls._active.append((owner, str(folder)))
            _config.STORE_RECV_CHUNKED_DATASET = True
            tempfile.tempdir = str(folder)

    @classmethod
    def release(cls, owner: int) -> None:
        with cls._lock:
            cls._active = [(o, f) for o, f in cls._active if o != owner]
            if cls._active:
                tempfile.tempdir = cls._active[-1][1]
            elif cls._saved is not None:
                _config.STORE_RECV_CHUNKED_DATASET, tempfile.tempdir = cls._saved
                cls._saved = None


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
        _ReceiveToDisk.acquire(id(self), self.spool.incoming_dir)
        self._receiving = True
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        try:
            self._server = self.ae.start_server(
                (self.cfg.bind_address, self.cfg.port),
                block=False,
                evt_handlers=handlers,
                ssl_context=self.ssl_context,
            )
        except BaseException:
            _ReceiveToDisk.release(id(self))
            self._receiving = False
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
        if self._receiving:
            _ReceiveToDisk.release(id(self))
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
            self.metrics.associations.inc(result="rejected")
            event.assoc.acse.send_reject(*REJECT_CALLING_AE)
            event.assoc.kill()  # waits until the DUL has sent the A-ASSOCIATE-RJ (as pynetdicom's own checks do)

    def _on_accepted(self, event: Event) -> None:
        self.metrics.associations.inc(result="accepted")
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
            self.metrics.refused.inc(status=f"0x{exc.status:04X}")
            return status_dataset(exc.status, str(exc))
        except StorageError as exc:
            logger.error("C-STORE of %s from %s: out of resources: %s", sop_instance, calling, exc)
            self.metrics.refused.inc(status="0xA700")
            return status_dataset(StoreStatus.OUT_OF_RESOURCES, str(exc))
        except Exception as exc:  # a bug must never answer Success nor kill the association
            logger.exception("C-STORE of %s from %s: unexpected error", sop_instance, calling)
            self.metrics.refused.inc(status="0x0110")
            return status_dataset(StoreStatus.PROCESSING_FAILURE, f"internal error: {type(exc).__name__}")
        self.metrics.received.inc(kind=stored.kind)
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

