"""The spool: durable accept, the right refusal status for each problem, clean-up at start."""

from __future__ import annotations

import dataclasses
import io
import struct

import pydicom
import pytest
from pydicom.filewriter import write_file_meta_info

from dicom_node.config import LimitsConfig
from dicom_node.errors import InstanceRejected, StorageError
from dicom_node.journal import Journal
from dicom_node.sop import StoreStatus
from dicom_node.spool import Spool
from testkit.node import XA, make_xa

TS = "1.2.840.10008.1.2.1"


@pytest.fixture()
def spool(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    sp = Spool(tmp_path / "spool", journal, LimitsConfig(min_free_bytes=0), keep_other=True)
    sp.prepare(keep_processed=False)
    yield sp
    journal.close()


def _received(spool, ds, name="tmp1.dcm"):
    path = spool.incoming_dir / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _accept(spool, path, ds, **kw):
    args = dict(calling_aet="ANGIO", sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID), transfer_syntax_uid=TS)
    args.update(kw)
    return spool.accept(path, **args)


def test_accept_moves_file_and_journals(spool):
    ds = make_xa(frames=2)
    tmp = _received(spool, ds)
    stored = _accept(spool, tmp, ds)
    assert not tmp.exists()
    assert stored.path.parent == spool.instances_dir
    assert stored.path.name != str(ds.SOPInstanceUID) + ".dcm"  # never named after a received UID
    assert pydicom.dcmread(stored.path).SOPInstanceUID == ds.SOPInstanceUID
    row = spool.journal.get_instance(stored.id)
    assert (row.state, row.kind, row.frames, row.study_instance_uid) == ("received", "image", 2, ds.StudyInstanceUID)


@pytest.mark.parametrize(
    ("mutate", "kw", "status"),
    [
        (lambda ds: None, {"sop_instance_uid": "1.2.3.999"}, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS),
        (lambda ds: None, {"sop_class_uid": "1.2.840.10008.5.1.4.1.1.12.2"},
         StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS),
        (lambda ds: delattr(ds, "Rows"), {}, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS),
        (lambda ds: setattr(ds, "StudyInstanceUID", "1.2.abc"), {}, StoreStatus.CANNOT_UNDERSTAND),
        (lambda ds: delattr(ds, "SeriesInstanceUID"), {}, StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS),
        (lambda ds: setattr(ds, "NumberOfFrames", 9), {}, StoreStatus.OUT_OF_RESOURCES_TOO_MANY_FRAMES),
    ],
)
def test_refusals_have_the_right_status_and_leave_nothing(spool, mutate, kw, status):
    spool.limits = dataclasses.replace(spool.limits, max_frames=8)
    ds = make_xa(frames=2)
    mutate(ds)
    tmp = _received(spool, ds)
    with pytest.raises(InstanceRejected) as info:
        _accept(spool, tmp, ds, **kw)
    assert info.value.status == status
    assert not tmp.exists()
    assert list(spool.instances_dir.iterdir()) == []
    assert spool.journal.instance_counts()["received"] == 0


def test_garbage_is_cannot_understand(spool):
    tmp = spool.incoming_dir / "garbage.dcm"
    tmp.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff\xfe\x01\x02" * 50)
    with pytest.raises(InstanceRejected) as info:
        spool.accept(tmp, calling_aet="ANGIO", sop_class_uid=XA, sop_instance_uid="1.2.3", transfer_syntax_uid=TS)
    assert info.value.status == StoreStatus.CANNOT_UNDERSTAND


def _explicit_element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"SQ", b"OB", b"UN"):
        return struct.pack("<HH", group, element) + vr + b"\x00\x00" + struct.pack("<L", len(value)) + value
    return struct.pack("<HH", group, element) + vr + struct.pack("<H", len(value)) + value


