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

Hostile peers (the node listens on a hospital network, before any authentication):

* :class:`NodeServer` replaces pynetdicom's server class for the node only (never patched
  globally): the accept thread only accepts; every accepted socket has a timeout from its first
  byte; the TLS handshake runs in the connection's own thread with its own deadline; at most
  ``limits.max_pending_per_host`` connections per host (``max_pending_connections`` in all)
  may wait for their association to be accepted: a new one closes the oldest, so idle or
  dripping connections cannot lock allowed peers out.
* :class:`ConnectionGuard` closes every connection whose A-ASSOCIATE-RQ has not arrived (and
  been accepted) ``limits.handshake_timeout_s`` after the TCP accept, whatever it drips.
* PDUs other than P-DATA-TF are capped (``limits.max_control_pdu_bytes``, see
  :mod:`dicom_node.pdu_reader`).
* Association slots count accepted associations only (not connections still negotiating);
  every calling AE may hold ``limits.caller_quota`` of them and takes more only while more than
  ``limits.reserved_associations`` stay free for the others.
* :class:`ReceiveLimiter` stops writing a data set as soon as it would cross
  ``limits.max_instance_bytes`` (0xA701) or the free-space floor (0xA700), or when the disk
  refuses a write (0xA700): the partial file is deleted at once, the rest of the message is
  read and dropped, and the C-STORE is answered with the status (never a dead reactor thread).
* Every refusal is counted in ``taviseg_node_rejections_total{reason}`` and logged; values of
  the data set never reach the logs except UIDs that passed validation (:func:`safe_uid`).
"""

from __future__ import annotations

import fcntl
import functools
import ipaddress
import logging
import os
import select
import shutil
import socket
import ssl
import struct
import tempfile
import termios
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.config import LimitsConfig, NodeConfig, resolve_host_entry
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
    is_valid_uid,
)
from dicom_node.spool import Spool, StoredInstance
from dicom_node.threads import WakeableThread

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, diagnostic): rejected-permanent, service-user, calling AE not recognised.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
#: Rejected-permanent, service-user, called AE title not recognised.
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
#: Rejected-transient, service-provider (presentation), local limit exceeded.
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)
#: How often the guard looks for connections past their handshake deadline.
GUARD_TICK_S = 0.25
#: Threads in the process above which new connections are refused at once (each connection
#: costs two threads until its association ends).
MAX_THREADS = 1000


def safe_uid(value: object) -> str:
    """``value`` when it is a valid UID, else a placeholder: what may be logged of a received UID."""
    text = str(value or "")
    return text if is_valid_uid(text) else f"<invalid UID, {len(text)} characters>"


def safe_ae(value: object) -> str:
    """An AE title for the logs: printable ASCII only (others escaped), at most 16 characters."""
    text = str(value or "").strip()[:16]
    return "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in text)


def _shutdown(sock: socket.socket) -> None:
    """Shut a socket down from another thread (its reader then sees the end) without touching
    the TLS layer's state (``socket.socket.shutdown`` on the file descriptor)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass


