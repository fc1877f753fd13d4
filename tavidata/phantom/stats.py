"""Image statistics of a frame and its root mask, to compare the phantom with real TAVI frames.

The figures the benchmark's description of real frames gives (1000-1024 px, 8-bit): frame mean
~130 and std ~36; the root 20-35 grey levels darker than its surroundings; the root covering
7-14 % of the frame, in the upper half and often leaving it at the top edge; a tube 43-86 mm wide.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import cv2
import numpy as np

logger = logging.getLogger(__name__)

#: Width of the ring around the mask used as "surroundings" (mm).
RING_MM = 8.0

#: Where real TAVI frames lie, measured at 1024x1024 (the ranges the phantom is built to land in;
#: BENCHMARK_SPEC.md gives the typical values inside them): field -> (low, high).
REAL_TAVI_RANGES: dict[str, tuple[float, float]] = {
    "mean": (110.0, 150.0),
    "std": (25.0, 45.0),
    "contrast": (15.0, 40.0),
    "area_fraction": (0.05, 0.15),
    "centroid_row_fraction": (0.0, 0.5),
    "width_mm": (40.0, 90.0),
}


@dataclass(frozen=True)
class FrameStats:
    """Statistics of one frame (grey levels, fractions, mm)."""

    mean: float
    std: float
    contrast: float
    area_fraction: float
    touches_top: bool
    centroid_row_fraction: float
    width_mm: float

    def as_dict(self) -> dict:
        """Field -> value."""
        return asdict(self)


def frame_stats(image: np.ndarray, mask: np.ndarray, spacing_mm: float) -> FrameStats:
    """Measure one frame.

    ``contrast`` is the mean grey level of a ring of :data:`RING_MM` around the mask minus the
    mean inside it (positive: the root is darker); ``width_mm`` is the median over rows of the
    largest inscribed-circle diameter of the mask (the tube width across its axis, whatever its
    tilt), NaN for an empty mask.

    Raises:
        ValueError: shapes differ or the spacing is not positive.
    """
    if image.shape != mask.shape or image.ndim != 2:
        raise ValueError(f"image {image.shape} and mask {mask.shape} must be equal 2-D shapes")
    if spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}")
    img = image.astype(np.float32)
    m = mask.astype(bool)
    if not m.any():
        return FrameStats(float(img.mean()), float(img.std()), float("nan"), 0.0, False, float("nan"), float("nan"))
    r = max(1, int(round(RING_MM / spacing_mm)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    ring = cv2.dilate(m.astype(np.uint8), kernel).astype(bool) & ~m
    contrast = float(img[ring].mean() - img[m].mean()) if ring.any() else float("nan")
    dist = cv2.distanceTransform(np.pad(m, 1).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    rows = dist.max(axis=1)
    rows = rows[rows > 0]
    width = float(np.median(2.0 * rows) * spacing_mm)
    ys = np.nonzero(m)[0]
    return FrameStats(
        mean=float(img.mean()), std=float(img.std()), contrast=contrast, area_fraction=float(m.mean()),
        touches_top=bool(m[0].any()), centroid_row_fraction=float(ys.mean() / m.shape[0]), width_mm=width,
    )


def summarize(stats: Iterable[FrameStats]) -> dict[str, dict[str, float]]:
    """Median, 5th and 95th percentiles of every field (touches_top: the fraction of frames)."""
    items = list(stats)
    out: dict[str, dict[str, float]] = {}
    if not items:
        return out
    for name in FrameStats.__dataclass_fields__:
        values = np.asarray([getattr(s, name) for s in items], np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        out[name] = {"median": float(np.median(values)), "p5": float(np.percentile(values, 5)),
                     "p95": float(np.percentile(values, 95))}
        if name == "touches_top":
            out[name]["fraction"] = float(values.mean())
    return out


def describe(summary: dict[str, dict[str, float]]) -> str:
    """One line: each field's median (5th-95th percentile) and the real frames' range beside it."""
    labels = {"mean": ("mean", "{:.0f}"), "std": ("std", "{:.0f}"), "contrast": ("root darker by", "{:.0f}"),
              "area_fraction": ("root area", "{:.1%}"), "centroid_row_fraction": ("root centre row", "{:.2f}"),
              "width_mm": ("width mm", "{:.0f}")}
    parts = []
    for name, (label, form) in labels.items():
        if name not in summary:
            continue
        v = summary[name]
        lo, hi = REAL_TAVI_RANGES[name]
        real = f"real < {hi:.2f}, the upper half" if lo == 0 else f"real {form.format(lo)}-{form.format(hi)}"
        parts.append(f"{label} {form.format(v['median'])} ({form.format(v['p5'])}-{form.format(v['p95'])}; {real})")
    if "touches_top" in summary:
        parts.append(f"leaving the field at the top in {summary['touches_top']['fraction']:.0%} of frames")
    return "; ".join(parts)
