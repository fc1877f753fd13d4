"""Bad inputs: the bases mutants are derived from, the mutation families and the seeded mutants."""

from __future__ import annotations

import copy
import io
import random
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import (
    JPEG2000,
    MPEG2MPML,
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from bench.reliability.harness import BenchError, logger
from dicom_node.sop import TRANSFER_SYNTAXES
from testkit.node import make_xa, part10_bytes

_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


@dataclass
class Base:
    """A file mutants are derived from (a sample or a synthetic run), parsed once."""

    name: str
    dataset: pydicom.Dataset
    image: bool

    @property
    def encapsulated(self) -> bool:
        """True for a compressed (encapsulated) transfer syntax."""
        return UID(str(self.dataset.file_meta.TransferSyntaxUID)).is_compressed


@dataclass
class Layout:
    """Byte positions in a serialised file: end of the File Meta, elements, Pixel Data value."""

    meta_end: int
    #: (tag, VR, position of the length field, size of the length field, value position, length)
    elements: list[tuple[int, str, int, int, int, int]]
    pixel_value: int | None
    implicit: bool

    def element_start(self, index: int) -> int:
        """Byte position where top-level element ``index`` begins (its tag)."""
        _tag, _vr, len_pos, size, _value, _length = self.elements[index]
        if self.implicit:
            return len_pos - 4
        return len_pos - (8 if size == 4 else 6)


def serialize(ds: pydicom.Dataset) -> bytes:
    """The data set in DICOM file format (File Meta written as it is)."""
    buf = io.BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=True)
    except (ValueError, AttributeError, TypeError):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def layout_of(data: bytes, ts: str) -> Layout:
    """Parse the top-level element positions of a file written by :func:`serialize`."""
    (group_length,) = struct.unpack("<L", data[140:144])
    meta_end = 144 + group_length
    uid = UID(ts)
    implicit = uid == ImplicitVRLittleEndian
    little = uid != ExplicitVRBigEndian
    fp = io.BytesIO(data)
    fp.seek(meta_end)
    elements = []
    pixel_value = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for raw in data_element_generator(fp, implicit, little, defer_size=256):
            vr = str(raw.VR or "")
            size = 4 if implicit or vr in _LONG_VRS else 2
            if isinstance(raw, RawDataElement):
                value_pos, length = raw.value_tell, int(raw.length)
            else:  # an undefined-length sequence, parsed by pydicom: file_tell is its value position
                value_pos, length = int(raw.file_tell), 0xFFFFFFFF
            elements.append((int(raw.tag), vr, value_pos - size, size, value_pos, length))
            if int(raw.tag) == 0x7FE00010:
                pixel_value = value_pos
    return Layout(meta_end, elements, pixel_value, implicit)


def with_new_uid(base: Base) -> tuple[pydicom.Dataset, str]:
    """A copy of the base with its own SOP Instance UID (data set and File Meta)."""
    ds = copy.deepcopy(base.dataset)
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    return ds, uid


def set_raw(ds: pydicom.Dataset, keyword_or_tag: str | int, vr: str, value: bytes | str) -> None:
    """Put an element with exactly these value bytes into ``ds`` (no validation, no conversion)."""
    tag = Tag(keyword_or_tag)
    raw = value.encode("latin-1") if isinstance(value, str) else value
    if len(raw) % 2:
        raw += b"\x00" if vr in ("UI", "OB") else b" "
    little = ds.file_meta.TransferSyntaxUID != ExplicitVRBigEndian
    implicit = ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, implicit, little)


def us(value: int, ds: pydicom.Dataset) -> bytes:
    """An unsigned short in the data set's byte order."""
    big = ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    return struct.pack(">H" if big else "<H", value & 0xFFFF)


Mutation = Callable[[random.Random, pydicom.Dataset, Base], tuple[bytes, str]]


def _flip(rng: random.Random, data: bytearray, lo: int, hi: int, count: int) -> None:
    if hi <= lo:
        return
    for _ in range(count):
        i = rng.randrange(lo, hi)
        data[i] ^= 1 << rng.randrange(8)