class ConnectionGuard:
    """Connections that have not been accepted as an association yet ("pending").

    Every accepted TCP connection is pending until :meth:`authenticated` (the node's association
    checks passed) or :meth:`closed`. A host holds at most ``per_host`` pending connections and
    all hosts ``total``: admitting one more closes the oldest pending connection (of that host,
    then of all), so a crowd of silent or dripping connections costs the crowd, never the next
    peer. A thread closes pending connections older than ``deadline_s``.

    Args:
        per_host, total: Pending connections per host and in all.
        deadline_s: Time from accept to acceptance of the association.
        on_evicted: Called with (reason, host) for each connection the guard closes
            (``pending-evicted``, ``handshake-timeout``).
    """

    def __init__(self, per_host: int, total: int, deadline_s: float,
                 on_evicted: Callable[[str, str], None] = lambda reason, host: None) -> None:
        self.per_host = int(per_host)
        self.total = int(total)
        self.deadline_s = float(deadline_s)
        self.on_evicted = on_evicted
        self._lock = threading.Lock()
        self._pending: OrderedDict[int, list] = OrderedDict()  # key -> [host, opened_at, sock]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="connection-guard", daemon=True)

    def start(self) -> None:
        """Start closing connections past their deadline."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the deadline thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def pending(self, host: str | None = None) -> int:
        """Pending connections (of ``host``, or all)."""
        with self._lock:
            return sum(1 for e in self._pending.values() if host is None or e[0] == host)

    def admit(self, key: int, host: str, sock: socket.socket) -> bool:
        """Register a new connection, closing the oldest stalled pending ones beyond the caps.

        A pending connection that is progressing (its request waits unread in the socket
        buffer, or it delivered a whole PDU or a TLS handshake: :meth:`progress`) is never
        closed for a newcomer; when every one is, the newcomer is refused (False).
        """
        victims: list[tuple[str, socket.socket]] = []
        with self._lock:
            for scope in (host, None):
                keys = [k for k, e in self._pending.items() if scope is None or e[0] == scope]
                cap = self.per_host if scope is not None else self.total
                excess = len(keys) - cap + 1
                if excess <= 0:
                    continue
                stalled = [k for k in keys if not self._pending[k][3] and not _has_unread(self._pending[k][2])]
                if len(stalled) < excess:
                    refused = True
                    break
                for k in stalled[:excess]:
                    entry = self._pending.pop(k)
                    victims.append((entry[0], entry[2]))
            else:
                refused = False
            if not refused:
                self._pending[key] = [host, time.monotonic(), sock, False]
        if refused:
            logger.warning("connection from %s refused: every connection waiting for an association is "
                           "progressing (limits.max_pending_per_host=%d, max_pending_connections=%d)",
                           host, self.per_host, self.total)
            self.on_evicted("pending-full", host)
        for victim_host, victim in victims:
            logger.warning("connection from %s closed: too many connections waiting for an association "
                           "(limits.max_pending_per_host=%d, max_pending_connections=%d)",
                           victim_host, self.per_host, self.total)
            self.on_evicted("pending-evicted", victim_host)
            _shutdown(victim)
        return not refused

    def progress(self, key: int) -> None:
        """The connection delivered a whole PDU (or a TLS handshake): not closed for newcomers."""
        with self._lock:
            if key in self._pending:
                self._pending[key][3] = True

    def replace_socket(self, key: int, sock: socket.socket) -> None:
        """The connection's socket is now ``sock`` (wrapped in TLS)."""
        with self._lock:
            if key in self._pending:
                self._pending[key][2] = sock

    def remaining(self, key: int) -> float:
        """Seconds left before the deadline of a pending connection (0 when not pending)."""
        with self._lock:
            entry = self._pending.get(key)
            return 0.0 if entry is None else max(entry[1] + self.deadline_s - time.monotonic(), 0.0)

    def authenticated(self, key: int, sock: socket.socket | None = None) -> None:
        """The connection's association was accepted (or it ended): no longer pending.

        Keys are file descriptors, which the OS hands to the next connection as soon as one is
        closed: with ``sock`` (the connection's socket, as admitted or replaced), only the entry
        of that very socket is removed, so a late call for a closed connection cannot take a
        newer connection on the same descriptor off the guard (it would then never be closed).
        """
        with self._lock:
            entry = self._pending.get(key)
            if entry is not None and (sock is None or entry[2] is sock):
                del self._pending[key]

    closed = authenticated

    def expire(self) -> int:
        """Close the pending connections past their deadline; how many."""
        now = time.monotonic()
        with self._lock:
            late = [k for k, e in self._pending.items() if now - e[1] > self.deadline_s]
            victims = [self._pending.pop(k) for k in late]
        for host, _, sock, _ in victims:
            logger.warning("connection from %s closed: no association request accepted within "
                           "limits.handshake_timeout_s=%g s", host, self.deadline_s)
            self.on_evicted("handshake-timeout", host)
            _shutdown(sock)
        return len(victims)

    def _run(self) -> None:
        while not self._stop.wait(GUARD_TICK_S):
            try:
                self.expire()
            except Exception:  # the guard must keep running
                logger.exception("connection guard: unexpected error")


