"""Importer for DICOM X-ray runs annotated by DICOM Segmentation objects (SEG).

Every file under the source folder (any name, recursively) is read as DICOM; files that are not
DICOM are skipped. Each SEG is paired with its source images through its own references
(:mod:`.dicom_seg`); every referenced source instance becomes one run of the data set, and every
source frame that a SEG frame references becomes one frame (``frames="segmented"``, default).
With ``frames="all"`` every frame of a paired source is imported and frames without a SEG frame
get an empty mask (a SEG made with ``omit_empty_frames`` leaves empty frames out).

Frames are decoded with :func:`segmentation.dicom.reader.open_run` (MONOCHROME2 convention,
its calibration rules) when that module is present and accepts the object, else with pydicom
(MONOCHROME1 inverted, signed values offset); frames of more than 8 stored bits are scaled
linearly to 0-255 and colour is converted to gray. A frame that cannot be decoded is an error.
Pixel spacing is ``spacing_mm`` when set, else the reader's calibration (or, on the pydicom
path, PixelSpacing, else ImagerPixelSpacing divided by EstimatedRadiographicMagnificationFactor,
else ImagerPixelSpacing), else the paper's 0.390625 mm with a warning.

Patient ids: ``patient_ids="pseudonym"`` (default) numbers patients ``P001``, ``P002``... in the
order of the SHA-256 of their PatientID (StudyInstanceUID when PatientID is empty), so the data
set carries no identifying value; ``"dicom"`` uses the PatientID itself (characters other than
letters, digits, ``-`` and ``_`` replaced by ``_``). Runs are numbered ``run01``... per patient in
(StudyDate, SeriesNumber, InstanceNumber, SOP Instance UID) order; ``dataset.json`` lists, per run,
the source and SEG UIDs.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import iter_pixels
from tqdm import tqdm

from tavicore.config import setting
from tavidata.errors import DatasetError
from tavidata.format import PAPER_PIXEL_SPACING_MM
from training.importers.dicom_seg import SegmentationMasks, is_segmentation, read_segmentation
from training.importers.naming import skip_unmatched
from training.importers.output import ImportResult, staged_writer
from training.importers.supervisely import DEFAULT_CLASS_NAMES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DicomImportConfig:
    """Options of :func:`import_dicom` (YAML section ``dicom``)."""

    segment_labels: tuple[str, ...] = setting(DEFAULT_CLASS_NAMES, doc="segment labels of the aortic root")
    frames: Literal["segmented", "all"] = setting("segmented", doc="which source frames to import")
    patient_ids: Literal["pseudonym", "dicom"] = setting("pseudonym", doc="patient id in the data set")
    spacing_mm: float | None = setting(None, gt=0.0, le=10.0, doc="fixed spacing (mm); None: header")
    skip_unmatched: bool = setting(False, doc="skip (warn) SEGs whose source is missing")
    name: str = setting("", doc="data-set name (default: the source folder name)")


@dataclass(frozen=True)
class _Source:
    path: Path
    header: Dataset

    @property
    def uid(self) -> str:
        return str(self.header.SOPInstanceUID)

    @property
    def number_of_frames(self) -> int:
        return int(self.header.get("NumberOfFrames") or 1)


def _scan(src: Path, progress: bool) -> tuple[dict[str, _Source], list[Path], list[Path]]:
    images: dict[str, _Source] = {}
    segs: list[Path] = []
    skipped: list[Path] = []
    files = sorted(p for p in src.rglob("*") if p.is_file())
    for path in tqdm(files, desc="scan", unit="file", disable=not progress):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            logger.debug("not read as DICOM: %s (%s)", path, exc)
            skipped.append(path)
            continue
        if is_segmentation(header):
            segs.append(path)
        elif "Rows" in header and "SOPInstanceUID" in header:
            uid = str(header.SOPInstanceUID)
            if uid in images:
                logger.warning("%s: same SOP Instance UID %s as %s; ignored", path, uid, images[uid].path)
                continue
            images[uid] = _Source(path, header)
        else:
            logger.debug("%s: not an image or SEG (SOP Class %s); ignored", path, header.get("SOPClassUID"))
    return images, segs, skipped


def _header_spacing(header: Dataset) -> tuple[tuple[float, float] | None, str]:
    shared = header.get("SharedFunctionalGroupsSequence") or []
    measures = shared[0].get("PixelMeasuresSequence") if shared else None
    if "PixelSpacing" in header:
        return (float(header.PixelSpacing[0]), float(header.PixelSpacing[1])), "PixelSpacing"
    if measures and "PixelSpacing" in measures[0]:
        ps = measures[0].PixelSpacing
        return (float(ps[0]), float(ps[1])), "PixelMeasuresSequence"
    if "ImagerPixelSpacing" in header:
        ips = (float(header.ImagerPixelSpacing[0]), float(header.ImagerPixelSpacing[1]))
        factor = header.get("EstimatedRadiographicMagnificationFactor")
        if factor:
            return (ips[0] / float(factor), ips[1] / float(factor)), "ImagerPixelSpacing/magnification"
        return ips, "ImagerPixelSpacing"
    return None, "none"


def to_uint8(frame: np.ndarray, bits_stored: int, *, signed: bool = False,
             monochrome1: bool = False) -> np.ndarray:
    """Convert a decoded frame to 8-bit gray, MONOCHROME2 convention.

    Colour (H, W, 3) is converted to luma; ``signed`` values are moved to offset binary
    (+ 2**(bits_stored-1)); frames that are not uint8 are scaled linearly from
    [0, 2**bits_stored - 1] to [0, 255]; ``monochrome1`` frames are inverted.
    """
    if frame.ndim == 3:
        frame = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    if frame.dtype != np.uint8:
        values = frame.astype(np.float64)
        if signed:
            values = values + 2 ** (bits_stored - 1)
        frame = np.clip(np.rint(values * 255.0 / (2**bits_stored - 1)), 0, 255).astype(np.uint8)
    if monochrome1:
        frame = 255 - frame
    return frame


def _open_run() -> Callable[..., Any] | None:
    """:func:`segmentation.dicom.reader.open_run`, or None when that module is absent."""
    try:
        from segmentation.dicom.reader import open_run
    except ModuleNotFoundError as exc:
        if exc.name not in ("segmentation.dicom", "segmentation.dicom.reader"):
            raise
        return None
    return open_run


#: (0-based frame index, uint8 frame, spacing (row, col) mm or None, spacing source label)
Frame = tuple[int, np.ndarray, tuple[float, float] | None, str]


def _frames_with_reader(open_run: Callable[..., Any], source: _Source, indices: list[int]) -> Iterator[Frame] | None:
    """Frames through :func:`segmentation.dicom.reader.open_run`; None when it refuses the SOP class."""
    from segmentation.errors import DicomDecodeError, UnsupportedObjectError

    try:
        run = open_run(source.path)
    except UnsupportedObjectError as exc:
        logger.info("%s: reader refused it (%s); decoding with pydicom", source.uid, exc)
        return None
    except DicomDecodeError as exc:
        raise DatasetError(f"{source.path}: {exc}") from exc
    cal = run.calibration
    label = f"reader:{cal.source.value}"
    bits = int(run.bits_stored)

    def generate() -> Iterator[Frame]:
        for index, frame in run.iter_frames(indices):
            spacing = cal.spacing_for(index)
            yield index, to_uint8(np.asarray(frame), bits), (tuple(spacing) if spacing else None), label
        if run.failures:  # the reader skips frames it cannot decode: an import must not
            bad = {i: r for i, r in run.failures.items() if i in set(indices)}
            if bad:
                raise DatasetError(f"{source.path}: frames cannot be decoded: {bad}")

    return generate()


def _frames(source: _Source, indices: list[int]) -> Iterator[Frame]:
    """Yield (0-based index, uint8 frame, spacing or None, spacing source) for ``indices``."""
    indices = sorted(set(indices))
    open_run = _open_run()
    frames = _frames_with_reader(open_run, source, indices) if open_run is not None else None
    if frames is not None:
        yield from frames
        return
    header = source.header
    spacing, label = _header_spacing(header)
    bits = int(header.get("BitsStored") or 8)
    signed = int(header.get("PixelRepresentation") or 0) == 1
    mono1 = str(header.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    try:
        for index, frame in zip(indices, iter_pixels(source.path, indices=indices)):
            yield index, to_uint8(frame, bits, signed=signed, monochrome1=mono1), spacing, label
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        raise DatasetError(f"{source.path}: pixel data cannot be decoded: {exc}") from exc


def _patient_keys(sources: list[_Source], mode: str) -> dict[str, str]:
    """Map each source UID to its data-set patient id."""
    keys = {s.uid: str(s.header.get("PatientID") or s.header.get("StudyInstanceUID") or s.uid)
            for s in sources}
    if mode == "dicom":
        return {uid: re.sub(r"[^A-Za-z0-9_-]", "_", key) for uid, key in keys.items()}
    order = sorted(set(keys.values()), key=lambda k: hashlib.sha256(k.encode("utf-8")).hexdigest())
    pseudonym = {key: f"P{i + 1:03d}" for i, key in enumerate(order)}
    return {uid: pseudonym[key] for uid, key in keys.items()}


def _pair(images: dict[str, _Source], seg_paths: list[Path], config: DicomImportConfig,
          skipped: list[Path]) -> list[tuple[_Source, SegmentationMasks]]:
    pairs: dict[str, tuple[_Source, SegmentationMasks]] = {}
    for seg_path in seg_paths:
        seg = read_segmentation(seg_path, config.segment_labels)
        missing = [uid for uid in seg.sources if uid not in images]
        if missing:
            msg = f"{seg_path}: referenced source instance(s) {missing} not found under the source folder"
            skip_unmatched(msg, seg_path, skip=config.skip_unmatched, skipped=skipped, what="SEGs")
            continue
        for uid in seg.sources:
            source = images[uid]
            if uid in pairs:
                raise DatasetError(
                    f"{seg_path}: source {uid} is also segmented by {pairs[uid][1].path}; "
                    "keep one SEG per source instance"
                )
            rows, cols = int(source.header.Rows), int(source.header.Columns)
            if (seg.rows, seg.columns) != (rows, cols):
                raise DatasetError(
                    f"{seg_path}: SEG size {seg.columns}x{seg.rows} differs from source "
                    f"{source.path} size {cols}x{rows}"
                )
            bad = [n for (u, n) in seg.frames if u == uid and not 1 <= n <= source.number_of_frames]
            if bad:
                raise DatasetError(
                    f"{seg_path}: references frame(s) {sorted(bad)} of {source.path}, which has "
                    f"{source.number_of_frames} frame(s)"
                )
            pairs[uid] = (source, seg)
    return list(pairs.values())


def _run_order(source: _Source) -> tuple:
    h = source.header
    return (str(h.get("StudyDate") or ""), int(h.get("SeriesNumber") or 0),
            int(h.get("InstanceNumber") or 0), source.uid)


def import_dicom(
    src: str | Path,
    out: str | Path,
    config: DicomImportConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> ImportResult:
    """Import DICOM runs with their SEGs from ``src`` into a data set at ``out``.

    Raises:
        DatasetError: no SEG found, a SEG whose source is missing (unless skipped), a source
            segmented twice, size or frame-number mismatches, undecodable pixel data.
    """
    config = config or DicomImportConfig()
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"{src}: source folder not found")
    images, seg_paths, skipped = _scan(src, progress)
    if not seg_paths:
        raise DatasetError(f"{src}: no DICOM Segmentation (SEG) files found ({len(images)} images)")
    pairs = _pair(images, seg_paths, config, skipped)
    unpaired = len(images) - len(pairs)
    if unpaired:
        logger.warning("%d image instance(s) have no SEG and are not imported", unpaired)
    patient_of = _patient_keys([s for s, _ in pairs], config.patient_ids)
    pairs.sort(key=lambda p: (patient_of[p[0].uid], _run_order(p[0])))

    runs_meta: list[dict] = []
    frames_total = 0
    run_counter: dict[str, int] = {}
    meta = {"source": {"importer": "dicom", "path": str(src.resolve()), "frames": config.frames,
                       "segment_labels": list(config.segment_labels)}}
    with staged_writer(out, name=config.name or src.resolve().name, meta=meta,
                       overwrite=overwrite) as writer:
        for source, seg in tqdm(pairs, desc="import", unit="run", disable=not progress):
            patient = patient_of[source.uid]
            run_counter[patient] = run_counter.get(patient, 0) + 1
            run_id = f"run{run_counter[patient]:02d}"
            numbers = sorted(n for (u, n) in seg.frames if u == source.uid)
            if config.frames == "all":
                numbers = list(range(1, source.number_of_frames + 1))
            spacing_label = "config"
            written = 0
            for index, frame, spacing, label in _frames(source, [n - 1 for n in numbers]):
                mask = seg.frames.get((source.uid, index + 1))
                if mask is None:
                    mask = np.zeros(frame.shape, dtype=bool)
                if config.spacing_mm is not None:
                    spacing = (config.spacing_mm, config.spacing_mm)
                elif spacing is None:
                    logger.warning("%s: no pixel spacing in the header; using %g mm",
                                   source.uid, PAPER_PIXEL_SPACING_MM)
                    spacing, label = (PAPER_PIXEL_SPACING_MM, PAPER_PIXEL_SPACING_MM), "default"
                if config.spacing_mm is None:
                    spacing_label = label
                writer.add(patient, run_id, index, frame, mask, spacing_mm=spacing)
                written += 1
            if written != len(numbers):
                raise DatasetError(f"{source.path}: decoded {written} of {len(numbers)} wanted frames")
            frames_total += written
            runs_meta.append({
                "patient_id": patient, "run_id": run_id, "frames": len(numbers),
                "study_instance_uid": str(source.header.get("StudyInstanceUID", "")),
                "series_instance_uid": str(source.header.get("SeriesInstanceUID", "")),
                "sop_instance_uid": source.uid, "seg_sop_instance_uid": seg.sop_instance_uid,
                "spacing_source": spacing_label,
            })
            logger.info("run %s/%s: %d frames from %s (SEG %s)", patient, run_id, len(numbers),
                        source.uid, seg.sop_instance_uid)
        writer.meta["runs"] = runs_meta
    return ImportResult(root=Path(out), frames=frames_total, patients=len(run_counter),
                        runs=len(runs_meta), skipped=tuple(skipped),
                        notes=(f"{unpaired} image instance(s) without SEG not imported",) if unpaired else ())
