"""Mask post-processing: threshold -> keep the largest connected component -> fill holes."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from segmentation.errors import InferenceError
from segmentation.inference.config import PostprocessConfig

logger = logging.getLogger(__name__)

def threshold_mask(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """``probabilities >= threshold`` as bool.

    Raises:
        InferenceError: threshold outside (0, 1).
    """
    if not 0.0 < float(threshold) < 1.0:
        raise InferenceError(f"threshold must be in (0, 1), got {threshold!r}")
    return np.asarray(probabilities) >= np.float32(threshold)


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 8-connected foreground component of a 2-D mask (ties: the first
    in raster order). An empty mask stays empty."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8, ltype=cv2.CV_32S)
    if n <= 2:  # background only, or one component
        return m.astype(bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not connected to the image border (4-connected background,
    as ``scipy.ndimage.binary_fill_holes``)."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    h, w = m.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = m
    flood = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(padded, flood, (0, 0), 2, flags=4)  # outside background -> 2
    return padded[1:-1, 1:-1] != 2


def postprocess_mask(probabilities: np.ndarray, config: PostprocessConfig, *, default_threshold: float) -> np.ndarray:
    """Apply the configured steps to one 2-D probability map.

    Args:
        probabilities: ``(H, W)`` float map in [0, 1].
        config: Which steps to run; ``config.threshold`` overrides ``default_threshold``.
        default_threshold: The model folder's threshold.

    Returns:
        ``(H, W)`` bool mask.
    """
    threshold = config.threshold if config.threshold is not None else default_threshold
    mask = threshold_mask(probabilities, threshold)
    if config.keep_largest_component:
        mask = keep_largest_component(mask)
    if config.fill_holes:
        mask = fill_holes(mask)
    return mask
