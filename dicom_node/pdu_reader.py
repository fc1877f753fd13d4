"""Reading PDUs off an association's socket with fewer copies than pynetdicom's own reader.

pynetdicom 3.0 reads a PDU body 4096 bytes per ``recv`` into a fresh ``bytearray``, appends each
piece, then appends the whole body to the header's buffer; decoding a P-DATA-TF PDU then copies
its data four more times (to ``bytes``, the items, each item's value, the value past its message
control header) before the chunked receive writes it to disk. A 128 KiB P-DATA-TF PDU (what
dcmtk's ``storescu`` sends to an unlimited maximum PDU) costs 32 system calls and six copies in
Python. This reader ``recv_into``'s the whole PDU (header and body) into one buffer sized from the
header, so the body is copied once out of the kernel, and decodes P-DATA-TF PDUs into
presentation data values that are views of that buffer (:func:`decode_p_data`): the bytes reach
the file with no copy in Python. Other PDU types, the events, the state machine and the DIMSE
layer are pynetdicom's. ``bench/receive.py --decompose`` times the node and bare pynetdicom with
and without it.

It replaces ``DULServiceProvider._read_pdu_data`` on the node's own associations only (bound on
the instance when the connection opens: ``EVT_CONN_OPEN`` comes before the reactor starts),
never on the class, so other AEs in the process keep pynetdicom's reader. It keeps the
reader's contract: the same state-machine events for a closed connection (Evt17), an unknown
PDU type or an undecodable PDU (Evt19), ``EVT_DATA_RECV`` (with the PDU as ``bytes``, only when
a handler is bound) and ``EVT_PDU_RECV``, and the decoded PDU queued for the reactor. Memory
follows the bytes that arrive, not the length a peer declares: a body longer than
:data:`PREALLOCATE_LIMIT` is read in pieces of that size, so a forged 4 GB length costs at
most one piece more than the bytes the peer really sends.

Only the pynetdicom versions it was written against (:data:`SUPPORTED_VERSIONS`) get it; on any
other the node logs once and keeps pynetdicom's reader.

Hostile peers: a PDU other than P-DATA-TF (an A-ASSOCIATE-RQ, a release or abort) longer than
``max_control_bytes`` (``limits.max_control_pdu_bytes``, 64 KiB by default) and a P-DATA-TF
before the association was accepted are refused from their 6-byte header, before any body is
read: the connection is closed at once (:class:`PduRefused`), so an unauthenticated peer
declaring 4 GB costs nothing. With ``limits.fast_pdu_reader: false`` the node still reads
PDUs here (with these checks) but decodes every one with pynetdicom's decoder.
"""

from __future__ import annotations

import functools
import logging
import re
import socket
import struct
from collections.abc import Callable

import pynetdicom
from pynetdicom import evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.events import Event
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_items import PresentationDataValueItem

logger = logging.getLogger(__name__)

#: pynetdicom major.minor versions whose ``DULServiceProvider`` this reader matches.
SUPPORTED_VERSIONS = ("3.0",)
#: Bodies up to this size are read into one buffer allocated from the declared length.
PREALLOCATE_LIMIT = 4 << 20
#: PDU types of DICOM PS3.8 (A-ASSOCIATE-RQ 0x01 ... A-ABORT 0x07).
PDU_TYPES = frozenset(range(0x01, 0x08))
#: State-machine events (PS3.8 9.2): transport connection closed, invalid PDU received.
EVT_CONNECTION_CLOSED = "Evt17"
EVT_INVALID_PDU = "Evt19"
#: P-DATA-TF: its PDU type and the state-machine event for receiving one (PS3.8 9.2).
P_DATA_TF_TYPE = 0x04
EVT_P_DATA_TF = "Evt10"

_HEADER = struct.Struct(">BBL")
#: A received value quoted in a decoder's error message (never logged: it is the peer's text).
_QUOTED = re.compile(r"'.*'", re.DOTALL)
_PDV_HEADER = struct.Struct(">LB")  # item length, presentation context ID
_DUL_METHODS = ("_read_pdu_data", "_decode_pdu")


