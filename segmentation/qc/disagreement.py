"""Predictive disagreement of one frame: flip-TTA Dice and entropy in the boundary band.

* :func:`flip_dice`: Dice between the mask predicted on the frame and the mask predicted on its
  horizontally flipped copy (flipped back). A network that has learnt the root agrees with
  itself; on frames it does not understand the two outlines part.
* :func:`boundary_entropy`: mean binary entropy (bits) of the probability map in a band of
  ``band_px`` pixels on both sides of the mask's boundary; 0 when the boundary is sharp, 1 when
  every pixel there sits at p = 0.5. An empty mask: the mean entropy over the whole frame.
"""

from __future__ import annotations

import cv2
import numpy as np


def flip_dice(mask: np.ndarray, flipped_mask: np.ndarray) -> float:
    """Dice of two bool masks of the same shape; 1.0 when both are empty.

    Raises:
        ValueError: shapes differ.
    """
    a = np.asarray(mask, dtype=bool)
    b = np.asarray(flipped_mask, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(a, b).sum() / total)


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of Bernoulli(p), element-wise."""
    q = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return -(q * np.log2(q) + (1 - q) * np.log2(1 - q))


def boundary_band(mask: np.ndarray, band_px: int) -> np.ndarray:
    """Pixels within ``band_px`` of the mask's boundary (both sides), bool."""
    m = np.asarray(mask, dtype=np.uint8)
    size = 2 * max(1, int(band_px)) + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    return cv2.dilate(m, kernel).astype(bool) & ~cv2.erode(m, kernel).astype(bool)


def boundary_entropy(probabilities: np.ndarray, mask: np.ndarray, *, band_fraction: float = 0.02) -> float:
    """Mean entropy (bits) of ``probabilities`` in the boundary band of ``mask``.

    Args:
        probabilities: ``(H, W)`` foreground probabilities in [0, 1].
        mask: ``(H, W)`` bool mask.
        band_fraction: Half-width of the band as a fraction of the shorter side (>= 1 px).
    """
    p = np.asarray(probabilities, np.float32)
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return float(binary_entropy(p).mean())
    band = boundary_band(m, max(1, round(band_fraction * min(m.shape))))
    if not band.any():  # the mask covers the whole frame: no boundary inside it
        return float(binary_entropy(p).mean())
    return float(binary_entropy(p[band]).mean())
