"""Shape of a predicted mask, in millimetres and fractions of the frame.

:func:`shape_features` measures one 2-D mask: area (mm^2 and fraction of the frame), elongation
(ratio of the principal axes' lengths), solidity (area / convex-hull area), number of
components of the thresholded map (before post-processing kept the largest), contact with the
frame border (fraction of the frame's edge pixels inside the mask), width in mm (the mask's
extent across its long axis) and the centroid's position as fractions of the frame height and
width. :class:`ShapeStats` holds the mean and spread of these features over training masks and
turns a new mask's features into one implausibility score (root-mean-square z-score).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from segmentation.qc.errors import QualityError

logger = logging.getLogger(__name__)

#: Features compared with the training masks (the shape implausibility score).
SHAPE_KEYS = (
    "log_area_mm2", "area_frac", "elongation", "solidity", "border_contact",
    "log_width_mm", "centroid_row_frac", "centroid_col_frac",
)
#: Implausibility given to an empty mask (its shape cannot be compared).
EMPTY_SHAPE_Z = 10.0
#: Components smaller than this fraction of the frame are ignored when counting.
MIN_COMPONENT_FRAC = 0.002


def count_components(mask: np.ndarray, *, min_frac: float = MIN_COMPONENT_FRAC) -> int:
    """8-connected foreground components of ``mask`` covering at least ``min_frac`` of the frame."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return 0
    return int(np.sum(stats[1:, cv2.CC_STAT_AREA] >= min_frac * m.size))