class PduRefused(ValueError):
    """A PDU refused from its header alone (too long for its type, or P-DATA-TF too early).

    Attributes:
        reason: Short metric label (``pdu-too-large``, ``data-before-association``).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ConnectionClosed(Exception):
    """The peer closed the connection before a whole PDU arrived.

    Attributes:
        received: Bytes of the PDU that did arrive (0: closed between PDUs, the normal end).
    """

    def __init__(self, message: str, received: int = 0) -> None:
        super().__init__(message)
        self.received = received


def is_supported() -> bool:
    """True when the installed pynetdicom is one this reader was written against."""
    major_minor = ".".join(pynetdicom.__version__.split(".")[:2])
    return major_minor in SUPPORTED_VERSIONS and all(hasattr(DULServiceProvider, m) for m in _DUL_METHODS)


def _recv_exactly(sock, view: memoryview, what: str = "bytes", before: int = 0) -> None:
    """Fill ``view`` from ``sock``; ``before``: bytes of the PDU already read (for the error).

    Raises:
        ConnectionClosed: the peer closed the connection first.
        OSError, TimeoutError: the socket failed or timed out (``network_timeout_s``).
    """
    got, size = 0, len(view)
    while got < size:
        n = sock.recv_into(view[got:])
        if not n:
            raise ConnectionClosed(f"{got} of {size} {what} received", before + got)
        got += n


def read_pdu(sock, max_control_bytes: int | None = None, data_allowed: bool = True,
             max_data_bytes: int | None = None) -> bytearray:
    """One whole PDU (header and body) from ``sock``.

    Args:
        sock: The connection.
        max_control_bytes: Longest body accepted for a PDU other than P-DATA-TF (None: any).
        data_allowed: False refuses a P-DATA-TF (the association is not accepted yet).
        max_data_bytes: Longest P-DATA-TF body accepted (the maximum length the node
            advertised, ``limits.max_pdu_size``; None: any).

    Raises:
        ConnectionClosed: the connection closed before the PDU was complete.
        PduRefused: refused from its header (``max_control_bytes``, ``data_allowed``).
        ValueError: the PDU type is not one of PS3.8 (``PDU_TYPES``).
        OSError, TimeoutError: the socket failed or timed out.
    """
    header = bytearray(_HEADER.size)
    _recv_exactly(sock, memoryview(header), "header bytes")  # received 0: closed between PDUs
    pdu_type, _, length = _HEADER.unpack(header)
    if pdu_type not in PDU_TYPES:
        raise ValueError(f"unknown PDU type 0x{pdu_type:02X}")
    if pdu_type == P_DATA_TF_TYPE:
        if not data_allowed:
            raise PduRefused(f"P-DATA-TF PDU ({length} bytes declared) before the association was accepted",
                             "data-before-association")
        if max_data_bytes is not None and length > max_data_bytes:
            raise PduRefused(f"P-DATA-TF PDU declares {length} bytes, more than the maximum length the node "
                             f"advertised (limits.max_pdu_size={max_data_bytes})", "pdu-too-large")
    elif max_control_bytes is not None and length > max_control_bytes:
        raise PduRefused(f"PDU of type 0x{pdu_type:02X} declares {length} bytes, more than "
                         f"limits.max_control_pdu_bytes={max_control_bytes}", "pdu-too-large")
    if length <= PREALLOCATE_LIMIT:
        pdu = bytearray(_HEADER.size + length)
        pdu[: _HEADER.size] = header
        _recv_exactly(sock, memoryview(pdu)[_HEADER.size:], "body bytes", _HEADER.size)
        return pdu
    pieces = [header]
    left = length
    while left:
        piece = bytearray(min(left, PREALLOCATE_LIMIT))
        _recv_exactly(sock, memoryview(piece), f"bytes of a {length}-byte body piece",
                      _HEADER.size + length - left)
        pieces.append(piece)
        left -= len(piece)
    return bytearray().join(pieces)


def decode_p_data(pdu: bytearray) -> P_DATA_TF:
    """A whole P-DATA-TF PDU decoded with its values as views of ``pdu`` (no copy).

    pynetdicom's DIMSE layer only indexes, slices and writes a presentation data value, which a
    ``memoryview`` supports like ``bytes``. ``pdu`` must not be changed afterwards.

    Raises:
        ValueError: an item's length is below 1 (no presentation context ID) or runs past the
            end of the PDU (pynetdicom's own decoder fails on both too).
    """
    view = memoryview(pdu)
    decoded = P_DATA_TF()
    offset, end = _HEADER.size, len(pdu)
    while offset < end:
        if end - offset < _PDV_HEADER.size:
            raise ValueError(f"{end - offset} byte(s) after the last presentation data value item")
        length, context_id = _PDV_HEADER.unpack_from(pdu, offset)
        if length < 1 or offset + 4 + length > end:
            raise ValueError(f"presentation data value item of length {length} at offset {offset} "
                             f"of a {end}-byte P-DATA-TF PDU")
        item = PresentationDataValueItem()
        item.presentation_context_id = context_id
        item.presentation_data_value = view[offset + _PDV_HEADER.size: offset + 4 + length]
        decoded.presentation_data_value_items.append(item)
        offset += 4 + length
    return decoded


def _decode(dul: DULServiceProvider, data: bytearray, fast: bool = True) -> tuple[object, str]:
    """(PDU, state-machine event) for ``data``, with pynetdicom's two receive events
    (``fast`` False: every PDU by pynetdicom's own decoder)."""
    if data[0] != P_DATA_TF_TYPE or not fast:
        return dul._decode_pdu(bytes(data) if data[0] == P_DATA_TF_TYPE else data)
    if dul.assoc.get_handlers(evt.EVT_DATA_RECV):
        evt.trigger(dul.assoc, evt.EVT_DATA_RECV, {"data": bytes(data)})
    pdu = decode_p_data(data)
    evt.trigger(dul.assoc, evt.EVT_PDU_RECV, {"pdu": pdu})
    return pdu, EVT_P_DATA_TF


def _read_pdu_data(dul: DULServiceProvider, on_bytes: Callable[[int], None] | None = None,
                   max_control_bytes: int | None = None,
                   on_refused: Callable[[str, str], None] | None = None,
                   on_request: Callable[[int], None] | None = None) -> None:
    """Drop-in for ``DULServiceProvider._read_pdu_data`` (bound to one association's DUL);
    ``on_bytes`` is told each PDU's size, ``on_refused`` (reason, peer address) each PDU refused
    from its header (the connection is then closed), ``on_request`` the socket's file
    descriptor after each whole PDU read before the association is accepted."""
    _read(dul, on_bytes, max_control_bytes, on_refused, True, on_request)


def _read_pdu_checked(dul: DULServiceProvider, max_control_bytes: int | None = None,
                      on_refused: Callable[[str, str], None] | None = None,
                      on_request: Callable[[int], None] | None = None) -> None:
    """The header checks of :func:`_read_pdu_data` with pynetdicom's decoder for every PDU
    (``limits.fast_pdu_reader: false``)."""
    _read(dul, None, max_control_bytes, on_refused, False, on_request)


def _read(dul: DULServiceProvider, on_bytes: Callable[[int], None] | None,
          max_control_bytes: int | None, on_refused: Callable[[str, str], None] | None, fast: bool,
          on_request: Callable[[int], None] | None = None) -> None:
    sock = None
    try:
        sock = dul.socket.socket
        if sock is None:
            raise ConnectionClosed("the socket is closed", 1)
        data = read_pdu(sock, max_control_bytes, data_allowed=bool(dul.assoc.is_established),
                        max_data_bytes=dul.assoc.acceptor.maximum_length or None)
    except PduRefused as exc:
        logger.warning("association from %s: %s; connection closed", _peer(dul), exc)
        if on_refused is not None:
            on_refused(exc.reason, _peer(dul))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        dul.event_queue.put(EVT_CONNECTION_CLOSED)
        return
    except ValueError as exc:
        logger.error("association from %s: %s", _peer(dul), exc)
        dul.event_queue.put(EVT_INVALID_PDU)
        return
    except ConnectionClosed as exc:
        if exc.received:
            logger.error("association from %s: connection closed inside a PDU (%s)", _peer(dul), exc)
        else:  # closed between two PDUs: the normal end after a release (pynetdicom logs nothing)
            logger.debug("association from %s: connection closed", _peer(dul))
        dul.event_queue.put(EVT_CONNECTION_CLOSED)
        return
    except (OSError, TimeoutError) as exc:
        logger.error("association from %s: connection failed while reading a PDU (%s: %s)",
                     _peer(dul), type(exc).__name__, exc)
        dul.event_queue.put(EVT_CONNECTION_CLOSED)
        return
    if on_bytes is not None:
        on_bytes(len(data))
    if on_request is not None and not dul.assoc.is_established:
        on_request(sock.fileno())  # a whole PDU before acceptance: the peer is not stalling
    try:
        pdu, event = _decode(dul, data, fast)
    except Exception as exc:  # noqa: BLE001 - like pynetdicom's reader, any decoding failure is Evt19
        logger.error("association from %s: undecodable PDU of type 0x%02X (%s: %s)",
                     _peer(dul), data[0], type(exc).__name__, _QUOTED.sub("<withheld>", str(exc))[:200])
        dul.event_queue.put(EVT_INVALID_PDU)
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


def _peer(dul: DULServiceProvider) -> str:
    try:
        return str(dul.assoc.requestor.address)
    except AttributeError:
        return "?"


class FastPduReader:
    """``EVT_CONN_OPEN`` handler giving each new association of the node the fast reader.

    Args:
        enabled: False keeps pynetdicom's own reader (``limits.fast_pdu_reader: false``).
        on_bytes: Called (DUL thread) with the size of every PDU read, before it is decoded:
            what ``EVT_DATA_RECV`` tells, without making the PDU ``bytes`` for it.
    """

    def __init__(self, enabled: bool = True, on_bytes: Callable[[int], None] | None = None, *,
                 max_control_bytes: int | None = None,
                 on_refused: Callable[[str, str], None] | None = None,
                 on_request: Callable[[int], None] | None = None) -> None:
        self.on_bytes = on_bytes
        self.on_request = on_request
        self.max_control_bytes = max_control_bytes
        self.on_refused = on_refused
        supported = is_supported()
        self.active = bool(enabled) and supported
        #: The checks of ``max_control_bytes`` apply (with pynetdicom's decoder when not ``active``).
        self.guarding = supported and max_control_bytes is not None
        if not supported:
            logger.warning("pynetdicom %s is not one of %s: using its own PDU reader",
                           pynetdicom.__version__, ", ".join(SUPPORTED_VERSIONS))

    def on_conn_open(self, event: Event) -> None:
        """Bind the reader to the association's DUL (before its reactor thread starts)."""
        dul = event.assoc.dul
        if self.active:
            dul._read_pdu_data = functools.partial(
                _read_pdu_data, dul, self.on_bytes, self.max_control_bytes, self.on_refused, self.on_request)
        elif self.guarding:
            dul._read_pdu_data = functools.partial(
                _read_pdu_checked, dul, self.max_control_bytes, self.on_refused, self.on_request)