#: First bytes of a TLS record carrying a handshake or application data (ClientHello, the request).
_TLS_RECORDS = (0x16, 0x17)


def _has_unread(sock: socket.socket) -> bool:
    """True when a whole PDU (or TLS record) waits unread in the connection's receive buffer:
    a peer that sent its request at once, before the node's thread read it. A dripping or
    silent peer never has one."""
    try:
        fd = sock.fileno()
        waiting = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        if waiting < 5:
            return False
        # a duplicate without a timeout: a peek that finds nothing fails at once (never waits)
        with socket.socket(fileno=os.dup(fd)) as dup:
            head = dup.recv(6, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (OSError, ValueError):
        return False
    if not head:
        return False
    if head[0] in _TLS_RECORDS and len(head) >= 5:
        return waiting >= 5 + int.from_bytes(head[3:5], "big")
    if 0x01 <= head[0] <= 0x07 and len(head) == 6:
        return waiting >= 6 + int.from_bytes(head[2:6], "big")
    return False


class NodeServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server with the node's connection policy.

    The accept thread only accepts (TLS is not negotiated there: pynetdicom's own server does
    the handshake in ``get_request``, so one silent TCP connection blocked every association);
    the handshake runs in the connection's thread with the time the guard leaves it. Set
    :attr:`guard`, :attr:`tls`, :attr:`network_timeout` and :attr:`on_rejected` before serving.
    """

    request_queue_size = 128
    guard: ConnectionGuard
    tls: ssl.SSLContext | None = None
    network_timeout: float | None = None
    on_rejected: Callable[[str, str], None] = staticmethod(lambda reason, host: None)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection; its socket gets a timeout at once (no TLS here)."""
        client, address = self.socket.accept()
        client.settimeout(self.guard.deadline_s)
        return client, address

    def verify_request(self, request, client_address) -> bool:
        """Admit the connection to the guard (closing the oldest pending ones beyond the caps);
        refuse it outright while the process runs :data:`MAX_THREADS` threads (a flood faster
        than the guard's deadline ends the threads of the connections it closed)."""
        if threading.active_count() >= MAX_THREADS:
            logger.warning("connection from %s refused: %d threads running", client_address[0],
                           threading.active_count())
            self.on_rejected("overload", str(client_address[0]))
            return False
        return self.guard.admit(request.fileno(), str(client_address[0]), request)

    def process_request_thread(self, request, client_address) -> None:
        """In the connection's thread: the TLS handshake (bounded), then pynetdicom's handler."""
        key, host = request.fileno(), str(client_address[0])
        try:
            if self.tls is not None:
                request = self._handshake(request, key, host)
                if request is None:
                    return
            request.settimeout(self.network_timeout)
            self.finish_request(request, client_address)
        except Exception as exc:
            self.guard.closed(key, request)
            logger.warning("connection from %s failed: %s: %s", host, type(exc).__name__, exc)
            logger.debug("connection from %s failed", host, exc_info=exc)
            self.shutdown_request(request)

    def _handshake(self, raw: socket.socket, key: int, host: str) -> ssl.SSLSocket | None:
        try:
            tls = self.tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            self.guard.closed(key, raw)
            logger.warning("TLS connection from %s failed before the handshake: %s", host, exc)
            self.on_rejected("tls-handshake", host)
            raw.close()
            return None
        self.guard.replace_socket(key, tls)
        try:
            left = self.guard.remaining(key)
            if left <= 0:
                raise TimeoutError("no time left for the TLS handshake")
            # A whole ClientHello waiting: the peer is handshaking, not stalling (kept from eviction).
            poller = select.poll()  # not select.select: file descriptors may be above 1023
            poller.register(tls.fileno(), select.POLLIN)
            if poller.poll(left * 1000) and _has_unread(tls):
                self.guard.progress(key)
            left = self.guard.remaining(key)
            if left <= 0:
                raise TimeoutError("no ClientHello within the handshake deadline")
            tls.settimeout(left)
            tls.do_handshake()
            self.guard.progress(key)
        except (OSError, ValueError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            self.guard.closed(key, tls)
            logger.warning("TLS handshake with %s failed: %s", host, str(exc)[:200] or type(exc).__name__)
            self.on_rejected("tls-handshake", host)
            try:
                socket.socket.close(tls)
            except OSError:
                pass
            return None
        return tls

    def handle_error(self, request, client_address) -> None:
        """Log (without a traceback on stderr, unlike socketserver's default)."""
        logger.warning("connection from %s: unexpected error", client_address[0])
        # exc_info: socketserver calls handle_error inside its except
        logger.debug("connection from %s: unexpected error", client_address[0], exc_info=True)


class _Discard:
    """Stands in for a received data set's file once the data set is refused: drops the rest."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.file = self

    def write(self, data: object) -> int:
        return len(data)  # type: ignore[arg-type]

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Message:
    """Receive state of the C-STORE data set in flight on one association."""

    __slots__ = ("data_bytes", "free", "key", "path", "refused", "since_check")

    def __init__(self) -> None:
        self.key: tuple[int, int] | None = None
        self.path: Path | None = None
        self.data_bytes = 0
        self.free = 0
        self.since_check = 0
        self.refused: tuple[int, str] | None = None


class ReceiveLimiter:
    """Stops receiving a data set to disk when it crosses a limit or the disk refuses it.

    Bound on each association's DIMSE provider when the connection opens (``EVT_CONN_OPEN``;
    the instance's ``receive_primitive``, never the class), it passes each presentation data
    value on to pynetdicom separately and checks, before a data-set fragment is written, that
    the data set stays within ``max_instance_bytes`` and that the spool disk keeps
    ``min_free_bytes`` free (re-read every ``check_step`` bytes). When not, or when writing
    raises ``OSError`` (disk full), the file is closed and deleted at once and the rest of the
    message is dropped; the C-STORE handler then answers what :meth:`take` returns.

    Args:
        limits: ``max_instance_bytes`` and ``min_free_bytes``.
        folder: Where data sets are received (the spool's ``incoming/``: its disk is checked).
        check_step: Bytes written between two free-space readings.
    """

    def __init__(self, limits: LimitsConfig, folder: Path, check_step: int = 1 << 20) -> None:
        self.max_bytes = int(limits.max_instance_bytes)
        self.floor = int(limits.min_free_bytes)
        self.folder = Path(folder)
        self.check_step = int(check_step)
        self._refused: dict[tuple[int, int], tuple[int, str]] = {}
        self._lock = threading.Lock()

    def on_conn_open(self, event: Event) -> None:
        """Wrap the association's ``dimse.receive_primitive``."""
        dimse = event.assoc.dimse
        dimse.receive_primitive = functools.partial(self._receive, dimse, dimse.receive_primitive, _Message())

    def take(self, assoc: object, message_id: object) -> tuple[int, str] | None:
        """(status, reason) when the data set of this C-STORE was refused while arriving."""
        with self._lock:
            return self._refused.pop((id(assoc), int(message_id or 0)), None)

    def forget(self, assoc: object) -> None:
        """Drop what :meth:`take` would have returned for ``assoc`` (the association ended)."""
        with self._lock:
            for key in [k for k in self._refused if k[0] == id(assoc)]:
                del self._refused[key]

    def _free(self) -> int:
        return shutil.disk_usage(self.folder).free

    @staticmethod
    def _pass(original: Callable, cx: int, data: object) -> None:
        primitive = P_DATA()
        primitive._presentation_data_value_list = [[cx, data]]  # memoryviews: skip the setter's type check
        original(primitive)

    def _receive(self, dimse, original: Callable, msg: _Message, primitive) -> None:
        for cx, data in list(primitive.presentation_data_value_list):
            control = data[0]
            if control & 1:  # command fragment
                try:
                    self._pass(original, cx, data)
                except OSError as exc:  # the data set's file could not be created
                    self._start(dimse, msg)
                    self._refuse(dimse, msg, StoreStatus.OUT_OF_RESOURCES,
                                 f"cannot write the data set: {exc.strerror or exc}")
                    continue
                if control & 2:
                    self._start(dimse, msg)
                continue
            last = bool(control & 2)
            if msg.key is not None and msg.refused is None:
                self._check(dimse, msg, len(data) - 1)
            if msg.refused is None:
                try:
                    self._pass(original, cx, data)
                except OSError as exc:
                    self._refuse(dimse, msg, StoreStatus.OUT_OF_RESOURCES,
                                 f"cannot write the data set: {exc.strerror or exc}")
                    if last:
                        self._pass(original, cx, data[:1])
            elif last:
                self._pass(original, cx, data[:1])  # completes the message: the handler answers
            if last:
                msg.key = None

    def _start(self, dimse, msg: _Message) -> None:
        message = dimse.message
        msg.key, msg.path, msg.refused = None, None, None
        msg.data_bytes = msg.since_check = 0
        if message is None or getattr(message, "command_set", None) is None:
            return
        if getattr(message.command_set, "CommandDataSetType", 0x0101) == 0x0101:
            return
        msg.key = (id(dimse.assoc), int(message.command_set.get("MessageID", 0) or 0))
        path = getattr(message, "_data_set_path", None)
        msg.path = Path(path) if path is not None else None
        if msg.path is not None:
            try:
                msg.free = self._free()
            except OSError:
                msg.free = 0
            if msg.free < self.floor:
                self._refuse(dimse, msg, StoreStatus.OUT_OF_RESOURCES,
                             f"free space {msg.free} bytes on the spool disk is below the floor "
                             f"limits.min_free_bytes={self.floor}")

    def _check(self, dimse, msg: _Message, n: int) -> None:
        msg.data_bytes += n
        if msg.data_bytes > self.max_bytes:
            self._refuse(dimse, msg, StoreStatus.OUT_OF_RESOURCES_TOO_LARGE,
                         f"instance larger than limits.max_instance_bytes={self.max_bytes}")
            return
        if msg.path is None:
            return
        msg.since_check += n
        if msg.since_check >= self.check_step:  # msg.free: free space before this fragment is written
            msg.since_check = 0
            try:
                msg.free = self._free()
            except OSError:
                pass
        if msg.free - n < self.floor:
            self._refuse(dimse, msg, StoreStatus.OUT_OF_RESOURCES,
                         f"receiving it would take the spool disk below limits.min_free_bytes={self.floor}")
            return
        msg.free -= n

    def _refuse(self, dimse, msg: _Message, status: int, reason: str) -> None:
        msg.refused = (int(status), reason)
        if msg.key is not None:
            with self._lock:
                self._refused[msg.key] = msg.refused
        message = dimse.message
        real = getattr(message, "_data_set_file", None) if message is not None else None
        if real is not None and not isinstance(real, _Discard):
            name = str(getattr(real, "name", msg.path or ""))
            try:
                real.close()
            except OSError:  # the buffered tail cannot be written either
                try:
                    os.close(real.fileno())
                except (OSError, ValueError):
                    pass
            message._data_set_file = _Discard(name)
            if name:
                try:
                    os.unlink(name)
                except OSError:
                    pass
        elif msg.path is not None:
            msg.path.unlink(missing_ok=True)


class EarlyWriteback(WakeableThread):
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
        self._synced: dict[str, int] = {}
        super().__init__("early-writeback")

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
        self._networks: dict[str, list] = {}
        self.ae = self._build_ae()
        self._server: ThreadedAssociationServer | None = None
        self._receiving = False
        self._writeback: EarlyWriteback | None = None
        self.guard: ConnectionGuard | None = None
        self.limiter: ReceiveLimiter | None = None
        self._slots: dict[int, tuple[str, object]] = {}  # id(assoc) -> (calling AE, assoc)
        self._slots_lock = threading.Lock()
        # id(assoc) -> (fd: the guard's key, assoc, the connection's socket)
        self._conn_keys: dict[int, tuple[int, object, socket.socket]] = {}

    def _resolve_hosts(self) -> None:
        """Turn every ``hosts`` entry into IP networks (names resolved now; a failure is logged
        and that entry matches nothing)."""
        self._networks = {}
        for ae_title, hosts in self._allowed.items():
            nets: list = []
            for host in hosts:
                if host == "*":
                    nets.append("*")
                    continue
                try:
                    addresses = resolve_host_entry(host)
                except ValueError as exc:
                    logger.error("allowed_callers %s: %s; this entry matches no peer", ae_title, exc)
                    continue
                nets.extend(ipaddress.ip_network(a, strict=False) for a in addresses)
            self._networks[ae_title] = nets

    def _build_ae(self) -> AE:
        cfg, limits = self.cfg, self.cfg.limits
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_pdu_size = limits.max_pdu_size
        ae.maximum_associations = limits.max_associations
        ae.network_timeout = limits.network_timeout_s
        ae.acse_timeout = limits.acse_timeout_s
        ae.dimse_timeout = limits.dimse_timeout_s
        # The node checks calling/called AE titles, hosts and slots itself (_on_requested),
        # counting and logging every rejection; pynetdicom's own checks would reject silently
        # and count connections still negotiating as slots.
        ae.require_called_aet = False
        ae.require_calling_aet = []
        ae.maximum_associations = 1 << 20  # pynetdicom's count includes connections still negotiating
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
        limits = self.cfg.limits
        self._resolve_hosts()
        RECEIVE_TO_DISK.acquire(id(self), True)
        TEMP_FOLDER.acquire(id(self), str(self.spool.incoming_dir))
        self._receiving = True
        self._writeback = EarlyWriteback(self.spool.incoming_dir)
        self._writeback.start()
        self.guard = ConnectionGuard(limits.max_pending_per_host, limits.max_pending_connections,
                                     limits.handshake_timeout_s, on_evicted=self._count_rejection)
        self.guard.start()
        self.limiter = ReceiveLimiter(limits, self.spool.incoming_dir)
        reader = FastPduReader(limits.fast_pdu_reader, on_bytes=self._writeback.count,
                               max_control_bytes=limits.max_control_pdu_bytes, on_refused=self._count_rejection,
                               on_request=self.guard.progress)
        handlers = [
            (evt.EVT_CONN_OPEN, reader.on_conn_open),
            (evt.EVT_CONN_OPEN, self.limiter.on_conn_open),
            (evt.EVT_CONN_OPEN, self._on_opened),
            (evt.EVT_CONN_CLOSE, self._on_closed),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        if not reader.active:  # the node's reader counts the bytes itself, without EVT_DATA_RECV
            handlers.append((evt.EVT_DATA_RECV, self._writeback.on_data))
        try:
            server = self.ae.make_server(
                (self.cfg.bind_address, self.cfg.port),
                evt_handlers=handlers,
                contexts=[SharedUidContext.of(cx) for cx in self.ae.supported_contexts],
                server_class=NodeServer,
            )
            server.guard = self.guard
            server.tls = self.ssl_context
            server.network_timeout = limits.network_timeout_s
            server.on_rejected = self._count_rejection
            thread = threading.Thread(target=server.serve_forever, name="dicom-accept", daemon=True)
            thread.start()
            self.ae._servers.append(server)
            self._server = server
        except BaseException:
            self._release_settings()
            self._writeback.stop()
            self._writeback = None
            self.guard.stop()
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
            logger.warning("aborting association with %s at shutdown", safe_ae(assoc.requestor.ae_title))
            assoc.abort()
        if self.guard is not None:
            self.guard.stop()
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
        return self.caller_refusal(ae_title, address) is None

    def caller_refusal(self, ae_title: str, address: str) -> str | None:
        """None when the caller may associate, else the reason (``calling-ae`` or ``host``)."""
        if self.cfg.allow_any_caller:
            return None
        title = ae_title.strip()
        if title not in self._allowed:
            return "calling-ae"
        nets = self._networks.get(title)
        if nets is None:  # before start(): compare the configured entries as they are
            hosts = self._allowed[title]
            return None if "*" in hosts or address in hosts else "host"
        if "*" in nets:
            return None
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return "host"
        return None if any(ip in net for net in nets if net != "*") else "host"

    def slots_in_use(self) -> int:
        """Accepted associations now (connections still negotiating do not count)."""
        with self._slots_lock:
            self._purge_slots()
            return len(self._slots)

    def _purge_slots(self) -> None:
        for key, (_, assoc) in list(self._slots.items()):
            if not assoc.is_alive():  # type: ignore[attr-defined]
                del self._slots[key]

    def _take_slot(self, assoc: object, calling: str) -> str | None:
        """Reserve a slot for ``calling``; None when granted, else the reason."""
        limits = self.cfg.limits
        with self._slots_lock:
            self._purge_slots()
            used = len(self._slots)
            if used >= limits.max_associations:
                return "local-limit"
            mine = sum(1 for ae, _ in self._slots.values() if ae == calling)
            free_after = limits.max_associations - used - 1
            if mine >= limits.caller_quota and free_after < limits.reserved_associations:
                return "caller-quota"
            self._slots[id(assoc)] = (calling, assoc)
            return None

    def _count_rejection(self, reason: str, host: str = "") -> None:
        self.metrics.rejections.labels(reason=reason).inc()

    def _on_opened(self, event: Event) -> None:
        # The association thread waits this long for the A-ASSOCIATE-RQ (pynetdicom waits the
        # ACSE timeout): a connection closed by the guard ends its threads within the deadline.
        event.assoc.acse_timeout = self.cfg.limits.handshake_timeout_s
        sock = event.assoc.dul.socket.socket if event.assoc.dul.socket is not None else None
        if sock is not None:
            with self._slots_lock:
                if len(self._conn_keys) > 256:  # associations that ended without EVT_CONN_CLOSE
                    for key, (_, other, _) in list(self._conn_keys.items()):
                        if not other.is_alive():
                            del self._conn_keys[key]
                self._conn_keys[id(event.assoc)] = (sock.fileno(), event.assoc, sock)

    def _on_closed(self, event: Event) -> None:
        with self._slots_lock:
            self._slots.pop(id(event.assoc), None)
            entry = self._conn_keys.pop(id(event.assoc), None)
        if self.guard is not None and entry is not None:
            self.guard.closed(entry[0], entry[2])
        if self.limiter is not None:
            self.limiter.forget(event.assoc)

    def _reject(self, event: Event, reason: str, rsd: tuple[int, int, int]) -> None:
        self._count_rejection(reason)
        self.metrics.associations.labels(result="rejected").inc()
        event.assoc.acse.send_reject(*rsd)
        event.assoc.kill()  # waits until the DUL has sent the A-ASSOCIATE-RJ (as pynetdicom's own checks do)

    def _on_requested(self, event: Event) -> None:
        assoc = event.assoc
        requestor = assoc.requestor
        # requestor.ae_title is only set during negotiation, after this event: read the request.
        calling = str(requestor.primitive.calling_ae_title).strip()
        called = str(requestor.primitive.called_ae_title).strip()
        address = str(requestor.address)
        refusal = self.caller_refusal(calling, address)
        if refusal is not None:
            logger.warning("association from %s (calling AE %s) rejected: %s not allowed", address,
                           safe_ae(calling), "calling AE title" if refusal == "calling-ae" else "host")
            self._reject(event, refusal, REJECT_CALLING_AE)
            return
        if self.cfg.require_called_ae_title and called != self.cfg.ae_title.strip():
            logger.warning("association from %s (calling AE %s) rejected: called AE title %s is not %s",
                           address, safe_ae(calling), safe_ae(called), self.cfg.ae_title)
            self._reject(event, "called-ae", REJECT_CALLED_AE)
            return
        refusal = self._take_slot(assoc, calling)
        if refusal is not None:
            logger.warning("association from %s (calling AE %s) rejected: %s (%d of %d slots in use, "
                           "limits.caller_quota=%d, reserved_associations=%d)", address, safe_ae(calling),
                           "no association slot free" if refusal == "local-limit" else "caller above its quota",
                           self.slots_in_use(), self.cfg.limits.max_associations,
                           self.cfg.limits.caller_quota, self.cfg.limits.reserved_associations)
            self._reject(event, refusal, REJECT_LOCAL_LIMIT)
            return
        assoc.acse_timeout = self.cfg.limits.acse_timeout_s
        with self._slots_lock:
            entry = self._conn_keys.get(id(assoc))
        if self.guard is not None and entry is not None:
            self.guard.authenticated(entry[0], entry[2])

    def _on_accepted(self, event: Event) -> None:
        self.metrics.associations.labels(result="accepted").inc()
        logger.debug("association from %s accepted", safe_ae(event.assoc.requestor.ae_title))

    def _on_echo(self, event: Event) -> int:
        return StoreStatus.SUCCESS

    def _on_store(self, event: Event) -> Dataset | int:
        t0 = time.monotonic()
        req = event.request
        sop_class = str(req.AffectedSOPClassUID or "")
        sop_instance = str(req.AffectedSOPInstanceUID or "")
        calling = str(event.assoc.requestor.ae_title).strip()
        refused = self.limiter.take(event.assoc, req.MessageID) if self.limiter is not None else None
        if refused is not None:
            status, reason = refused
            try:
                path = event.dataset_path
                if path is not None:
                    Path(path).unlink(missing_ok=True)
            except (AttributeError, OSError):
                pass
            logger.warning("C-STORE of %s from %s refused while arriving (0x%04X): %s",
                           safe_uid(sop_instance), safe_ae(calling), status, reason)
            self.metrics.refused.labels(status=f"0x{status:04X}").inc()
            return status_dataset(status, reason)
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
            logger.warning("C-STORE of %s from %s refused (0x%04X): %s",
                           safe_uid(sop_instance), safe_ae(calling), exc.status, exc)
            self.metrics.refused.labels(status=f"0x{exc.status:04X}").inc()
            return status_dataset(exc.status, str(exc))
        except StorageError as exc:
            logger.error("C-STORE of %s from %s: out of resources: %s", safe_uid(sop_instance), safe_ae(calling), exc)
            self.metrics.refused.labels(status="0xA700").inc()
            return status_dataset(StoreStatus.OUT_OF_RESOURCES, str(exc))
        except Exception as exc:  # a bug must never answer Success nor kill the association
            logger.error("C-STORE of %s from %s: unexpected error (%s)", safe_uid(sop_instance), safe_ae(calling),
                         type(exc).__name__)
            logger.debug("C-STORE of %s: unexpected error", safe_uid(sop_instance), exc_info=True)
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