def m_truncate_header(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Cut the file at a random offset inside the header."""
    data = serialize(ds)
    lay = layout_of(data, ds.file_meta.TransferSyntaxUID)
    end = lay.pixel_value or len(data)
    cut = rng.randrange(lay.meta_end, max(end, lay.meta_end + 1))
    return data[:cut], f"truncated at byte {cut} of {len(data)} (header)"


def m_truncate_pixels(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Cut the file at a random offset inside the Pixel Data."""
    data = serialize(ds)
    lay = layout_of(data, ds.file_meta.TransferSyntaxUID)
    start = lay.pixel_value or lay.meta_end
    cut = rng.randrange(start, len(data))
    return data[:cut], f"truncated at byte {cut} of {len(data)} (pixel data)"


def m_truncate_meta(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Cut the file inside the File Meta."""
    data = serialize(ds)
    lay = layout_of(data, ds.file_meta.TransferSyntaxUID)
    cut = rng.randrange(128, lay.meta_end)
    return data[:cut], f"truncated at byte {cut} (file meta)"


def m_flip_header(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Flip 1-8 random bits in the data set header."""
    data = bytearray(serialize(ds))
    lay = layout_of(bytes(data), ds.file_meta.TransferSyntaxUID)
    n = rng.randint(1, 8)
    _flip(rng, data, lay.meta_end, lay.pixel_value or len(data), n)
    return bytes(data), f"{n} bit flip(s) in the header"


def m_flip_pixels(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Flip 1-64 random bits in the Pixel Data."""
    data = bytearray(serialize(ds))
    lay = layout_of(bytes(data), ds.file_meta.TransferSyntaxUID)
    n = rng.randint(1, 64)
    _flip(rng, data, lay.pixel_value or lay.meta_end, len(data), n)
    return bytes(data), f"{n} bit flip(s) in the pixel data"


def m_flip_anywhere(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Flip 1-16 random bits anywhere after the preamble."""
    data = bytearray(serialize(ds))
    n = rng.randint(1, 16)
    _flip(rng, data, 132, len(data), n)
    return bytes(data), f"{n} bit flip(s) anywhere"


def m_flip_meta(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Flip 1-4 random bits in the File Meta."""
    data = bytearray(serialize(ds))
    lay = layout_of(bytes(data), ds.file_meta.TransferSyntaxUID)
    n = rng.randint(1, 4)
    _flip(rng, data, 132, lay.meta_end, n)
    return bytes(data), f"{n} bit flip(s) in the file meta"


def m_wrong_length(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Give one top-level element a wrong value length."""
    data = bytearray(serialize(ds))
    little = ds.file_meta.TransferSyntaxUID != ExplicitVRBigEndian
    lay = layout_of(bytes(data), ds.file_meta.TransferSyntaxUID)
    tag, vr, len_pos, size, _value, length = rng.choice(lay.elements)
    limit = 0xFFFF if size == 2 else 0xFFFFFFFF
    remaining = len(data) - _value
    choices = [0, length + 1, max(length - 1, 0), length * 2 + 7, remaining + 1000, limit - 1, limit,
               rng.randrange(limit)]
    new = rng.choice(choices) & limit
    fmt = ("<" if little else ">") + ("H" if size == 2 else "L")
    data[len_pos:len_pos + size] = struct.pack(fmt, new)
    return bytes(data), f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr} length {length} -> {new}"


def m_zero_span(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Zero a random span (a file partly written)."""
    data = bytearray(serialize(ds))
    start = rng.randrange(132, len(data))
    n = rng.randint(1, 4096)
    data[start:start + n] = bytes(len(data[start:start + n]))
    return bytes(data), f"{n} bytes zeroed at {start}"


def m_garbage_span(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Overwrite a random span with random bytes."""
    data = bytearray(serialize(ds))
    start = rng.randrange(132, len(data))
    n = rng.randint(1, 4096)
    data[start:start + n] = rng.randbytes(len(data[start:start + n]))
    return bytes(data), f"{n} random bytes at {start}"


def m_delete_span(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Delete a random span."""
    data = serialize(ds)
    start = rng.randrange(132, len(data))
    n = rng.randint(1, 512)
    return data[:start] + data[start + n:], f"{n} bytes deleted at {start}"


def m_duplicate_span(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Repeat whole elements elsewhere (duplicated, out-of-order tags)."""
    data = serialize(ds)
    lay = layout_of(data, ds.file_meta.TransferSyntaxUID)
    if len(lay.elements) >= 2:  # repeat whole elements: out-of-order and duplicated tags
        i = rng.randrange(len(lay.elements) - 1)
        start = lay.element_start(i)
        end = lay.element_start(min(i + rng.randint(1, 4), len(lay.elements) - 1))
        where = lay.element_start(rng.randrange(len(lay.elements)))
        return data[:where] + data[start:end] + data[where:], f"elements {start}:{end} repeated at {where}"
    start = rng.randrange(132, len(data))
    return data[:start] + data[start:start + 64] + data[start:], f"64 bytes repeated at {start}"


def m_encapsulation(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Damage the encapsulation: offset table, fragment length, item tag, delimiter, order."""
    data = bytearray(serialize(ds))
    lay = layout_of(bytes(data), ds.file_meta.TransferSyntaxUID)
    if not base.encapsulated or lay.pixel_value is None:
        return m_flip_pixels(rng, ds, base)
    p = lay.pixel_value
    (bot_len,) = struct.unpack("<L", data[p + 4:p + 8])
    first = p + 8 + bot_len
    choice = rng.choice(["bot-offsets", "bot-length", "fragment-length", "item-tag", "no-delimiter",
                         "fragments-shuffled"])
    if choice == "bot-offsets" and bot_len >= 4:
        k = rng.randrange(bot_len // 4)
        data[p + 8 + 4 * k:p + 12 + 4 * k] = struct.pack("<L", rng.randrange(1 << 32))
    elif choice in ("bot-offsets", "bot-length"):
        data[p + 4:p + 8] = struct.pack("<L", rng.choice([4, 8, 12, 0xFFFFFFF0, 0xFFFFFFFF, bot_len + 4]))
    elif choice == "fragment-length" and first + 8 <= len(data):
        data[first + 4:first + 8] = struct.pack("<L", rng.choice([0, 1, 0x7FFFFFF0, 0xFFFFFFFF, 3]))
    elif choice == "item-tag" and first + 8 <= len(data):
        data[first:first + 4] = rng.randbytes(4)
    elif choice == "fragments-shuffled":
        frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))
        rng.shuffle(frames)
        if frames:
            frames[0] = frames[0][: len(frames[0]) // 2]
        ds.PixelData = encapsulate(frames)
        return serialize(ds), "fragments shuffled, first one halved"
    else:
        del data[-8:]
    return bytes(data), f"encapsulation damaged: {choice}"


def m_wrong_ts(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """A File Meta that claims another transfer syntax than the data set's."""
    data = serialize(ds)
    lay = layout_of(data, ds.file_meta.TransferSyntaxUID)
    actual = str(ds.file_meta.TransferSyntaxUID)
    options = [ts for ts in TRANSFER_SYNTAXES if ts != actual] + [MPEG2MPML, "1.2.3.4"]
    claimed = rng.choice(options)
    meta = copy.deepcopy(ds.file_meta)
    meta.TransferSyntaxUID = claimed
    buf = io.BytesIO()
    buf.write(data[:132])
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue() + data[lay.meta_end:], f"File Meta claims {claimed} for {actual} data"


def m_garbage_after_preamble(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Preamble and DICM prefix followed by random bytes."""
    n = rng.randint(0, 65536)
    return b"\x00" * 128 + b"DICM" + rng.randbytes(n), f"preamble + DICM + {n} random bytes"


def m_no_prefix(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """No preamble/prefix, or a wrong prefix."""
    data = serialize(ds)
    kind = rng.choice(["no-preamble", "wrong-prefix"])
    if kind == "no-preamble":
        return data[132:], "file without preamble and DICM prefix"
    return data[:128] + b"DIKM" + data[132:], "prefix DIKM instead of DICM"


def m_meta_in_dataset(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """The whole file (File Meta, or even the preamble) sent as the data set."""
    data = serialize(ds)
    cut = rng.choice([132, 0])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    where = "the whole file (" + ("meta" if cut else "preamble") + " on) inside the data set"
    return part10_bytes(meta, data[cut:]), where


def m_random_file(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Random bytes, no DICOM structure at all."""
    n = rng.randint(1, 20000)
    return rng.randbytes(n), f"{n} random bytes, no DICOM structure"


def m_garbage_dataset(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """A valid File Meta followed by random bytes."""
    data = serialize(ds)
    lay = layout_of(data, ds.file_meta.TransferSyntaxUID)
    n = rng.randint(0, 8192)
    return data[:lay.meta_end] + rng.randbytes(n), f"valid File Meta, {n} random bytes as data set"


def m_frames(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """A nonsensical NumberOfFrames value."""
    value = rng.choice(["0", "-1", "5001", "999999999", "abc", "", "1.5", "3\\4", "+3",
                        "99999999999999999999", "2147483648", "1e2"])
    set_raw(ds, "NumberOfFrames", "IS", value)
    return serialize(ds), f"NumberOfFrames {value!r}"


def m_dims(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Zero, tiny, huge or mismatched Rows/Columns (huge ones with many frames)."""
    rows, cols = rng.choice([(0, 0), (1, 1), (65535, 65535), (4096, 4096), (2, 8192), (int(ds.Rows), 0),
                             (int(ds.Rows) + 1, int(ds.Columns))])
    set_raw(ds, "Rows", "US", us(rows, ds))
    set_raw(ds, "Columns", "US", us(cols, ds))
    frames = rng.choice([None, "1000", "5000"]) if rows * cols >= 4096 * 4096 else None
    if frames is not None:
        set_raw(ds, "NumberOfFrames", "IS", frames)
    return serialize(ds), f"Rows {rows} Columns {cols}" + (f" NumberOfFrames {frames}" if frames else "")


def m_frames_beyond_pixels(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """More frames declared than the Pixel Data holds."""
    actual = int(ds.get("NumberOfFrames", 1) or 1)
    big = int(ds.Rows) * int(ds.Columns) > 256 * 256
    declared = rng.choice([actual + 1, actual * 2, 64] + ([] if big else [500]))
    set_raw(ds, "NumberOfFrames", "IS", str(declared))
    return serialize(ds), f"NumberOfFrames {declared} for {actual} frame(s) of Pixel Data"


def m_bits(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Nonsensical bit depths, pixel representation or samples per pixel."""
    changes = []
    for _ in range(rng.randint(1, 2)):
        kw, value = rng.choice([("BitsAllocated", v) for v in (0, 1, 7, 12, 32, 64, 0xFFFF)]
                               + [("BitsStored", v) for v in (0, 17, 99)]
                               + [("HighBit", v) for v in (0, 99)]
                               + [("PixelRepresentation", v) for v in (1, 2)]
                               + [("SamplesPerPixel", v) for v in (0, 3, 4, 0xFFFF)])
        set_raw(ds, kw, "US", us(value, ds))
        changes.append(f"{kw} {value}")
    return serialize(ds), ", ".join(changes)


def m_photometric(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """A photometric interpretation that does not fit the pixels."""
    value = rng.choice(["RGB", "YBR_FULL_422", "PALETTE COLOR", "MONOCHROME3", "", "\x01\x02garbage"])
    set_raw(ds, "PhotometricInterpretation", "CS", value)
    if rng.random() < 0.3:
        set_raw(ds, "PlanarConfiguration", "US", us(1, ds))
    return serialize(ds), f"PhotometricInterpretation {value!r}"


def m_missing(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """One or two required attributes removed (Pixel Data, Rows, UIDs...)."""
    keywords = ["PixelData", "Rows", "Columns", "SOPInstanceUID", "SOPClassUID", "StudyInstanceUID",
                "SeriesInstanceUID", "BitsAllocated", "PhotometricInterpretation", "SamplesPerPixel",
                "NumberOfFrames", "Modality", "ImagerPixelSpacing", "FrameIncrementPointer", "BitsStored"]
    gone = [kw for kw in rng.sample(keywords, rng.randint(1, 2)) if kw in ds]
    for kw in gone:
        delattr(ds, kw)
    return serialize(ds), "missing " + (", ".join(gone) or "nothing (absent already)")


def m_uid_garbage(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Garbled, empty, over-long or mismatching UIDs."""
    kw, value = rng.choice([
        ("SOPInstanceUID", str(generate_uid())), ("StudyInstanceUID", "abc.def"),
        ("SeriesInstanceUID", "1." + "2" * 80), ("StudyInstanceUID", ".1.2..3"),
        ("SeriesInstanceUID", "1.2.3\x00\x00"), ("SOPClassUID", CTImageStorage),
        ("StudyInstanceUID", ""), ("SOPInstanceUID", str(ds.SOPInstanceUID) + ".1"),
    ])
    set_raw(ds, kw, "UI", value)
    return serialize(ds), f"{kw} {value[:30]!r}"


def m_calibration(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Zero, negative, infinite or non-numeric calibration and timing values."""
    kw, vr, value = rng.choice([
        ("ImagerPixelSpacing", "DS", "0\\0"), ("ImagerPixelSpacing", "DS", "-1\\-1"),
        ("ImagerPixelSpacing", "DS", "abc\\def"), ("ImagerPixelSpacing", "DS", "1e308\\1e308"),
        ("ImagerPixelSpacing", "DS", "nan\\nan"), ("ImagerPixelSpacing", "DS", "0.3"),
        ("PixelSpacing", "DS", "inf\\0"), ("DistanceSourceToDetector", "DS", "0"),
        ("DistanceSourceToDetector", "DS", "-5"), ("DistanceSourceToPatient", "DS", "nan"),
        ("EstimatedRadiographicMagnificationFactor", "DS", "0"),
        ("EstimatedRadiographicMagnificationFactor", "DS", "inf"), ("FrameTime", "DS", "abc"),
        ("FrameTime", "DS", "0"), ("FrameTime", "DS", "-1"), ("FrameTimeVector", "DS", "1\\2"),
        ("CineRate", "IS", "x"), ("FrameIncrementPointer", "AT", b"\x00\x00"),
    ])
    set_raw(ds, kw, vr, value)
    return serialize(ds), f"{kw} {value!r}"


def m_text(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Unknown character sets, invalid bytes, very long text values."""
    kw, vr, value = rng.choice([
        ("SpecificCharacterSet", "CS", "ISO_IR 999"), ("SpecificCharacterSet", "CS", "ISO 2022 IR 87"),
        ("SpecificCharacterSet", "CS", "\\\\\\"), ("PatientName", "PN", b"\xff\xfe\xfd^\xc3("),
        ("PatientName", "PN", "A" * 10000), ("PatientID", "LO", "\x00\x1b$B\x1b(B"),
        ("SeriesDescription", "LO", b"\xe9" * 300), ("Manufacturer", "LO", "x\\" * 2000),
    ])
    set_raw(ds, kw, vr, value)
    if kw == "PatientName" and rng.random() < 0.5:
        set_raw(ds, "SpecificCharacterSet", "CS", "ISO_IR 192")
    return serialize(ds), f"{kw} garbled"


def m_pixel_vr(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """Pixel Data of odd length, VR UN, too short or empty."""
    if "PixelData" not in ds or base.encapsulated:
        return m_flip_pixels(rng, ds, base)
    value = bytes(ds.PixelData)
    choice = rng.choice(["odd", "UN", "OW-short", "empty"])
    if choice == "odd":  # an odd value length, which DICOM forbids (set_raw would pad it)
        set_raw(ds, "PixelData", "OB", value[:-1])
        data = bytearray(serialize(ds))
        lay = layout_of(bytes(data), ds.file_meta.TransferSyntaxUID)
        for tag, _vr, len_pos, size, _v, length in lay.elements:
            if tag == 0x7FE00010:
                data[len_pos:len_pos + size] = struct.pack("<L" if size == 4 else "<H", length - 1)
        return bytes(data[:-1]), "Pixel Data of odd length"
    if choice == "UN":
        set_raw(ds, "PixelData", "UN", value)
    elif choice == "OW-short":
        set_raw(ds, "PixelData", "OW", value[: len(value) // 3 * 2])
    else:
        set_raw(ds, "PixelData", "OB", b"")
    return serialize(ds), f"Pixel Data {choice}"


def m_deep_sequence(rng: random.Random, ds: pydicom.Dataset, base: Base) -> tuple[bytes, str]:
    """A private sequence nested 20, 300 or 3000 levels deep."""
    data = serialize(ds)
    lay = layout_of(data, ds.file_meta.TransferSyntaxUID)
    implicit = lay.implicit
    if ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian:
        return m_flip_header(rng, ds, base)
    depth = rng.choice([20, 300, 3000])
    tag = struct.pack("<HH", 0x0009, 0x1001)
    sq = tag + (b"" if implicit else b"SQ\x00\x00") + b"\xff\xff\xff\xff"
    item, item_end = b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    seq_end = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    creator = struct.pack("<HH", 0x0009, 0x0010) + (b"" if implicit else b"LO") + (
        struct.pack("<L", 6) if implicit else struct.pack("<H", 6)) + b"BENCH "
    nested = (sq + item) * depth + (item_end + seq_end) * depth
    where = next((lay.element_start(i) for i, e in enumerate(lay.elements) if e[0] > 0x00091001), len(data))
    return data[:where] + creator + nested + data[where:], f"private sequence nested {depth} deep"


BYTE_MUTATIONS: dict[str, tuple[Mutation, int]] = {
    "truncate-header": (m_truncate_header, 6), "truncate-pixels": (m_truncate_pixels, 6),
    "truncate-meta": (m_truncate_meta, 2), "flip-header": (m_flip_header, 8),
    "flip-pixels": (m_flip_pixels, 8), "flip-anywhere": (m_flip_anywhere, 4),
    "flip-meta": (m_flip_meta, 3), "wrong-length": (m_wrong_length, 10),
    "zero-span": (m_zero_span, 3), "garbage-span": (m_garbage_span, 3),
    "delete-span": (m_delete_span, 3), "duplicate-span": (m_duplicate_span, 3),
    "encapsulation": (m_encapsulation, 6), "wrong-ts": (m_wrong_ts, 6),
    "garbage-after-preamble": (m_garbage_after_preamble, 3), "no-prefix": (m_no_prefix, 2),
    "meta-in-dataset": (m_meta_in_dataset, 2), "random-file": (m_random_file, 1),
    "garbage-dataset": (m_garbage_dataset, 2), "deep-sequence": (m_deep_sequence, 2),
}
IMAGE_MUTATIONS: dict[str, tuple[Mutation, int]] = {
    "frames": (m_frames, 6), "dims": (m_dims, 6), "frames-beyond-pixels": (m_frames_beyond_pixels, 4),
    "bits": (m_bits, 5), "photometric": (m_photometric, 3), "missing": (m_missing, 7),
    "uid-garbage": (m_uid_garbage, 4), "calibration": (m_calibration, 4), "text": (m_text, 3),
    "pixel-vr": (m_pixel_vr, 2),
}


def synthetic_bases() -> list[Base]:
    """Small synthetic XA runs (3 frames 64x64) in seven transfer syntaxes."""
    bases = []
    for name, ts, kwargs in [
        ("synthetic-explicit", ExplicitVRLittleEndian, None), ("synthetic-implicit", ImplicitVRLittleEndian, None),
        ("synthetic-bigendian", ExplicitVRBigEndian, None), ("synthetic-rle", RLELossless, {}),
        ("synthetic-jpegls", JPEGLSLossless, {}), ("synthetic-jpegls-near", JPEGLSNearLossless, {"jls_error": 2}),
        ("synthetic-j2k", JPEG2000Lossless, {}), ("synthetic-j2k-lossy", JPEG2000, {"j2k_cr": [10]}),
    ]:
        ds = make_xa(frames=3, size=64, seed=len(bases))
        if kwargs is not None:
            ds.compress(ts, **kwargs)
        else:
            ds.file_meta.TransferSyntaxUID = ts
        bases.append(Base(name, pydicom.dcmread(io.BytesIO(serialize(ds))), True))
    return bases


def sample_bases(folder: Path) -> list[Base]:
    """Every sample file as a base; runs of more than 4 frames are cut to their first 4."""
    bases = []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        image = "PixelData" in ds
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if image and frames > 4:
            ts = UID(str(ds.file_meta.TransferSyntaxUID))
            if ts.is_compressed:
                ds.PixelData = encapsulate(list(generate_frames(ds.PixelData, number_of_frames=frames))[:4])
            else:
                ds.PixelData = bytes(ds.PixelData)[: len(ds.PixelData) // frames * 4]
            ds.NumberOfFrames = 4
        bases.append(Base(path.stem, ds, image))
    return bases


#: Answers, as :func:`bench.reliability.bad_input.answer_label` names them.
SUCCESS, MISMATCH, TOO_LARGE, TOO_MANY_FRAMES, CANNOT_UNDERSTAND = "0x0000", "0xA900", "0xA701", "0xA702", "0xC210"
CONTEXT_REFUSED = "context refused"
#: Families that change only the Pixel Data value of an image: the C-STORE handler never decodes
#: pixels (they are decoded by the worker), so the header is intact and the answer is Success.
PIXEL_ONLY = {"flip-pixels", "truncate-pixels", "encapsulation", "pixel-vr", "frames-beyond-pixels"}
#: Families that change attributes the handler does not check (it checks UIDs, Rows, Columns,
#: NumberOfFrames and the limits): Success; the worker decides whether the run can be segmented.
UNCHECKED_ATTRIBUTES = {"bits", "photometric", "calibration", "text"}
#: Families that leave no readable data set (random bytes after the File Meta, or no File Meta
#: at all: sent raw): the node cannot parse the header, 0xC210.
UNPARSEABLE = {"garbage-after-preamble", "random-file", "garbage-dataset", "truncate-meta"}
_FRAMES_NOT_POSITIVE = {"'0'", "'-1'"}
_FRAMES_NOT_A_NUMBER = {"'abc'", "'3\\\\4'"}
_FRAMES_TOO_MANY = {"'5001'", "'999999999'", "'2147483648'", "'99999999999999999999'"}
_HANDLER_CHECKED = {"Rows", "Columns", "SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"}


def predicted_answers(family: str, description: str, base: Base) -> frozenset[str] | None:
    """The C-STORE answers the node may give, predicted from what the mutation broke; None when
    the damage lands on random bytes and no answer can be predicted (any correct answer then).

    Predictions follow the node's contract with its default limits (max_frames 5000,
    max_frame_pixels 4096 x 4096): the handler parses the header only, refuses 0xC210 when it
    cannot, 0xA900 when identifying values or Rows/Columns/NumberOfFrames are missing, invalid
    or differ from the command, 0xA701/0xA702 beyond a limit, and a presentation context with a
    transfer syntax it does not accept is refused at association; everything else is Success.
    A mutation that fell back to another one (its description says which) is predicted as that one.
    """
    if family in PIXEL_ONLY and base.image and "PixelData" in base.dataset:
        return frozenset({SUCCESS})
    if family in UNCHECKED_ATTRIBUTES:
        return frozenset({SUCCESS})
    if family in UNPARSEABLE:
        return frozenset({CANNOT_UNDERSTAND})
    if family == "wrong-ts":
        claimed = description.split("File Meta claims ", 1)[1].split(" for ", 1)[0]
        return frozenset({CONTEXT_REFUSED}) if claimed not in TRANSFER_SYNTAXES else None
    if family == "frames":
        value = description.removeprefix("NumberOfFrames ")
        if value in _FRAMES_NOT_POSITIVE or value in _FRAMES_NOT_A_NUMBER:
            return frozenset({MISMATCH})
        if value in _FRAMES_TOO_MANY:
            return frozenset({TOO_MANY_FRAMES})
        if value == "''":  # an empty value: one frame, as when it is absent
            return frozenset({SUCCESS})
        return None  # '1.5', '1e2', '+3': a lenient reader may take them as numbers
    if family == "dims":
        words = description.split()
        rows, cols = int(words[1]), int(words[3])
        if rows < 1 or cols < 1:
            return frozenset({MISMATCH})
        if rows * cols > 4096 * 4096:
            return frozenset({TOO_LARGE})
        return frozenset({SUCCESS})
    if family == "missing":
        gone = set(description.removeprefix("missing ").split(", "))
        if {"SOPClassUID", "SOPInstanceUID"} <= gone:
            return frozenset({CANNOT_UNDERSTAND})
        return frozenset({MISMATCH}) if gone & _HANDLER_CHECKED else frozenset({SUCCESS})
    if family == "uid-garbage":
        keyword, value = description.split(" ", 1)
        if keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
            if value == "''":
                return frozenset({MISMATCH})
            if not value.startswith("'1.2.3\\x00"):  # garbled or over-long: not a UID at all
                return frozenset({CANNOT_UNDERSTAND})
        return None  # a changed SOP Instance/Class UID is copied into the File Meta by pydicom
    return None


@dataclass
class Mutant:
    """One corrupt file to send, and the answers predicted for it (None: not predictable)."""

    name: str
    family: str
    base: str
    description: str
    data: bytes
    fallback: tuple[str, str, str]  # SOP Class UID, SOP Instance UID, transfer syntax of the original
    expected: frozenset[str] | None = None

    @property
    def sop_uid(self) -> str:
        """The mutant's own SOP Instance UID."""
        return self.fallback[1]


def make_mutants(count: int, bases: Sequence[Base], rng: random.Random) -> Iterator[Mutant]:
    """``count`` seeded mutants, spread over the bases and the mutation families."""
    synthetic = [b for b in bases if b.name.startswith("synthetic")]
    samples = [b for b in bases if not b.name.startswith("synthetic")]
    for i in range(count):
        base = rng.choice(synthetic if (i % 2 == 0 or not samples) else samples)
        families = dict(BYTE_MUTATIONS)
        if base.image:
            families.update(IMAGE_MUTATIONS)
        names = list(families)
        for _ in range(10):  # a few combinations cannot be written by pydicom: draw again
            family = rng.choices(names, weights=[families[n][1] for n in names])[0]
            ds, uid = with_new_uid(base)
            fallback = (str(ds.file_meta.MediaStorageSOPClassUID), uid, str(ds.file_meta.TransferSyntaxUID))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    data, description = families[family][0](rng, ds, base)
                    break
                except (ValueError, TypeError, AttributeError, KeyError, IndexError, LookupError, struct.error,
                        OverflowError) as exc:
                    logger.debug("mutation %s of %s cannot be written (%s: %s); drawing again",
                                 family, base.name, type(exc).__name__, exc)
        else:
            raise BenchError(f"no mutation of {base.name} could be written in 10 draws")
        yield Mutant(f"{i:04d}-{family}-{base.name}", family, base.name, description, data, fallback,
                     predicted_answers(family, description, base))
