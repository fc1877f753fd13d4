"""The node's PDU reader (dicom_node.pdu_reader): whole PDUs from a real socket, whatever the
pieces they arrive in; P-DATA-TF values that are views of the PDU yet decode like pynetdicom's;
pynetdicom's state-machine events for bad or cut PDUs; memory that follows the bytes received;
bound to the node's associations only; received data sets identical to pynetdicom's own reader,
on disk and in memory."""

from __future__ import annotations

import hashlib
import re
import socket
import struct
import threading
import time
import tracemalloc
from pathlib import Path

import pynetdicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import Verification, XRayAngiographicImageStorage

from dicom_node import pdu_reader
from dicom_node.pdu_reader import ConnectionClosed, FastPduReader, decode_p_data, read_pdu
from dicom_node.process_settings import RECEIVE_TO_DISK, TEMP_FOLDER
from testkit.node import echo, make_xa, send
from testkit.orthanc import free_port

EXPLICIT = "1.2.840.10008.1.2.1"


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def pdv(context_id: int, value: bytes) -> bytes:
    """A presentation data value item: length, context ID, value (message control header first)."""
    return struct.pack(">LB", len(value) + 1, context_id) + value


def send_in_pieces(sock: socket.socket, data: bytes, piece: int, pause: float = 0.0) -> threading.Thread:
    def run() -> None:
        for i in range(0, len(data), piece):
            sock.sendall(data[i:i + piece])
            if pause:
                time.sleep(pause)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture()
def pair():
    a, b = socket.socketpair()
    a.settimeout(10)
    yield a, b
    a.close()
    b.close()


@pytest.mark.parametrize("piece", [1, 7, 4096, 100_000])
def test_reads_whole_pdus_back_to_back_whatever_the_pieces(pair, piece):
    reader, writer = pair
    first = pdu(0x04, bytes(range(256)) * 700)  # P-DATA-TF sized body (179,200 bytes)
    second = pdu(0x05, b"\x00\x00\x00\x00")     # A-RELEASE-RQ right behind it
    thread = send_in_pieces(writer, first + second, piece, pause=0.0005 if piece == 100_000 else 0.0)
    assert read_pdu(reader) == first
    assert read_pdu(reader) == second
    thread.join(10)


def test_body_longer_than_the_preallocation_limit_is_read_in_pieces(pair, monkeypatch):
    monkeypatch.setattr(pdu_reader, "PREALLOCATE_LIMIT", 1000)
    reader, writer = pair
    data = pdu(0x04, bytes(range(251)) * 40)  # 10,040 bytes: 11 pieces of at most 1000
    thread = send_in_pieces(writer, data, 333)
    assert read_pdu(reader) == data
    thread.join(10)


def test_unknown_pdu_type_is_named(pair):
    reader, writer = pair
    writer.sendall(pdu(0x09, b"abc"))
    with pytest.raises(ValueError, match="0x09"):
        read_pdu(reader)


def test_connection_closed_inside_the_header_or_the_body(pair):
    reader, writer = pair
    writer.sendall(pdu(0x04, b"x" * 1000)[:500])
    writer.close()
    with pytest.raises(ConnectionClosed, match="494 of 1000 body bytes") as caught:
        read_pdu(reader)
    assert caught.value.received == 500
    a, b = socket.socketpair()
    b.sendall(b"\x04\x00")
    b.close()
    with pytest.raises(ConnectionClosed, match="2 of 6 header bytes"):
        read_pdu(a)
    a.close()
    a, b = socket.socketpair()
    b.sendall(pdu(0x04, b"x" * 10)[:6])  # a whole header, then nothing: still inside the PDU
    b.close()
    with pytest.raises(ConnectionClosed) as caught:
        read_pdu(a)
    assert caught.value.received == 6
    a.close()


def test_a_forged_length_costs_only_the_bytes_that_arrive(pair):
    reader, writer = pair
    writer.sendall(struct.pack(">BBL", 0x04, 0, 0xFFFFFFF0) + b"y" * 10_000)
    writer.close()
    tracemalloc.start()
    try:
        with pytest.raises(ConnectionClosed):
            read_pdu(reader)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * pdu_reader.PREALLOCATE_LIMIT  # not the 4 GB declared


