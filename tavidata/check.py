"""Checking a data set: counts, mask coverage, and every problem with the path it concerns.

:func:`check_dataset` reads every frame and mask once and reports (:class:`ProblemKind`):
missing image/mask files, unreadable files, image/mask size mismatches, non-binary masks (with
the values seen), duplicate frames (identical decoded pixels, both paths named; flagged loudly
when the copies belong to different patients), empty or mismatched patient ids, frames listed
twice in the manifest, invalid pixel spacings, and a ``splits.json`` that does not fit.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from tavidata.errors import DatasetError, SplitError
from tavidata.format import Dataset, FrameRecord
from tavidata.splits import SPLITS_FILENAME, check_splits, load_splits

logger = logging.getLogger(__name__)


class ProblemKind(StrEnum):
    """Kinds of problems :func:`check_dataset` reports."""

    MANIFEST = "manifest"
    MISSING_IMAGE = "missing_image"
    MISSING_MASK = "missing_mask"
    UNREADABLE = "unreadable"
    SIZE_MISMATCH = "size_mismatch"
    NON_BINARY_MASK = "non_binary_mask"
    DUPLICATE_FRAME = "duplicate_frame"
    PATIENT_ID = "patient_id"
    DUPLICATE_RECORD = "duplicate_record"
    BAD_SPACING = "bad_spacing"
    SPLITS = "splits"


@dataclass(frozen=True)
class Problem:
    """One problem: its kind, the file it concerns, and a readable message."""

    kind: ProblemKind
    path: str
    message: str


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`."""

    root: Path
    name: str = ""
    frames: int = 0
    patients: int = 0
    runs: int = 0
    frames_per_patient: dict[str, float] = field(default_factory=dict)
    mask_coverage_pct: float | None = None
    empty_masks: int = 0
    problems: list[Problem] = field(default_factory=list)

    def add(self, kind: ProblemKind, path: str | Path, message: str) -> None:
        """Record one problem."""
        self.problems.append(Problem(kind, str(path), message))

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view."""
        return {
            "root": str(self.root), "name": self.name, "frames": self.frames,
            "patients": self.patients, "runs": self.runs,
            "frames_per_patient": self.frames_per_patient,
            "mask_coverage_pct": self.mask_coverage_pct, "empty_masks": self.empty_masks,
            "ok": self.ok,
            "problems": [{"kind": p.kind.value, "path": p.path, "message": p.message} for p in self.problems],
        }

    def summary(self) -> str:
        """A readable multi-line summary listing every problem."""
        fpp = self.frames_per_patient
        lines = [f"data set: {self.root} ({self.name or 'unnamed'})",
                 f"frames: {self.frames}   patients: {self.patients}   runs: {self.runs}"]
        if fpp:
            lines.append(f"frames per patient: min {fpp['min']:g}  median {fpp['median']:g}  "
                         f"max {fpp['max']:g}")
        if self.mask_coverage_pct is not None:
            lines.append(f"mask coverage: mean {self.mask_coverage_pct:.2f} % of the frame "
                         f"({self.empty_masks} empty masks)")
        if self.ok:
            lines.append("problems: none")
        else:
            by_kind: dict[str, int] = {}
            for p in self.problems:
                by_kind[p.kind.value] = by_kind.get(p.kind.value, 0) + 1
            lines.append(f"problems: {len(self.problems)} ("
                         + ", ".join(f"{k}: {n}" for k, n in sorted(by_kind.items())) + ")")
            lines.extend(f"  [{p.kind.value}] {p.path}: {p.message}" for p in self.problems)
        return "\n".join(lines)


def _read(path: Path) -> np.ndarray | None:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _check_identity(report: CheckReport, dataset: Dataset, manifest: str) -> None:
    add = report.add
    seen_ids: dict[str, int] = {}
    seen_keys: dict[tuple[str, str, int], str] = {}
    seen_images: dict[Path, str] = {}
    for line, rec in enumerate(dataset.records, start=2):
        where = f"{manifest}:{line}"
        if rec.frame_id in seen_ids:
            add(ProblemKind.DUPLICATE_RECORD, where,
                f"frame {rec.frame_id!r} is also listed on line {seen_ids[rec.frame_id]}")
        seen_ids.setdefault(rec.frame_id, line)
        key = (rec.patient_id, rec.run_id, rec.frame_index)
        if seen_keys.setdefault(key, rec.frame_id) != rec.frame_id:
            add(ProblemKind.DUPLICATE_RECORD, where, f"patient/run/frame {key} is also frame {seen_keys[key]!r}")
        if seen_images.setdefault(rec.image, rec.frame_id) != rec.frame_id:
            add(ProblemKind.DUPLICATE_RECORD, rec.image, f"image file also used by frame {seen_images[rec.image]!r}")
        if not rec.patient_id.strip():
            add(ProblemKind.PATIENT_ID, where, f"frame {rec.frame_id!r} has an empty patient id")
        else:
            for label, path in (("image", rec.image), ("mask", rec.mask)):
                if path is not None and path.parent.name != rec.patient_id:
                    add(ProblemKind.PATIENT_ID, path, f"{label} is in folder {path.parent.name!r} but the "
                        f"manifest gives patient {rec.patient_id!r}")
        if not all(np.isfinite(s) and s > 0 for s in rec.spacing_mm):
            add(ProblemKind.BAD_SPACING, where, f"pixel spacing {rec.spacing_mm} must be finite and > 0")


def _check_image(report: CheckReport, rec: FrameRecord, hashes: dict[str, FrameRecord]) -> np.ndarray | None:
    if not rec.image.is_file():
        report.add(ProblemKind.MISSING_IMAGE, rec.image, f"image of frame {rec.frame_id!r} is missing")
        return None
    image = _read(rec.image)
    if image is None:
        report.add(ProblemKind.UNREADABLE, rec.image, "image file cannot be decoded")
        return None
    digest = hashlib.sha1(image.tobytes() + str(image.shape).encode()).hexdigest()
    first = hashes.setdefault(digest, rec)
    if first is not rec and first.image != rec.image:
        other = "ANOTHER PATIENT " if first.patient_id != rec.patient_id else ""
        report.add(ProblemKind.DUPLICATE_FRAME, rec.image, f"identical pixels to {other}{first.image}")
    return image


def _check_pixels(report: CheckReport, rec: FrameRecord, hashes: dict[str, FrameRecord],
                  coverage: list[float]) -> None:
    image = _check_image(report, rec, hashes)
    if rec.mask is None:
        report.add(ProblemKind.MISSING_MASK, rec.image, f"frame {rec.frame_id!r} has no mask in the manifest")
        return
    if not rec.mask.is_file():
        report.add(ProblemKind.MISSING_MASK, rec.mask, f"mask of frame {rec.frame_id!r} is missing")
        return
    mask = _read(rec.mask)
    if mask is None:
        report.add(ProblemKind.UNREADABLE, rec.mask, "mask file cannot be decoded")
        return
    values = np.unique(mask)
    seen = set(values.tolist())
    if mask.ndim != 2 or not (seen <= {0, 255} or seen <= {0, 1}):
        more = f" ... ({len(values)} values)" if len(values) > 10 else ""
        layout = "" if mask.ndim == 2 else f" ({mask.shape[2]} channels)"
        report.add(ProblemKind.NON_BINARY_MASK, rec.mask,
                   f"mask is not binary 0/255{layout}: values {values[:10].tolist()}{more}")
    if image is not None and image.shape[:2] != mask.shape[:2]:
        report.add(ProblemKind.SIZE_MISMATCH, rec.mask,
                   f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image size "
                   f"{image.shape[1]}x{image.shape[0]} ({rec.image})")
    fg = mask > 0 if mask.ndim == 2 else mask.max(axis=2) > 0
    coverage.append(100.0 * float(fg.mean()))


def check_dataset(root: str | Path, *, progress: bool = False) -> CheckReport:
    """Check the data set at ``root``; never raises for problems inside it (they are reported).

    Raises:
        DatasetError: ``root`` does not exist.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: data-set folder not found")
    report = CheckReport(root=root)
    try:
        dataset = Dataset.load(root)
    except DatasetError as exc:
        report.add(ProblemKind.MANIFEST, root / "manifest.csv", str(exc))
        return report
    report.name = str(dataset.meta.get("name", ""))
    report.frames = len(dataset)
    counts = dataset.frame_counts()
    report.patients = len(counts)
    report.runs = len({(r.patient_id, r.run_id) for r in dataset})
    if counts:
        values = list(counts.values())
        report.frames_per_patient = {"min": min(values), "median": float(statistics.median(values)),
                                     "max": max(values)}
    _check_identity(report, dataset, str(root / "manifest.csv"))
    hashes: dict[str, FrameRecord] = {}
    coverage: list[float] = []
    checked: set[tuple[Path, Path | None]] = set()
    for rec in tqdm(dataset.records, desc="check", unit="frame", disable=not progress):
        if (rec.image, rec.mask) in checked:  # listed twice: reported once as duplicate_record
            continue
        checked.add((rec.image, rec.mask))
        _check_pixels(report, rec, hashes, coverage)
    if coverage:
        report.mask_coverage_pct = float(np.mean(coverage))
        report.empty_masks = sum(1 for c in coverage if c == 0.0)
    splits_path = root / SPLITS_FILENAME
    if splits_path.exists():
        try:
            check_splits(load_splits(splits_path), dataset)
        except SplitError as exc:
            report.add(ProblemKind.SPLITS, splits_path, str(exc))
    logger.info("checked %s: %d frames, %d problems", root, report.frames, len(report.problems))
    return report
