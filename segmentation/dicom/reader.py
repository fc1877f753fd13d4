"""A projection X-ray object, opened for frame-by-frame reading: :func:`open_run`.

The header is parsed without the Pixel Data; the Pixel Data element is then located in the
file and frames are read and decoded one at a time (native frames by offset; encapsulated
frames one codestream at a time with pydicom's frame generator), so a long cine never sits
in memory decoded twice. A frame that cannot be decoded is logged, recorded in
:attr:`ProjectionRun.frame_status` / :attr:`ProjectionRun.failures` and skipped by
:meth:`ProjectionRun.iter_frames`; :meth:`ProjectionRun.read_frame` raises a per-frame
:class:`~segmentation.errors.DicomDecodeError` the caller can catch and go on.

Tolerated: missing NumberOfFrames (one frame), invalid code strings (PatientSex '?'), retired
curve groups and private sequences (never interpreted), non-zero preambles, files without a
preamble (``force=True``), multi-fragment frames without an offset table, truncated native
data (the missing frames fail, the others are read).
"""

from __future__ import annotations

import enum
import io
import logging
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames, get_frame
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from segmentation.dicom.calibration import Calibration, calibrate
from segmentation.dicom.decode import FrameCodec, PixelLayout
from segmentation.dicom.sop_classes import InputKind, classify, explain
from segmentation.errors import (
    DICOM_PARSE_ERRORS,
    DicomDecodeError,
    NonImageObjectError,
    UnsupportedObjectError,
)

logger = logging.getLogger(__name__)

_PIXEL_DATA_TAG = 0x7FE00010
_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF


class FrameStatus(str, enum.Enum):
    """Decoding state of one frame."""

    PENDING = "pending"
    DECODED = "decoded"
    FAILED = "failed"


class _PixelSource:
    """Where the Pixel Data value is: a file region or an in-memory buffer."""

    def __init__(self, *, path: Path | None, buffer: bytes | None, offset: int, length: int | None):
        self.path, self.buffer, self.offset, self.length = path, buffer, offset, length

    def open(self) -> BinaryIO:
        """A binary stream positioned at the first byte of the Pixel Data value."""
        stream: BinaryIO = open(self.path, "rb") if self.path is not None else io.BytesIO(self.buffer or b"")
        stream.seek(self.offset)
        return stream


