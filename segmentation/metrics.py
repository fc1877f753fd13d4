"""Segmentation metrics: confusion counts first, reducers after; surface distances in mm.

Overlap (the paper's definitions, ``eps = 1e-7``)::

    Dice = (2 TP + eps) / (2 TP + FP + FN + eps)       IoU = (TP + eps) / (TP + FP + FN + eps)

Surface distances use the boundary of each mask (foreground pixels with a 4-connected
background neighbour, pixels on the image edge included) and the Euclidean distance transform
with the pixel spacing ``(row, column)`` in mm (anisotropic spacing supported):

* ASSD: mean of all boundary-to-nearest-boundary distances, both directions pooled;
* HD95: the larger of the two directed 95th percentiles (the MedPy ``hd95`` definition).

Both come from the same directed distances (one distance transform per boundary):
:func:`surface_metrics` computes them together; :func:`assd_mm` and :func:`hd95_mm` are for a
caller that needs only one.

Empty masks: both empty -> Dice 1, IoU 1, ASSD 0, HD95 0. One empty -> Dice and IoU ~ 0
(``eps / (n + eps)`` with n the other mask's pixel count, i.e. < 1e-7), ASSD and HD95 NaN
(undefined: there is no surface to measure to); aggregate with ``np.nanmean``/``nanmedian``
and report the count of NaN frames.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from segmentation.errors import MetricError

logger = logging.getLogger(__name__)

DICE_EPS = 1e-7
_CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class Confusion:
    """Pixel counts of a binary prediction against ground truth (arrays for per-frame counts)."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred).astype(bool, copy=False)
    g = np.asarray(gt).astype(bool, copy=False)
    if p.shape != g.shape:
        raise MetricError(f"prediction shape {p.shape} != ground-truth shape {g.shape}")
    return p, g


def confusion(pred: np.ndarray, gt: np.ndarray, *, per_frame: bool = False) -> Confusion:
    """TP/FP/FN/TN pixel counts.

    Args:
        pred, gt: Binary masks of the same shape (2-D, or ``(N, H, W)``).
        per_frame: For ``(N, H, W)`` input, count per frame (arrays of length N).

    Raises:
        MetricError: the shapes differ.
    """
    p, g = _pair(pred, gt)
    axes = tuple(range(1, p.ndim)) if per_frame else None
    tp = np.sum(p & g, axis=axes, dtype=np.int64)
    fp = np.sum(p & ~g, axis=axes, dtype=np.int64)
    fn = np.sum(~p & g, axis=axes, dtype=np.int64)
    tn = np.sum(~p & ~g, axis=axes, dtype=np.int64)
    return Confusion(np.asarray(tp), np.asarray(fp), np.asarray(fn), np.asarray(tn))


def dice_from_counts(c: Confusion, eps: float = DICE_EPS) -> np.ndarray:
    """Dice from counts (element-wise): ``(2TP + eps) / (2TP + FP + FN + eps)``."""
    return (2.0 * c.tp + eps) / (2.0 * c.tp + c.fp + c.fn + eps)


def iou_from_counts(c: Confusion, eps: float = DICE_EPS) -> np.ndarray:
    """IoU (Jaccard) from counts (element-wise): ``(TP + eps) / (TP + FP + FN + eps)``."""
    return (c.tp + eps) / (c.tp + c.fp + c.fn + eps)


def dice(pred: np.ndarray, gt: np.ndarray, eps: float = DICE_EPS) -> float:
    """Dice similarity coefficient of two masks (pooled over all pixels given).

    Raises:
        MetricError: the shapes differ.
    """
    return float(dice_from_counts(confusion(pred, gt), eps))


def iou(pred: np.ndarray, gt: np.ndarray, eps: float = DICE_EPS) -> float:
    """Intersection over union of two masks.

    Raises:
        MetricError: the shapes differ.
    """
    return float(iou_from_counts(confusion(pred, gt), eps))


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a 2-D mask: foreground with a 4-connected background neighbour
    (the image outside the frame counts as background)."""
    m = np.asarray(mask, dtype=bool)
    return m & ~ndimage.binary_erosion(m, structure=_CROSS, border_value=0)


def _check_spacing(spacing_mm: Sequence[float]) -> tuple[float, float]:
    if len(spacing_mm) != 2 or not all(float(s) > 0 for s in spacing_mm):
        raise MetricError(f"spacing_mm must be two positive numbers (row, column), got {spacing_mm!r}")
    return float(spacing_mm[0]), float(spacing_mm[1])


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing_mm: Sequence[float]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Directed boundary distances in mm: (pred boundary -> gt boundary, gt -> pred).

    Returns:
        The two arrays, or None when either mask is empty.

    Raises:
        MetricError: 2-D masks of different shapes, or bad spacing.
    """
    p, g = _pair(pred, gt)
    if p.ndim != 2:
        raise MetricError(f"surface distances need 2-D masks, got shape {p.shape}")
    spacing = _check_spacing(spacing_mm)
    if not p.any() or not g.any():
        return None
    bp, bg = boundary(p), boundary(g)
    dist_to_g = ndimage.distance_transform_edt(~bg, sampling=spacing)
    dist_to_p = ndimage.distance_transform_edt(~bp, sampling=spacing)
    return dist_to_g[bp], dist_to_p[bg]


class SurfaceMetrics(NamedTuple):
    """ASSD and HD95 of one frame, in mm (both 0 if both masks are empty, NaN if exactly one is)."""

    assd_mm: float
    hd95_mm: float


def surface_metrics(pred: np.ndarray, gt: np.ndarray, spacing_mm: Sequence[float]) -> SurfaceMetrics:
    """ASSD and HD95 in mm from one pair of distance transforms (:func:`surface_distances`).

    ASSD pools both directed distances; HD95 is the larger of the two directed 95th percentiles.

    Raises:
        MetricError: shapes differ, not 2-D, or bad spacing.
    """
    p, g = _pair(pred, gt)
    d = surface_distances(p, g, spacing_mm)
    if d is None:
        v = 0.0 if not p.any() and not g.any() else float("nan")
        return SurfaceMetrics(v, v)
    pg, gp = d
    return SurfaceMetrics(
        assd_mm=float((pg.sum() + gp.sum()) / (pg.size + gp.size)),
        hd95_mm=float(max(np.percentile(pg, 95), np.percentile(gp, 95))),
    )


def assd_mm(pred: np.ndarray, gt: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Average symmetric surface distance in mm (0 if both empty, NaN if exactly one is);
    use :func:`surface_metrics` when HD95 is wanted too.

    Raises:
        MetricError: shapes differ, not 2-D, or bad spacing.
    """
    return surface_metrics(pred, gt, spacing_mm).assd_mm


def hd95_mm(pred: np.ndarray, gt: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm: max of the two directed 95th percentiles
    (0 if both empty, NaN if exactly one is); use :func:`surface_metrics` when ASSD is wanted too.

    Raises:
        MetricError: shapes differ, not 2-D, or bad spacing.
    """
    return surface_metrics(pred, gt, spacing_mm).hd95_mm


def area_mm2(mask: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Area of a 2-D mask in mm^2 (pixel count x row spacing x column spacing).

    Raises:
        MetricError: bad spacing.
    """
    sr, sc = _check_spacing(spacing_mm)
    return float(np.count_nonzero(mask)) * sr * sc
