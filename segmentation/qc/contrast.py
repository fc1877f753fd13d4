"""How much darker the outlined region is than its surroundings (contrast agent is dark).

:func:`mask_contrast`: ``(median grey of a ring around the mask - median grey inside) / grey
spread of the frame`` (spread: 5th-95th percentile range). A contrast-filled root is clearly
darker than the ring around it (about 0.2-0.6 on the phantom); an outline drawn on a frame
without contrast encloses tissue no darker than its neighbourhood (about 0). An empty mask: 0.
"""

from __future__ import annotations

import cv2
import numpy as np


def mask_contrast(image: np.ndarray, mask: np.ndarray, *, ring_fraction: float = 0.04) -> float:
    """Contrast of the masked region against a ring around it (definition above).

    Args:
        image: ``(H, W)`` grey frame, MONOCHROME2 (contrast dark), any numeric dtype.
        mask: ``(H, W)`` bool.
        ring_fraction: Ring width as a fraction of the shorter side (>= 2 px).

    Raises:
        ValueError: shapes differ.
    """
    img = np.asarray(image, np.float32)
    m = np.asarray(mask, dtype=bool)
    if img.shape != m.shape:
        raise ValueError(f"image {img.shape} and mask {m.shape} differ in shape")
    if not m.any() or m.all():
        return 0.0
    width = max(2, round(ring_fraction * min(m.shape)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    ring = cv2.dilate(m.astype(np.uint8), kernel).astype(bool) & ~m
    if not ring.any():
        return 0.0
    lo, hi = np.percentile(img, [5, 95])
    spread = max(float(hi - lo), 1e-6)
    return float((np.median(img[ring]) - np.median(img[m])) / spread)
