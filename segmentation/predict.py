"""Batch prediction on files: image files, data-set folders or DICOM runs -> masks, overlays, CSV.

:func:`predict_paths` writes into ``out_dir``::

    masks/<name>.png       predicted mask (0 / 255) at the frame's original size
    overlays/<name>.png    the frame with the predicted outline (green) and, when known, the
                           ground-truth outline (red)
    predictions.csv        one row per frame: area (px, mm^2), confidence, and with ground
                           truth Dice, IoU, ASSD and HD95 (mm); quality = P(Dice >= 0.8) from
                           the folder's QC data ("not available" without), flagged, qc_reason
                           (the "no root here" reason: the mask is then empty; docs/qc.md)
    seg/<SOPInstanceUID>.seg.dcm   one DICOM Segmentation per DICOM input run
    summary.json           counts, backend and aggregate metrics

Inputs: image files (PNG/JPEG/TIFF/BMP, 8 or 16 bit), folders of them, taviseg data-set
folders (``dataset.json``; masks become ground truth) and DICOM files (by extension ``.dcm`` or
the ``DICM`` marker), read with :func:`segmentation.dicom.reader.open_run` (frames, bit depth
and calibrated pixel spacing).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from segmentation import metrics
from segmentation.errors import InferenceError, UnsupportedObjectError
from segmentation.inference.config import InferenceConfig
from segmentation.inference.engine import InferenceEngine
from segmentation.inference.preprocess import normalize_frames

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
CSV_COLUMNS = (
    "source", "frame_index", "name", "rows", "columns", "spacing_row_mm", "spacing_col_mm",
    "spacing_source", "area_px", "area_mm2", "confidence", "low_confidence",
    "dice", "iou", "assd_mm", "hd95_mm", "quality", "flagged", "qc_reason",
)
#: Upper bound on files collected from one input folder (a typo'd "/" must not run forever).
MAX_FILES_PER_FOLDER = 100_000
PRED_COLOUR = (0, 255, 0)  # BGR green
GT_COLOUR = (0, 0, 255)  # BGR red


@dataclass
class FrameItem:
    """One frame to segment, with what is known about it."""

    source: str
    frame_index: int
    name: str
    image: np.ndarray
    spacing_mm: tuple[float, float] | None = None
    spacing_source: str = ""
    gt: np.ndarray | None = None
    bits_stored: int | None = None


@dataclass
class PredictSummary:
    """What :func:`predict_paths` did."""

    out_dir: Path
    csv_path: Path
    frames: int = 0
    sources: int = 0
    skipped: list[str] = field(default_factory=list)
    low_confidence: int = 0
    frames_with_ground_truth: int = 0
    mean_dice: float | None = None
    median_dice: float | None = None
    median_assd_mm: float | None = None
    median_hd95_mm: float | None = None
    seg_files: list[Path] = field(default_factory=list)
    quality_available: bool = False
    flagged: int = 0
    no_root: int = 0
    median_quality: float | None = None
    verdicts: dict[str, dict] = field(default_factory=dict)
    backend: str = ""
    seconds: float = 0.0

    def to_json_dict(self) -> dict:
        """JSON-serialisable view (paths as strings)."""
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["csv_path"] = str(self.csv_path)
        d["seg_files"] = [str(p) for p in self.seg_files]
        return d


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def classify_inputs(paths: Sequence[str | Path]) -> list[tuple[str, Path]]:
    """Expand input paths into ``(kind, path)`` with kind ``image``, ``dataset`` or ``dicom``.

    Raises:
        InferenceError: a path does not exist or is not a supported file.
    """
    out: list[tuple[str, Path]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            if (path / "dataset.json").is_file():
                out.append(("dataset", path))
                continue
            files = []
            for i, f in enumerate(sorted(path.rglob("*"))):
                if i >= MAX_FILES_PER_FOLDER:
                    raise InferenceError(f"{path}: more than {MAX_FILES_PER_FOLDER} files; give a narrower folder")
                if f.is_file() and (f.suffix.lower() in IMAGE_SUFFIXES or _is_dicom(f)):
                    files.append(f)
            if not files:
                raise InferenceError(f"{path}: no image or DICOM files found")
            out.extend(("image" if f.suffix.lower() in IMAGE_SUFFIXES else "dicom", f) for f in files)
        elif path.is_file():
            if path.suffix.lower() in IMAGE_SUFFIXES:
                out.append(("image", path))
            elif _is_dicom(path):
                out.append(("dicom", path))
            else:
                raise InferenceError(
                    f"{path}: unsupported input; give image files ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                    "DICOM files or data-set folders"
                )
        else:
            raise InferenceError(f"{path}: no such file or folder")
    return out


def _read_image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InferenceError(f"{path}: unreadable image file")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if img.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    return img


def _iter_dataset(root: Path) -> Iterator[FrameItem]:
    from tavidata.format import Dataset

    ds = Dataset.load(root)
    for rec in ds.records:
        yield FrameItem(
            source=str(root), frame_index=rec.frame_index, name=rec.frame_id.replace("/", "_"),
            image=Dataset.read_image(rec), spacing_mm=tuple(rec.spacing_mm), spacing_source="dataset manifest",
            gt=Dataset.read_mask(rec) if rec.mask is not None else None,
        )


def _iter_images(path: Path, spacing_mm: tuple[float, float] | None, gt_dir: Path | None) -> Iterator[FrameItem]:
    gt = None
    if gt_dir is not None and (gt_dir / path.name).is_file():
        gt = _read_image(gt_dir / path.name) > 0
    yield FrameItem(
        source=str(path), frame_index=0, name=path.stem, image=_read_image(path), spacing_mm=spacing_mm,
        spacing_source="given" if spacing_mm else "", gt=gt,
    )


class _DicomRun:
    """Frames of one DICOM run plus what is needed to write its SEG afterwards."""

    def __init__(self, path: Path, default_spacing_mm: tuple[float, float] | None) -> None:
        try:
            from segmentation.dicom.reader import open_run
        except ImportError as exc:
            raise InferenceError(
                f"{path}: DICOM input needs segmentation.dicom.reader.open_run, which is not "
                f"available in this build ({exc})"
            ) from exc
        self.path = path
        self.run = open_run(path, default_spacing_mm=default_spacing_mm)
        self.indices: list[int] = []
        self.masks: list[np.ndarray] = []
        self.probabilities: list[np.ndarray] = []
        self.quality: list[float] = []
        self.flagged: list[bool] = []
        self.reasons: list[str | None] = []

    def frames(self) -> Iterator[FrameItem]:
        cal = self.run.calibration
        spacing = tuple(cal.spacing_mm) if cal.spacing_mm is not None else None
        frame_spacing = cal.frame_spacing_mm
        for index, frame in self.run.iter_frames():
            sp = tuple(frame_spacing[index]) if frame_spacing else spacing
            yield FrameItem(
                source=str(self.path), frame_index=index, name=f"{self.path.stem}_{index:04d}", image=frame,
                spacing_mm=sp, spacing_source=cal.source.value, bits_stored=self.run.bits_stored,
            )


def _overlay(image: np.ndarray, mask: np.ndarray, gt: np.ndarray | None, bits_stored: int | None) -> np.ndarray:
    gray = (normalize_frames(image, bits_stored=bits_stored) * 255.0 + 0.5).astype(np.uint8)
    canvas = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    thickness = max(1, round(min(image.shape) / 300))
    if gt is not None:
        contours, _ = cv2.findContours(gt.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, GT_COLOUR, thickness)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(canvas, contours, -1, PRED_COLOUR, thickness)
    return canvas


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}"


def _write_png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array):
        raise InferenceError(f"{path}: could not write image")


def _chunks(items: Iterable[FrameItem], size: int) -> Iterator[list[FrameItem]]:
    chunk: list[FrameItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_paths(
    inputs: Sequence[str | Path],
    model_folder: str | Path,
    out_dir: str | Path,
    config: InferenceConfig | None = None,
    *,
    spacing_mm: tuple[float, float] | None = None,
    gt_dir: str | Path | None = None,
    write_seg: bool = True,
    seg_series_number: int = 9001,
    progress: bool = False,
    engine: InferenceEngine | None = None,
) -> PredictSummary:
    """Segment every frame of ``inputs`` and write masks, overlays, CSV (and SEG for DICOM).

    Args:
        inputs: Image files, folders, data-set folders or DICOM files.
        model_folder: Trained-model folder.
        out_dir: Output folder (created).
        config: Inference settings (default: ``InferenceConfig()``).
        spacing_mm: Pixel spacing (row, column) for image files (unknown otherwise: area and
            distances then stay empty); DICOM default spacing when the header has none.
        gt_dir: Folder of ground-truth masks named like the image files.
        write_seg: Write a DICOM SEG per DICOM run (needs segmentation.dicom.seg).
        seg_series_number: Series Number of the SEG objects.
        progress: Show a tqdm progress bar on stderr.
        engine: A ready engine (else one is built from ``model_folder`` and ``config``).

    Returns:
        A :class:`PredictSummary` (also written as ``summary.json``).

    Raises:
        InferenceError / ModelError / DicomError: unusable inputs, model or output folder.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    config = config or InferenceConfig()
    items = classify_inputs(inputs)
    engine = engine or InferenceEngine.from_config(model_folder, config)
    out = Path(out_dir)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    summary = PredictSummary(out_dir=out, csv_path=out / "predictions.csv", backend=engine.backend_name)
    from segmentation.inference.engine import Prediction
    from segmentation.qc.assess import QualityAssessor
    from segmentation.qc.store import NOT_AVAILABLE

    assessor = QualityAssessor.from_engine(engine)
    summary.quality_available = assessor.available
    qualities: list[float] = []
    gt_path = Path(gt_dir) if gt_dir is not None else None
    used_names: set[str] = set()
    dices: list[float] = []
    assds: list[float] = []
    hd95s: list[float] = []
    batch = max(1, engine.batch_size)
    bar = tqdm(total=None, unit="frame", disable=not progress, desc="predict")
    with summary.csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()

        def handle(chunk: list[FrameItem], run: _DicomRun | None) -> None:
            bits = chunk[0].bits_stored
            qcp = None
            if assessor.available:  # the assessor's masks: "no root here" frames are empty
                qcp = assessor.predict([c.image for c in chunk], bits_stored=bits, spacing_mm=chunk[0].spacing_mm,
                                       sequence=run is not None)
                pred = Prediction(masks=qcp.masks, confidence=qcp.confidence,
                                  low_confidence=qcp.confidence < np.float32(engine.confidence_config.flag_below))
            else:
                pred = engine.predict([c.image for c in chunk], bits_stored=bits)
            for k, item in enumerate(chunk):
                mask = pred.masks[k]
                name = item.name
                n = 1
                while name in used_names:
                    name, n = f"{item.name}_{n}", n + 1
                used_names.add(name)
                _write_png(out / "masks" / f"{name}.png", mask.astype(np.uint8) * 255)
                _write_png(out / "overlays" / f"{name}.png", _overlay(item.image, mask, item.gt, item.bits_stored))
                row = {
                    "source": item.source, "frame_index": item.frame_index, "name": name,
                    "rows": mask.shape[0], "columns": mask.shape[1],
                    "spacing_row_mm": _fmt(item.spacing_mm[0]) if item.spacing_mm else "",
                    "spacing_col_mm": _fmt(item.spacing_mm[1]) if item.spacing_mm else "",
                    "spacing_source": item.spacing_source,
                    "area_px": int(mask.sum()),
                    "area_mm2": _fmt(metrics.area_mm2(mask, item.spacing_mm)) if item.spacing_mm else "",
                    "confidence": _fmt(float(pred.confidence[k])),
                    "low_confidence": int(bool(pred.low_confidence[k])),
                    "dice": "", "iou": "", "assd_mm": "", "hd95_mm": "",
                    "quality": NOT_AVAILABLE if qcp is None else _fmt(float(qcp.quality[k])),
                    "flagged": "" if qcp is None else int(bool(qcp.flagged[k])),
                    "qc_reason": "" if qcp is None else (qcp.reasons[k] or ""),
                }
                if qcp is not None:
                    qualities.append(float(qcp.quality[k]))
                    summary.flagged += int(bool(qcp.flagged[k]))
                    summary.no_root += int(qcp.reasons[k] is not None)
                    if run is not None:
                        run.quality.append(float(qcp.quality[k]))
                        run.flagged.append(bool(qcp.flagged[k]))
                        run.reasons.append(qcp.reasons[k])
                summary.low_confidence += int(bool(pred.low_confidence[k]))
                if item.gt is not None:
                    if item.gt.shape != mask.shape:
                        raise InferenceError(
                            f"{item.source} frame {item.frame_index}: ground truth {item.gt.shape} "
                            f"does not match the frame {mask.shape}"
                        )
                    d = metrics.dice(mask, item.gt)
                    row["dice"], row["iou"] = _fmt(d), _fmt(metrics.iou(mask, item.gt))
                    dices.append(d)
                    if item.spacing_mm:
                        a, h = metrics.surface_metrics(mask, item.gt, item.spacing_mm)
                        row["assd_mm"], row["hd95_mm"] = _fmt(a), _fmt(h)
                        assds.append(a)
                        hd95s.append(h)
                    summary.frames_with_ground_truth += 1
                writer.writerow(row)
                if run is not None:
                    run.indices.append(item.frame_index)
                    run.masks.append(mask)
                summary.frames += 1
                bar.update(1)

        images = [p for kind, p in items if kind == "image"]
        if images:  # batched across files
            frames = (f for p in images for f in _iter_images(p, spacing_mm, gt_path))
            for chunk in _chunks(frames, batch):
                handle(chunk, None)
            summary.sources += len(images)
        for kind, path in items:
            if kind == "dataset":
                for chunk in _chunks(_iter_dataset(path), batch):
                    handle(chunk, None)
                summary.sources += 1
            elif kind == "dicom":
                try:
                    run = _DicomRun(path, spacing_mm)
                except UnsupportedObjectError as exc:
                    logger.warning("skipping %s: %s", path.name, exc)
                    summary.skipped.append(f"{path}: {exc}")
                    continue
                for chunk in _chunks(run.frames(), batch):
                    handle(chunk, run)
                summary.sources += 1
                if run.quality:
                    from segmentation.qc.verdict import run_verdict

                    summary.verdicts[str(path)] = run_verdict(
                        np.asarray(run.quality), np.asarray(run.flagged), run.reasons).to_json_dict()
                if write_seg and run.masks:
                    seg = _write_seg(run, out, engine, seg_series_number)
                    if seg is not None:
                        summary.seg_files.append(seg)
    bar.close()
    if dices:
        summary.mean_dice = float(np.mean(dices))
        summary.median_dice = float(np.median(dices))
    if qualities:
        summary.median_quality = float(np.median(qualities))
    if assds and not all(math.isnan(a) for a in assds):
        summary.median_assd_mm = float(np.nanmedian(assds))
        summary.median_hd95_mm = float(np.nanmedian(hd95s))
    summary.seconds = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary.to_json_dict(), indent=2) + "\n", encoding="utf-8")
    logger.info(
        "predicted %d frames from %d sources in %.1f s (%s); %d low-confidence",
        summary.frames, summary.sources, summary.seconds, summary.backend, summary.low_confidence,
    )
    return summary


def _write_seg(run: _DicomRun, out: Path, engine: InferenceEngine, series_number: int) -> Path | None:
    try:
        from segmentation.dicom.seg import build_segmentation
    except ImportError as exc:
        logger.warning(
            "DICOM SEG output is not available in this build (segmentation.dicom.seg: %s); "
            "masks, overlays and CSV were written for %s", exc, run.run.sop_instance_uid,
        )
        return None
    from tavicore import __version__

    spec = engine.spec
    seg = build_segmentation(
        run.run.dataset,
        np.stack(run.masks),
        frame_numbers=[i + 1 for i in run.indices],
        algorithm_name=f"taviseg {spec.architecture}/{spec.encoder}",
        algorithm_version=__version__,
        series_number=series_number,
        series_description="Aortic root (taviseg)",
    )
    (out / "seg").mkdir(exist_ok=True)
    path = out / "seg" / f"{run.run.sop_instance_uid}.seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    logger.info("wrote SEG for %s (%d frames)", run.run.sop_instance_uid, len(run.masks))
    return path