class ProjectionRun:
    """One projection image object (a cine run or a single frame), read frame by frame.

    Attributes: ``dataset`` (header, no Pixel Data), ``kind``, ``layout``
    (:class:`~segmentation.dicom.decode.PixelLayout`), ``calibration``, ``frame_status``
    (one :class:`FrameStatus` per frame), ``failures`` (frame index -> reason), ``source``
    (file path or None), ``codec_usage`` (frames per decoder).
    """

    def __init__(
        self,
        dataset: Dataset,
        layout: PixelLayout,
        pixel_source: _PixelSource,
        calibration: Calibration,
        *,
        source: Path | None = None,
    ) -> None:
        """Built by :func:`open_run`; not meant to be called directly."""
        self.dataset = dataset
        self.kind = InputKind.IMAGE
        self.layout = layout
        self.calibration = calibration
        self.source = source
        self.frame_status: list[FrameStatus] = [FrameStatus.PENDING] * layout.number_of_frames
        self.failures: dict[int, str] = {}
        self._pixels = pixel_source
        self._codec = FrameCodec(layout)

    # -- identity and geometry -------------------------------------------------------------
    @property
    def number_of_frames(self) -> int:
        """Frames in the object (1 when NumberOfFrames is absent)."""
        return self.layout.number_of_frames

    @property
    def rows(self) -> int:
        """Rows of every frame."""
        return self.layout.rows

    @property
    def columns(self) -> int:
        """Columns of every frame."""
        return self.layout.columns

    @property
    def bits_stored(self) -> int:
        """Bit depth of the returned frames: values lie in [0, 2**bits_stored - 1]."""
        return self.layout.output_bits

    @property
    def dtype(self) -> np.dtype:
        """dtype of the returned frames (uint8 up to 8 bits, else uint16)."""
        return self.layout.output_dtype

    @property
    def sop_instance_uid(self) -> str:
        """SOP Instance UID of the source object."""
        return str(self.dataset.SOPInstanceUID)

    @property
    def sop_class_uid(self) -> str:
        """SOP Class UID of the source object."""
        return str(self.dataset.SOPClassUID)

    @property
    def study_instance_uid(self) -> str:
        """Study Instance UID (outputs go in this study)."""
        return str(self.dataset.StudyInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        """Series Instance UID of the source object."""
        return str(self.dataset.get("SeriesInstanceUID", ""))

    @property
    def transfer_syntax(self) -> UID:
        """Transfer syntax of the Pixel Data."""
        return self.layout.transfer_syntax

    @property
    def codec_usage(self) -> dict[str, int]:
        """Frames decoded so far per decoder ("native", plugin name or "gdcm-direct")."""
        return dict(self._codec.used)

    @property
    def decoded_frames(self) -> int:
        """How many frames have been decoded successfully."""
        return sum(1 for s in self.frame_status if s is FrameStatus.DECODED)

    def __repr__(self) -> str:
        return (
            f"ProjectionRun(sop_instance_uid={self.sop_instance_uid!r}, "
            f"frames={self.number_of_frames}, size={self.rows}x{self.columns}, "
            f"transfer_syntax={self.transfer_syntax.name!r}, "
            f"calibration={self.calibration.source.value!r})"
        )

    # -- frames ------------------------------------------------------------------------------
    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.number_of_frames:
            raise IndexError(f"frame index {index} out of range 0..{self.number_of_frames - 1}")

    def _record_failure(self, index: int, reason: str) -> None:
        self.frame_status[index] = FrameStatus.FAILED
        self.failures[index] = reason
        logger.warning("%s frame %d failed: %s", self.sop_instance_uid, index, reason)

    def _decode(self, index: int, encoded: bytes) -> np.ndarray:
        try:
            frame = self._codec.decode(encoded)
        except DicomDecodeError as exc:
            self._record_failure(index, str(exc))
            raise DicomDecodeError(f"{self.sop_instance_uid} frame {index}: {exc}") from None
        self.frame_status[index] = FrameStatus.DECODED
        self.failures.pop(index, None)
        return frame

    def read_frame(self, index: int) -> np.ndarray:
        """Decode frame ``index`` (0-based).

        Returns a (rows, columns) uint8/uint16 array (see :mod:`segmentation.dicom.decode`).
        Raises IndexError for an index out of range and DicomDecodeError when this frame
        cannot be read or decoded (recorded in ``failures``; other frames stay readable).
        """
        self._check_index(index)
        with self._pixels.open() as stream:
            if self.layout.is_encapsulated:
                try:
                    encoded = get_frame(
                        stream,
                        index,
                        number_of_frames=self.number_of_frames,
                        extended_offsets=_extended_offsets(self.dataset),
                    )
                except (ValueError, EOFError, struct.error) as exc:
                    self._record_failure(index, f"cannot locate the frame: {exc}")
                    raise DicomDecodeError(
                        f"{self.sop_instance_uid} frame {index}: cannot locate the frame: {exc}"
                    ) from None
            else:
                size = self.layout.frame_bytes
                start = index * size
                if self._pixels.length is not None:
                    size = max(0, min(size, self._pixels.length - start))
                stream.seek(self._pixels.offset + start)
                encoded = stream.read(size)
        return self._decode(index, encoded)

    def iter_frames(self, indices: Sequence[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index, frame)`` for every frame (or those in ``indices``), one at a time.

        Frames that fail are logged, recorded in ``frame_status``/``failures`` and skipped, so
        the rest of the run is still processed. Only one decoded frame is held at a time.
        """
        wanted = range(self.number_of_frames) if indices is None else sorted(set(indices))
        for index in wanted:
            self._check_index(index)
        if not self.layout.is_encapsulated:
            for index in wanted:
                try:
                    frame = self.read_frame(index)
                except DicomDecodeError:
                    continue
                yield index, frame
            return
        yield from self._iter_encapsulated(set(wanted))

    def _iter_encapsulated(self, wanted: set[int]) -> Iterator[tuple[int, np.ndarray]]:
        seen = 0
        with self._pixels.open() as stream:
            frames = generate_frames(
                stream,
                number_of_frames=self.number_of_frames,
                extended_offsets=_extended_offsets(self.dataset),
            )
            while seen < self.number_of_frames:
                try:
                    encoded = next(frames)
                except StopIteration:
                    break
                except (ValueError, EOFError, struct.error) as exc:
                    for index in range(seen, self.number_of_frames):
                        if index in wanted:
                            self._record_failure(index, f"encapsulated data unreadable: {exc}")
                    return
                index, seen = seen, seen + 1
                if index not in wanted:
                    continue
                try:
                    frame = self._decode(index, encoded)
                except DicomDecodeError:
                    continue
                yield index, frame
        for index in range(seen, self.number_of_frames):
            if index in wanted:
                self._record_failure(index, "frame missing from the encapsulated Pixel Data")


def _extended_offsets(ds: Dataset) -> tuple[bytes, bytes] | None:
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        return ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths
    return None


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return UID(str(ts))
    if ds.original_encoding == (True, True):
        return ImplicitVRLittleEndian
    if ds.original_encoding == (False, False):
        return ExplicitVRBigEndian
    return ExplicitVRLittleEndian


def _read_pixel_header(stream: BinaryIO, transfer_syntax: UID) -> tuple[int, str, int] | None:
    """Parse the element header at the stream position: (tag, VR, value length) or None at EOF."""
    little = transfer_syntax != ExplicitVRBigEndian
    implicit = transfer_syntax == ImplicitVRLittleEndian
    head = stream.read(8)
    if len(head) < 8:
        return None
    endian = "<" if little else ">"
    group, element = struct.unpack(f"{endian}HH", head[:4])
    tag = (group << 16) | element
    if implicit:
        (length,) = struct.unpack("<L", head[4:])
        return tag, "OW", length
    vr = head[4:6]
    if vr in _LONG_VRS:
        extra = stream.read(4)
        if len(extra) < 4:
            return None
        (length,) = struct.unpack(f"{endian}L", extra)
    else:
        (length,) = struct.unpack(f"{endian}H", head[6:8])
    return tag, vr.decode("ascii", "replace"), length


def _header_copy(ds: Dataset) -> Dataset:
    """A copy of ``ds`` without pixel data elements (top-level elements are shared)."""
    header = Dataset()
    for element in ds:
        if element.tag not in _PIXEL_TAGS:
            header.add(element)
    header.file_meta = getattr(ds, "file_meta", Dataset())
    header.preamble = getattr(ds, "preamble", None)
    header.set_original_encoding(*ds.original_encoding, ds.original_character_set)
    return header


def _check_kind(header: Dataset) -> None:
    kind = classify(header)
    if kind is InputKind.NON_IMAGE:
        raise NonImageObjectError(explain(header))
    if kind is not InputKind.IMAGE:
        raise UnsupportedObjectError(explain(header))


def _open_dataset(ds: Dataset, default_spacing_mm: float | Sequence[float] | None) -> ProjectionRun:
    header = _header_copy(ds)
    _check_kind(header)
    if "PixelData" not in ds:
        raise DicomDecodeError(f"{ds.get('SOPInstanceUID', '?')}: image object has no Pixel Data")
    ts = _transfer_syntax(ds)
    element = ds["PixelData"]
    layout = PixelLayout.from_dataset(header, ts, pixel_vr=str(element.VR).split(" ")[0])
    value = element.value
    pixels = _PixelSource(path=None, buffer=bytes(value), offset=0, length=len(value))
    return _finish(header, layout, pixels, default_spacing_mm, source=None)


def _finish(
    header: Dataset,
    layout: PixelLayout,
    pixels: _PixelSource,
    default_spacing_mm: float | Sequence[float] | None,
    *,
    source: Path | None,
) -> ProjectionRun:
    if not layout.is_encapsulated and pixels.length is not None:
        available = pixels.length // max(layout.frame_bytes, 1)
        if available < layout.number_of_frames:
            logger.warning(
                "%s: native Pixel Data holds %d of %d frames",
                header.get("SOPInstanceUID", "?"), available, layout.number_of_frames,
            )
    calibration = calibrate(
        header, number_of_frames=layout.number_of_frames, default_spacing_mm=default_spacing_mm
    )
    run = ProjectionRun(header, layout, pixels, calibration, source=source)
    logger.info(
        "opened %s: %d frame(s) %dx%d, %s, %d bits, calibration %s",
        run.sop_instance_uid, run.number_of_frames, run.rows, run.columns,
        run.transfer_syntax.name, run.bits_stored, calibration.source.value,
    )
    return run


def open_run(
    source: str | Path | Dataset,
    *,
    default_spacing_mm: float | Sequence[float] | None = None,
    force: bool = False,
) -> ProjectionRun:
    """Open a projection X-ray image (file path or dataset) for frame-by-frame reading.

    Takes a file path (the Pixel Data stays on disk and is read per frame) or a dataset in
    memory (e.g. from a C-STORE), an optional configured default pixel spacing (calibration
    rule 6) and ``force`` to accept files without the DICM preamble/prefix.
    Returns a :class:`ProjectionRun`.
    Raises NonImageObjectError (an UnsupportedObjectError) for objects without pixels (dose
    reports, presentation states), UnsupportedObjectError for other images, and
    DicomDecodeError for unreadable files, missing Pixel Data or an unsupported pixel layout.
    """
    if isinstance(source, Dataset):
        return _open_dataset(source, default_spacing_mm)
    path = Path(source)
    if not path.is_file():
        raise DicomDecodeError(f"{path}: no such file")
    try:
        with path.open("rb") as stream:
            header = pydicom.dcmread(stream, stop_before_pixels=True, force=force)
            for _ in header.iterall():  # convert every value now: a flipped VR or bad value fails here,
                pass                    # not later while the outputs copy the patient and study module
            ts = _transfer_syntax(header)
            _check_kind(header)
            if ts == DeflatedExplicitVRLittleEndian:
                logger.info("%s: deflated transfer syntax, reading it in memory", path.name)
                return _open_dataset(pydicom.dcmread(path, force=force), default_spacing_mm)
            parsed = _read_pixel_header(stream, ts)
            value_offset = stream.tell()
    except InvalidDicomError as exc:
        raise DicomDecodeError(f"{path}: not a DICOM file ({exc}); force=True reads files without a preamble") from None
    except DICOM_PARSE_ERRORS as exc:
        raise DicomDecodeError(f"{path}: cannot read the DICOM header: {type(exc).__name__}: {exc}") from None
    if parsed is None or parsed[0] not in _PIXEL_TAGS:
        raise DicomDecodeError(f"{path}: image object has no Pixel Data")
    tag, vr, length = parsed
    if tag != _PIXEL_DATA_TAG:
        raise DicomDecodeError(f"{path}: float Pixel Data ({tag:08X}) is not supported")
    try:  # the pixel module's values are converted here, lazily: a flipped VR surfaces now
        layout = PixelLayout.from_dataset(header, ts, pixel_vr=vr)
    except DICOM_PARSE_ERRORS as exc:
        raise DicomDecodeError(f"{path}: cannot read the image pixel module: {type(exc).__name__}: {exc}") from None
    if layout.is_encapsulated != (length == _UNDEFINED):
        raise DicomDecodeError(
            f"{path}: Pixel Data length {'undefined' if length == _UNDEFINED else length} does "
            f"not match transfer syntax {ts.name}"
        )
    file_length = path.stat().st_size - value_offset
    pixels = _PixelSource(
        path=path,
        buffer=None,
        offset=value_offset,
        length=None if length == _UNDEFINED else min(length, file_length),
    )
    return _finish(header, layout, pixels, default_spacing_mm, source=path)
