"""Reading a DICOM Segmentation (SEG) into masks keyed by the source frames it annotates.

Pairing follows the SEG's own references: ``ReferencedSeriesSequence`` ->
``ReferencedInstanceSequence`` lists the source SOP Instance UIDs, and each SEG frame's
``DerivationImageSequence`` -> ``SourceImageSequence`` (per-frame, else shared functional
groups) names its source instance and ``ReferencedFrameNumber`` (1-based; absent means frame 1
of a single-frame source). The segment of a frame is its ``SegmentIdentificationSequence``
(per-frame, else shared).

Pixel data: BINARY frames are 1-bit packed (pydicom unpacks them); FRACTIONAL frames count as
foreground where value >= MaximumFractionalValue / 2; LABELMAP frames where the value is one of
the selected segment numbers. Masks of several selected segments on one source frame are merged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import SegmentationStorage

from tavidata.errors import DatasetError
from training.importers.naming import label_matches

logger = logging.getLogger(__name__)

#: Segmentation Storage SOP Class UID.
SEG_SOP_CLASS_UID = SegmentationStorage


@dataclass(frozen=True)
class SegmentationMasks:
    """Masks of the selected segments of one SEG, by (source SOP Instance UID, frame number)."""

    sop_instance_uid: str
    path: Path | None
    rows: int
    columns: int
    segment_numbers: tuple[int, ...]
    sources: tuple[str, ...]
    frames: dict[tuple[str, int], np.ndarray]


def is_segmentation(ds: Dataset) -> bool:
    """Whether a dataset (header is enough) is a DICOM SEG."""
    return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS_UID


def select_segments(ds: Dataset, labels: Sequence[str], where: str) -> tuple[int, ...]:
    """Segment numbers whose label or property type matches ``labels``.

    A SEG with a single segment uses it whatever its label.

    Raises:
        DatasetError: no segments, or several segments none of which matches (lists the labels).
    """
    segments = list(ds.get("SegmentSequence") or [])
    if not segments:
        raise DatasetError(f"{where}: SEG has no SegmentSequence")
    chosen, seen = [], []
    for item in segments:
        names = [str(item.get("SegmentLabel", ""))]
        for code in item.get("SegmentedPropertyTypeCodeSequence") or []:
            names.append(str(code.get("CodeMeaning", "")))
        seen.append(" / ".join(n for n in names if n))
        if any(label_matches(n, labels) for n in names if n):
            chosen.append(int(item.SegmentNumber))
    if chosen:
        return tuple(chosen)
    if len(segments) == 1:
        logger.info("%s: single segment %r used as the aortic root", where, seen[0])
        return (int(segments[0].SegmentNumber),)
    raise DatasetError(f"{where}: no segment labelled like {list(labels)}; segments: {seen}")


def referenced_sources(ds: Dataset) -> tuple[str, ...]:
    """Source SOP Instance UIDs listed in the SEG's ``ReferencedSeriesSequence``."""
    uids: list[str] = []
    for series in ds.get("ReferencedSeriesSequence") or []:
        for inst in series.get("ReferencedInstanceSequence") or []:
            uid = str(inst.get("ReferencedSOPInstanceUID", ""))
            if uid and uid not in uids:
                uids.append(uid)
    return tuple(uids)


def _group(ds: Dataset, index: int, keyword: str) -> Sequence | None:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if index < len(per_frame) and keyword in per_frame[index]:
        return per_frame[index].get(keyword)
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    if shared and keyword in shared[0]:
        return shared[0].get(keyword)
    return None


def _frame_refs(ds: Dataset, index: int, where: str) -> list[tuple[str, int]]:
    refs: list[tuple[str, int]] = []
    for deriv in _group(ds, index, "DerivationImageSequence") or []:
        for src in deriv.get("SourceImageSequence") or []:
            uid = str(src.get("ReferencedSOPInstanceUID", ""))
            numbers = src.get("ReferencedFrameNumber")
            if numbers is None:
                frame_numbers = [1]
            elif isinstance(numbers, (int, float, str)):
                frame_numbers = [int(numbers)]
            else:  # multi-valued ReferencedFrameNumber
                frame_numbers = [int(n) for n in numbers]
            refs.extend((uid, n) for n in frame_numbers if uid)
    if not refs:
        raise DatasetError(
            f"{where}: SEG frame {index + 1} names no source frame (no DerivationImageSequence/"
            "SourceImageSequence); cannot pair it with an X-ray frame"
        )
    return refs


def _frame_segment(ds: Dataset, index: int) -> int | None:
    ident = _group(ds, index, "SegmentIdentificationSequence")
    if not ident:
        return None
    return int(ident[0].ReferencedSegmentNumber)


def read_segmentation(
    source: str | Path | Dataset, labels: Sequence[str], *, path: Path | None = None
) -> SegmentationMasks:
    """Read a SEG file or dataset into :class:`SegmentationMasks` of the segments of ``labels``.

    Raises:
        DatasetError: not a SEG, unreadable/undecodable pixel data, a frame without source
            reference, or no matching segment.
    """
    if isinstance(source, Dataset):
        ds = source
    else:
        path = Path(source)
        try:
            ds = pydicom.dcmread(path)
        except (OSError, InvalidDicomError) as exc:
            raise DatasetError(f"{path}: unreadable DICOM file: {exc}") from exc
    where = str(path) if path else f"SEG {ds.get('SOPInstanceUID', '?')}"
    if not is_segmentation(ds):
        raise DatasetError(f"{where}: not a Segmentation (SOP Class {ds.get('SOPClassUID')})")
    numbers = select_segments(ds, labels, where)
    seg_type = str(ds.get("SegmentationType", "BINARY")).upper()
    try:
        pixels = ds.pixel_array
    except (ValueError, RuntimeError, NotImplementedError, AttributeError) as exc:
        raise DatasetError(f"{where}: SEG pixel data cannot be decoded: {exc}") from exc
    rows, cols = int(ds.Rows), int(ds.Columns)
    pixels = np.asarray(pixels).reshape(-1, rows, cols)
    if seg_type == "FRACTIONAL":
        fg = pixels >= float(ds.get("MaximumFractionalValue", 255)) / 2.0
    elif seg_type == "LABELMAP":
        fg = np.isin(pixels, numbers)
    else:
        fg = pixels > 0
    frames: dict[tuple[str, int], np.ndarray] = {}
    for i in range(fg.shape[0]):
        segment = _frame_segment(ds, i)
        if seg_type != "LABELMAP" and segment is not None and segment not in numbers:
            continue
        for key in _frame_refs(ds, i, where):
            frames[key] = frames[key] | fg[i] if key in frames else fg[i].copy()
    sources = tuple(dict.fromkeys([*referenced_sources(ds), *(uid for uid, _ in frames)]))
    logger.debug("SEG %s: %d source frames of %d instance(s)", ds.get("SOPInstanceUID"),
                 len(frames), len(sources))
    return SegmentationMasks(
        sop_instance_uid=str(ds.SOPInstanceUID), path=path, rows=rows, columns=cols,
        segment_numbers=numbers, sources=sources, frames=frames,
    )