def test_a_silent_peer_times_out(pair):
    reader, writer = pair
    reader.settimeout(0.2)
    writer.sendall(pdu(0x04, b"z" * 100)[:50])
    with pytest.raises(TimeoutError):
        read_pdu(reader)


def test_p_data_values_are_views_of_the_pdu_and_decode_like_pynetdicom():
    raw = bytearray(pdu(0x04, pdv(1, b"\x03" + bytes(range(200))) + pdv(3, b"\x02" + b"pixels" * 999)
                        + pdv(5, b"\x00")))
    theirs = P_DATA_TF()
    theirs.decode(bytes(raw))
    ours = decode_p_data(raw)
    assert [(i.presentation_context_id, bytes(i.presentation_data_value)) for i in ours.presentation_data_value_items] \
        == [(i.presentation_context_id, i.presentation_data_value) for i in theirs.presentation_data_value_items]
    assert [(c, bytes(v)) for c, v in ours.to_primitive().presentation_data_value_list] \
        == theirs.to_primitive().presentation_data_value_list
    value = ours.presentation_data_value_items[1].presentation_data_value
    assert isinstance(value, memoryview) and value.obj is raw  # no copy of the 6 kB value
    assert value[0] == 0x02 and bytes(value[1:7]) == b"pixels"
    assert pynetdicom.dul._PDU_TYPES[b"\x04"] == (P_DATA_TF, pdu_reader.EVT_P_DATA_TF)  # the same event


@pytest.mark.parametrize("items, problem", [
    (struct.pack(">LB", 0, 1), "length 0 at offset 6"),                      # no context ID
    (pdv(1, b"\x02abc")[:-1], "length 5 at offset 6"),                       # runs past the PDU
    (pdv(1, b"\x02abc") + b"\x00\x00\x00", "3 byte(s) after the last"),     # a cut item header
], ids=["no-context-id", "past-the-end", "cut-item-header"])
def test_a_bad_p_data_item_is_named(items, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        decode_p_data(bytearray(pdu(0x04, items)))


class Receiver:
    """A pynetdicom SCP receiving to disk (or in memory), with or without the node's reader."""

    def __init__(self, folder: Path, *, fast: bool, chunked: bool = True, data_events: bool = False) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.bound: list[bool] = []
        self.digests: list[str] = []
        self.pdu_sizes: list[int] = []        # told by the node's reader (on_bytes)
        self.data_events: list[bytes] = []    # EVT_DATA_RECV, when bound
        RECEIVE_TO_DISK.acquire(id(self), chunked)
        TEMP_FOLDER.acquire(id(self), str(folder))
        ae = AE("TAVISEG")
        ae.maximum_pdu_size = 0
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 10
        ae.add_supported_context(XRayAngiographicImageStorage, [EXPLICIT])
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo)]
        if fast:
            handlers.insert(0, (evt.EVT_CONN_OPEN, FastPduReader(on_bytes=self.pdu_sizes.append).on_conn_open))
        if data_events:
            handlers.append((evt.EVT_DATA_RECV, lambda event: self.data_events.append(event.data)))
        self.port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def _on_echo(self, event) -> int:
        self.bound.append("_read_pdu_data" in vars(event.assoc.dul))
        return 0

    def _on_store(self, event) -> int:
        self.bound.append("_read_pdu_data" in vars(event.assoc.dul))
        if event.dataset_path is None:  # received in memory
            self.digests.append(hashlib.sha256(event.encoded_dataset(include_meta=True)).hexdigest())
            return 0
        path = Path(event.dataset_path)
        self.digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
        path.unlink()
        return 0

    def stop(self) -> None:
        self.server.shutdown()
        TEMP_FOLDER.release(id(self))
        RECEIVE_TO_DISK.release(id(self))


@pytest.fixture()
def receivers(tmp_path):
    made: list[Receiver] = []

    def make(fast: bool, **options) -> Receiver:
        made.append(Receiver(tmp_path / f"r{len(made)}", fast=fast, **options))
        return made[-1]

    yield make
    for r in made:
        r.stop()


