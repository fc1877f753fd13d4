"""The QC data of a model folder: ``qc.json`` (versioned) + ``qc.npz`` (feature statistics).

Layout, beside ``config.json``::

    <folder>/qc.json   {"format": "taviseg-qc", "format_version": 1, "calibrator": {...},
                        "shape": {...}, "gate": {...}, "flag_below": ..., "provenance": {...}}
    <folder>/qc.npz    mean, precision and sorted training distances of the encoder features

:func:`load_quality_model` returns None for a folder without ``qc.json`` (logged once per
folder: such a model still runs, its outputs say "quality not available"); a ``qc.json`` of
another format version, or one whose ``qc.npz`` is missing or does not fit, is an error naming
the file.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segmentation.errors import ModelError
from segmentation.qc.calibrator import Calibrator
from segmentation.qc.ood import FeatureGaussian
from segmentation.qc.shape import ShapeStats
from tavicore.fileio import write_atomic, write_json_atomic

logger = logging.getLogger(__name__)

QC_FORMAT = "taviseg-qc"
QC_FORMAT_VERSION = 1
QC_JSON = "qc.json"
QC_NPZ = "qc.npz"
#: What the quality estimate is the probability of.
TARGET = "P(frame Dice >= 0.8)"
#: Written where a model folder holds no QC data.
NOT_AVAILABLE = "not available"

_reported_missing: set[str] = set()


#: Shape implausibility (RMS z-score) past which an out-of-distribution frame's outline is no root.
DEFAULT_SHAPE_MAX = 2.5


@dataclass(frozen=True)
class Gate:
    """When a frame gets the "no root here" answer (an empty mask and the reason).

    ``ood_max``: encoder-feature distance beyond which the input is unlike any training frame;
    ``shape_max``: shape implausibility (RMS z-score against the training masks) beyond which
    an outline is unlike an aortic root. Distance alone never empties a mask: real frames are
    farther from any synthetic training set than held-out synthetic frames, and a plausible
    root on them must keep its outline (it is flagged instead). Only an input unlike the
    training frames whose outline is also unlike a root gets the "no root here" answer;
    ``area_frac_min``/``area_frac_max``: plausible predicted area as a fraction of the frame;
    ``contrast_min``: the outlined region must be at least this much darker than its ring.
    """

    ood_max: float
    area_frac_min: float
    area_frac_max: float
    contrast_min: float
    shape_max: float = DEFAULT_SHAPE_MAX

    def reason(self, ood: float, area_frac: float, contrast: float, shape: float = 0.0) -> str | None:
        """Why a frame gets no outline, or None when it keeps its mask (``shape``: implausibility)."""
        if ood > self.ood_max and shape > self.shape_max:
            return (f"input unlike the training frames (distance {ood:.1f} > {self.ood_max:.1f}) and outline "
                    f"unlike an aortic root (shape {shape:.1f} > {self.shape_max:.1f})")
        if area_frac <= 0.0:
            return "nothing segmented"
        if area_frac > self.area_frac_max:
            return f"implausible area: {100 * area_frac:.0f}% of the frame (max {100 * self.area_frac_max:.0f}%)"
        if area_frac < self.area_frac_min:
            return f"implausible area: {100 * area_frac:.2f}% of the frame (min {100 * self.area_frac_min:.2f}%)"
        if contrast < self.contrast_min:
            return f"no contrast: outlined region not darker than its surroundings ({contrast:.2f})"
        return None


@dataclass(frozen=True)
class QualityModel:
    """Everything the quality estimate needs, fitted for one model folder."""

    calibrator: Calibrator
    shape: ShapeStats
    ood: FeatureGaussian
    gate: Gate
    flag_below: float
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = QC_FORMAT_VERSION
    #: Frames whose encoder-feature distance exceeds this are flagged whatever their quality
    #: (beyond the range the calibrator was fitted on); inf: no such rule.
    ood_flag: float = math.inf

    def to_json_dict(self) -> dict[str, Any]:
        """The ``qc.json`` mapping."""
        return {
            "format": QC_FORMAT,
            "format_version": self.format_version,
            "target": TARGET,
            "flag_below": float(self.flag_below),
            "ood_flag": None if math.isinf(self.ood_flag) else float(self.ood_flag),
            "calibrator": self.calibrator.to_json_dict(),
            "shape": self.shape.to_json_dict(),
            "gate": {k: float(getattr(self.gate, k)) for k in ("ood_max", "area_frac_min", "area_frac_max",
                                                               "contrast_min", "shape_max")},
            "ood": {"file": QC_NPZ, "dims": int(self.ood.mean.shape[0]), "shrinkage": self.ood.shrinkage,
                    "train_frames": int(self.ood.train_distances.shape[0]),
                    "train_distance_p50": self.ood.train_quantile(0.5),
                    "train_distance_p99": self.ood.train_quantile(0.99)},
            "provenance": self.provenance,
        }


def save_quality_model(folder: str | Path, qc: QualityModel) -> Path:
    """Write ``qc.json`` and ``qc.npz`` into ``folder`` (atomically, npz first). Returns qc.json's path."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder}: not a model folder (no config.json); QC data go beside a model")

    def write_npz(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, mean=qc.ood.mean, precision=qc.ood.precision, train_distances=qc.ood.train_distances)

    write_atomic(folder / QC_NPZ, write_npz)
    write_json_atomic(folder / QC_JSON, qc.to_json_dict())
    logger.info("wrote QC data into %s (flag below %.3f)", folder, qc.flag_below)
    return folder / QC_JSON