@pytest.mark.parametrize("damage", ["unknown-vr", "deep-sequence", "not-deflated", "odd-length-us"])
def test_unparseable_headers_are_cannot_understand_not_internal_errors(spool, damage):
    """Regression (bench.reliability): a bit flip turning a VR into an unknown one ('UM') made
    pydicom raise NotImplementedError, a private sequence nested 300 deep RecursionError, and a
    File Meta claiming Deflated Explicit VR for a plain data set zlib.error, and a US value of 3
    bytes BytesLengthException (not a ValueError); they escaped the header check and were answered
    0x0110 (internal error) instead of 0xC210."""
    ds = make_xa(frames=2)
    data = bytearray(open(_received(spool, ds), "rb").read())
    if damage == "not-deflated":
        meta_end = 144 + struct.unpack("<L", data[140:144])[0]
        meta = pydicom.dcmread(io.BytesIO(bytes(data)), stop_before_pixels=True).file_meta
        meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian...
        buf = io.BytesIO()
        buf.write(bytes(data[:132]))
        write_file_meta_info(buf, meta)
        data = bytearray(buf.getvalue()) + data[meta_end:]  # ...for a data set that is not deflated
    at = data.index(b"\x20\x00\x0d\x00UI")  # (0020,000D) Study Instance UID
    if damage == "unknown-vr":
        data[at + 4:at + 6] = b"UM"
    elif damage == "odd-length-us":
        rows = data.index(b"\x28\x00\x10\x00US\x02\x00")  # (0028,0010) Rows
        data[rows + 6:rows + 10] = b"\x03\x00" + data[rows + 8:rows + 10] + b"\x00"
    elif damage == "deep-sequence":
        nested = (b"\x09\x00\x01\x10SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff") * 300
        nested += (b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00") * 300
        creator = _explicit_element(0x0009, 0x0010, b"LO", b"BENCH ")
        end = data.index(b"\x10\x00\x10\x00PN")  # before (0010,0010): private group 0009 in tag order
        data[end:end] = creator + nested
    tmp = spool.incoming_dir / "damaged.dcm"
    tmp.write_bytes(bytes(data))
    with pytest.raises(InstanceRejected) as info:
        _accept(spool, tmp, ds)
    assert info.value.status == StoreStatus.CANNOT_UNDERSTAND
    assert not tmp.exists()


def test_size_limit_and_free_space_floor(spool):
    ds = make_xa(frames=2)
    spool.limits = dataclasses.replace(spool.limits, max_instance_bytes=1024)
    with pytest.raises(InstanceRejected) as info:
        _accept(spool, _received(spool, ds), ds)
    assert info.value.status == StoreStatus.OUT_OF_RESOURCES_TOO_LARGE
    spool.limits = dataclasses.replace(spool.limits, max_instance_bytes=10**9, min_free_bytes=2**62)
    with pytest.raises(StorageError, match="min_free_bytes"):
        _accept(spool, _received(spool, ds), ds)
    assert list(spool.instances_dir.iterdir()) == []


def test_declared_frame_size_limit(spool):
    """A header declaring frames bigger than limits.max_frame_pixels is refused before anything
    is decoded or allocated (a 13-byte image may declare 65535 x 65535)."""
    ds = make_xa(frames=1, size=64)
    spool.limits = dataclasses.replace(spool.limits, max_frame_pixels=64 * 63)
    with pytest.raises(InstanceRejected, match="max_frame_pixels") as info:
        _accept(spool, _received(spool, ds), ds)
    assert info.value.status == StoreStatus.OUT_OF_RESOURCES_TOO_LARGE
    spool.limits = dataclasses.replace(spool.limits, max_frame_pixels=64 * 64)
    assert _accept(spool, _received(spool, ds), ds).frames == 1


def test_other_objects_kept_or_refused(spool):
    sr = pydicom.Dataset()
    sr.SOPClassUID, sr.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.67", "1.2.3.7"
    sr.StudyInstanceUID, sr.SeriesInstanceUID, sr.Modality = "1.2.3", "1.2.3.8", "SR"
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = TS
    stored = _accept(spool, _received(spool, sr), sr)
    assert spool.journal.get_instance(stored.id).state == "kept"
    spool.keep_other = False
    with pytest.raises(InstanceRejected) as info:
        _accept(spool, _received(spool, sr), sr)
    assert info.value.status == 0x0122


def test_prepare_removes_partial_and_unjournaled_files(spool):
    ds = make_xa()
    kept = _accept(spool, _received(spool, ds), ds)
    (spool.incoming_dir / "tmpabc.dcm").write_bytes(b"partial")
    (spool.instances_dir / "orphan.dcm").write_bytes(b"renamed, never journaled")
    spool.prepare(keep_processed=False)
    assert list(spool.incoming_dir.iterdir()) == []
    assert [p.name for p in spool.instances_dir.iterdir()] == [kept.path.name]