def shape_features(
    mask: np.ndarray,
    spacing_mm: Sequence[float] | None = None,
    *,
    raw_mask: np.ndarray | None = None,
) -> dict[str, float]:
    """Shape features of one mask (definitions in the module docstring).

    Args:
        mask: ``(H, W)`` bool, the final (post-processed) mask.
        spacing_mm: (row, column) pixel spacing; None: 1 mm per pixel (areas then in px).
        raw_mask: The thresholded map before post-processing, for the component count
            (default: ``mask``).

    Returns:
        A dict with ``area_mm2``, ``area_frac``, ``elongation``, ``solidity``, ``components``,
        ``border_contact``, ``width_mm``, ``centroid_row_frac``, ``centroid_col_frac`` and the
        logs used for comparison (``log_area_mm2``, ``log_width_mm``). An empty mask gives
        zeros (elongation 1, solidity 1, centroid 0.5).

    Raises:
        QualityError: a mask that is not 2-D, or a non-positive spacing.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise QualityError(f"mask must be 2-D, got shape {m.shape}")
    sr, sc = (1.0, 1.0) if spacing_mm is None else (float(spacing_mm[0]), float(spacing_mm[1]))
    if not (sr > 0 and sc > 0 and math.isfinite(sr) and math.isfinite(sc)):
        raise QualityError(f"pixel spacing must be positive, got {spacing_mm!r}")
    h, w = m.shape
    n = int(m.sum())
    comps = count_components(m if raw_mask is None else raw_mask)
    if n == 0:
        return {
            "area_mm2": 0.0, "area_frac": 0.0, "elongation": 1.0, "solidity": 1.0,
            "components": float(comps), "border_contact": 0.0, "width_mm": 0.0,
            "centroid_row_frac": 0.5, "centroid_col_frac": 0.5,
            "log_area_mm2": 0.0, "log_width_mm": 0.0,
        }
    rows, cols = np.nonzero(m)
    y = rows.astype(np.float64) * sr
    x = cols.astype(np.float64) * sc
    cov = np.cov(np.stack([y, x])) if n > 1 else np.zeros((2, 2))
    evals, evecs = np.linalg.eigh(cov)
    evals = np.clip(evals, 1e-9, None)
    elongation = float(math.sqrt(evals[1] / evals[0]))
    # width: extent of the mask across its long axis (projection on the minor axis), in mm
    minor = evecs[:, 0]
    proj = (y - y.mean()) * minor[0] + (x - x.mean()) * minor[1]
    width_mm = float(np.percentile(proj, 99) - np.percentile(proj, 1)) + min(sr, sc)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull_area = cv2.contourArea(cv2.convexHull(np.concatenate(contours))) if contours else 0.0
    solidity = float(min(1.0, n / hull_area)) if hull_area > 0 else 1.0
    edge = np.concatenate([m[0], m[-1], m[1:-1, 0], m[1:-1, -1]])
    area_mm2 = n * sr * sc
    return {
        "area_mm2": float(area_mm2),
        "area_frac": float(n / m.size),
        "elongation": elongation,
        "solidity": solidity,
        "components": float(comps),
        "border_contact": float(edge.mean()),
        "width_mm": width_mm,
        "centroid_row_frac": float(rows.mean() / max(1, h - 1)),
        "centroid_col_frac": float(cols.mean() / max(1, w - 1)),
        "log_area_mm2": float(math.log(area_mm2)),
        "log_width_mm": float(math.log(width_mm)),
    }


@dataclass(frozen=True)
class ShapeStats:
    """Mean and standard deviation of :data:`SHAPE_KEYS` over training masks."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    area_frac_range: tuple[float, float]
    fov_mm: float = 0.0
    keys: tuple[str, ...] = SHAPE_KEYS

    @classmethod
    def fit(cls, features: Sequence[Mapping[str, float]], *, fov_mm: float = 0.0) -> ShapeStats:
        """Fit on the features of non-empty training masks; ``fov_mm``: the training frames'
        median field of view (used for frames whose pixel spacing is unknown; 0 = unknown).

        Raises:
            QualityError: fewer than 2 non-empty masks.
        """
        rows = [f for f in features if f["area_frac"] > 0]
        if len(rows) < 2:
            raise QualityError(f"need >= 2 non-empty training masks to fit shape statistics, got {len(rows)}")
        x = np.array([[f[k] for k in SHAPE_KEYS] for f in rows], np.float64)
        std = np.maximum(x.std(axis=0), 1e-3 * np.maximum(1.0, np.abs(x.mean(axis=0))))
        area = x[:, SHAPE_KEYS.index("area_frac")]
        return cls(mean=tuple(map(float, x.mean(axis=0))), std=tuple(map(float, std)),
                   area_frac_range=(float(area.min()), float(area.max())), fov_mm=float(fov_mm))

    def spacing_for(self, shape: tuple[int, int], spacing_mm: Sequence[float] | None) -> tuple[float, float] | None:
        """``spacing_mm``, or for an uncalibrated frame the training field of view over its size."""
        if spacing_mm is not None:
            return (float(spacing_mm[0]), float(spacing_mm[1]))
        if self.fov_mm > 0:
            s = self.fov_mm / max(shape)
            return (s, s)
        return None

    def z_scores(self, features: Mapping[str, float]) -> dict[str, float]:
        """``(value - mean) / std`` per key."""
        return {k: (float(features[k]) - m) / s for k, m, s in zip(self.keys, self.mean, self.std)}

    def implausibility(self, features: Mapping[str, float]) -> float:
        """Root-mean-square z-score of ``features`` (:data:`EMPTY_SHAPE_Z` for an empty mask)."""
        if features["area_frac"] <= 0:
            return EMPTY_SHAPE_Z
        z = np.array(list(self.z_scores(features).values()))
        return float(min(EMPTY_SHAPE_Z, math.sqrt(float(np.mean(z * z)))))

    def to_json_dict(self) -> dict:
        """JSON form (stored in qc.json)."""
        return {"keys": list(self.keys), "mean": list(self.mean), "std": list(self.std),
                "area_frac_range": list(self.area_frac_range), "fov_mm": self.fov_mm}

    @classmethod
    def from_json_dict(cls, data: Mapping) -> ShapeStats:
        """Inverse of :meth:`to_json_dict`.

        Raises:
            QualityError: other keys than :data:`SHAPE_KEYS` or lengths that disagree.
        """
        keys = tuple(data["keys"])
        if keys != SHAPE_KEYS or len(data["mean"]) != len(keys) or len(data["std"]) != len(keys):
            raise QualityError(f"shape statistics keys {keys} do not match {SHAPE_KEYS}")
        lo, hi = data["area_frac_range"]
        return cls(mean=tuple(map(float, data["mean"])), std=tuple(map(float, data["std"])),
                   area_frac_range=(float(lo), float(hi)), fov_mm=float(data.get("fov_mm", 0.0)))