def load_quality_model(folder: str | Path) -> QualityModel | None:
    """The folder's QC data, or None when it has none (logged once per folder).

    Raises:
        ModelError: unreadable or invalid ``qc.json``/``qc.npz`` (names the file and the problem),
            or another format version.
    """
    folder = Path(folder)
    path = folder / QC_JSON
    if not path.is_file():
        key = str(folder.resolve())
        if key not in _reported_missing:
            _reported_missing.add(key)
            logger.warning("%s: no QC data (%s); per-frame quality is %s", folder, QC_JSON, NOT_AVAILABLE)
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != QC_FORMAT:
        raise ModelError(f"{path}: format is {data.get('format') if isinstance(data, dict) else data!r}, "
                         f"expected {QC_FORMAT!r}")
    if data.get("format_version") != QC_FORMAT_VERSION:
        raise ModelError(f"{path}: QC format version {data.get('format_version')!r} is not supported; "
                         f"this taviseg reads version {QC_FORMAT_VERSION}")
    npz_path = folder / QC_NPZ
    try:
        with np.load(npz_path) as npz:
            ood = FeatureGaussian(mean=npz["mean"], precision=npz["precision"],
                                  train_distances=npz["train_distances"],
                                  shrinkage=float(data["ood"]["shrinkage"]))
        if ood.precision.shape != (ood.mean.shape[0],) * 2:
            raise ValueError(f"precision shape {ood.precision.shape} does not fit mean {ood.mean.shape}")
        gate = data["gate"]
        return QualityModel(
            calibrator=Calibrator.from_json_dict(data["calibrator"]),
            shape=ShapeStats.from_json_dict(data["shape"]),
            ood=ood,
            gate=Gate(ood_max=float(gate["ood_max"]), area_frac_min=float(gate["area_frac_min"]),
                      area_frac_max=float(gate["area_frac_max"]), contrast_min=float(gate["contrast_min"]),
                      shape_max=float(gate.get("shape_max", DEFAULT_SHAPE_MAX))),
            flag_below=float(data["flag_below"]),
            provenance=dict(data.get("provenance", {})),
            ood_flag=math.inf if data.get("ood_flag") is None else float(data["ood_flag"]),
        )
    except FileNotFoundError as exc:
        raise ModelError(f"{npz_path}: missing ({path} refers to it)") from exc
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise ModelError(f"{path} / {npz_path}: invalid QC data: {exc}") from exc