def test_received_files_are_identical_to_pynetdicoms_reader(receivers):
    datasets = [make_xa(frames=f, size=s, seed=f) for f, s in ((1, 64), (40, 256), (3, 512))]  # up to ~2.6 MB
    fast, plain = receivers(True), receivers(False)
    assert send(fast.port, datasets) == [0, 0, 0]
    assert send(plain.port, datasets) == [0, 0, 0]
    assert fast.digests == plain.digests and len(set(fast.digests)) == 3
    assert fast.bound == [True] * 3 and plain.bound == [False] * 3  # only where the handler is installed


def test_data_sets_received_in_memory_are_identical_too(receivers):
    datasets = [make_xa(frames=20, size=256, seed=7), make_xa(frames=1, size=64, seed=8)]
    fast, plain = receivers(True, chunked=False), receivers(False, chunked=False)
    assert send(fast.port, datasets) == [0, 0]
    assert send(plain.port, datasets) == [0, 0]
    assert fast.digests == plain.digests and len(set(fast.digests)) == 2


def test_the_reader_tells_pdu_sizes_and_keeps_evt_data_recv_for_those_who_bind_it(receivers):
    dataset = make_xa(frames=30, size=256, seed=3)  # about 2 MB: 128 KiB P-DATA-TF PDUs
    quiet, listening = receivers(True), receivers(True, data_events=True)
    assert send(quiet.port, [dataset]) == [0]
    assert send(listening.port, [dataset]) == [0]
    assert quiet.data_events == [] and quiet.pdu_sizes == listening.pdu_sizes
    assert [len(d) for d in listening.data_events] == listening.pdu_sizes
    assert all(type(d) is bytes for d in listening.data_events)  # as pynetdicom hands them out
    assert sum(listening.pdu_sizes) > 30 * 256 * 256 and max(listening.pdu_sizes) > 100_000


def test_other_aes_in_the_process_keep_pynetdicoms_reader(receivers):
    fast = receivers(True)
    before = pynetdicom.dul.DULServiceProvider._read_pdu_data
    assert echo(fast.port) == 0
    assert pynetdicom.dul.DULServiceProvider._read_pdu_data is before  # never patched on the class
    assert fast.bound == [True]


def test_invalid_pdus_abort_the_association_and_the_scp_keeps_answering(receivers):
    fast = receivers(True)
    for raw in (pdu(0x0B, b"\x00" * 8),                 # unknown PDU type: Evt19
                pdu(0x01, b"\xff" * 30),                 # A-ASSOCIATE-RQ that does not decode: Evt19
                pdu(0x01, b"\x00\x01" + b"\x00" * 10)[:12],   # cut short, then closed: Evt17
                pdu(0x04, struct.pack(">LB", 0, 1))):       # P-DATA-TF item of length 0: Evt19
        with socket.create_connection(("127.0.0.1", fast.port), timeout=10) as s:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            answer = s.recv(100)
        assert answer == b"" or answer[0] == 0x07  # closed, or an A-ABORT
        assert echo(fast.port) == 0


def test_an_unsupported_pynetdicom_keeps_its_own_reader(monkeypatch, caplog):
    monkeypatch.setattr(pynetdicom, "__version__", "9.1.0")
    with caplog.at_level("WARNING", logger="dicom_node.pdu_reader"):
        reader = FastPduReader()
    assert not reader.active and "9.1.0" in caplog.text
    assert not FastPduReader(enabled=False).active


def test_a_normal_close_is_quiet_and_a_cut_pdu_is_an_error(receivers, caplog):
    fast = receivers(True)
    with caplog.at_level("DEBUG", logger="dicom_node.pdu_reader"):
        assert echo(fast.port) == 0  # associate, C-ECHO, release, close
        time.sleep(0.3)
        assert not [r for r in caplog.records if r.name == "dicom_node.pdu_reader" and r.levelname == "ERROR"]
        with socket.create_connection(("127.0.0.1", fast.port), timeout=10) as s:
            s.sendall(pdu(0x01, b"\x00\x01" + b"\x00" * 100)[:40])
            s.shutdown(socket.SHUT_WR)
            s.recv(100)
        wait = time.monotonic() + 5
        while time.monotonic() < wait and "inside a PDU" not in caplog.text:
            time.sleep(0.05)
    assert "connection closed inside a PDU (34 of 102 body bytes received)" in caplog.text
