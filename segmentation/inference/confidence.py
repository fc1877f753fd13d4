"""Per-frame confidence score of a prediction.

Definition: with ``p`` the (ensembled) foreground probability map at the frame's original size
and ``M`` the final mask, the region of interest ``R`` is every pixel within
``margin = margin_fraction * min(H, W)`` pixels (Euclidean, 5x5-mask approximation) of ``M``
(the predicted region and its neighbourhood, where a wrong boundary would show); if ``M`` is
empty, ``R`` is the whole frame.
The confidence is the mean over ``R`` of ``|2p - 1|`` (= ``2 max(p, 1 - p) - 1``): 1 when every
pixel there is decided with certainty (p = 0 or 1), 0 when every pixel sits at p = 0.5.
Pixels far from the prediction (mostly confident background) are left out, so the score is
not inflated by the frame size. The node flags frames below a threshold for manual review.
"""

from __future__ import annotations

import cv2
import numpy as np


def frame_confidence(probabilities: np.ndarray, mask: np.ndarray, *, margin_fraction: float = 0.05) -> float:
    """Confidence of one frame (definition in the module docstring).

    Args:
        probabilities: ``(H, W)`` float map in [0, 1].
        mask: ``(H, W)`` bool final mask.
        margin_fraction: Neighbourhood size as a fraction of the shorter side.

    Returns:
        A float in [0, 1].
    """
    p = np.asarray(probabilities, dtype=np.float32)
    certainty = np.abs(2.0 * p - 1.0)
    if not mask.any():
        return float(certainty.mean())
    margin = float(margin_fraction) * min(p.shape)
    # distance of every pixel to the nearest mask pixel (0 inside the mask)
    outside = np.where(mask, 0, 255).astype(np.uint8)
    dist = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_5)
    region = dist <= margin
    return float(certainty[region].mean())
