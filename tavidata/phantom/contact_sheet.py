"""Contact sheet: a grid of frames with the ground-truth outline, to look at a cohort at a glance."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from tavidata.errors import DatasetError

logger = logging.getLogger(__name__)

#: Outline colour (BGR).
OUTLINE_BGR = (60, 220, 60)


def make_tile(image: np.ndarray, mask: np.ndarray | None, label: str = "", *, tile: int = 256) -> np.ndarray:
    """One tile: the frame resized to ``tile`` px, the mask outline in green, a label on top.

    Args:
        image: 2-D uint8 frame.
        mask: 2-D bool mask of the same shape, or None.
        label: Text written in the top-left corner.
        tile: Tile size in px.

    Returns:
        (tile, tile, 3) uint8 BGR image.

    Raises:
        ValueError: ``image`` is not 2-D or ``mask`` has another shape.
    """
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    small = cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA)
    rgb = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
    if mask is not None:
        if mask.shape != image.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
        m = cv2.resize(mask.astype(np.uint8) * 255, (tile, tile), interpolation=cv2.INTER_LINEAR) > 127
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, OUTLINE_BGR, 1, cv2.LINE_AA)
    if label:
        scale = max(0.3, tile / 700.0)
        cv2.putText(rgb, label, (4, int(14 * scale / 0.37)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(rgb, label, (4, int(14 * scale / 0.37)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return rgb


def make_contact_sheet(items: Sequence[tuple[np.ndarray, np.ndarray | None, str]], path: str | Path, *,
                       columns: int = 4, tile: int = 256) -> Path:
    """Write a PNG grid of frames with their mask outlines.

    Args:
        items: (image uint8 2-D, mask bool 2-D or None, label) per tile; tiles made by
            :func:`make_tile` may be passed as 3-D BGR images with ``None`` mask.
        path: Output PNG path (parent folders are created).
        columns: Tiles per row.
        tile: Tile size in px.

    Returns:
        ``path``.

    Raises:
        ValueError: no items, or ``columns`` < 1.
        DatasetError: the PNG cannot be written.
    """
    if not items:
        raise ValueError("make_contact_sheet: no frames given")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    tiles = [img if img.ndim == 3 else make_tile(img, mask, label, tile=tile) for img, mask, label in items]
    tiles = [cv2.resize(t, (tile, tile), interpolation=cv2.INTER_AREA) if t.shape[0] != tile else t for t in tiles]
    rows = (len(tiles) + columns - 1) // columns
    sheet = np.zeros((rows * tile, min(columns, len(tiles)) * tile, 3), np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = t
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), sheet):
        raise DatasetError(f"{path}: could not write the contact sheet")
    logger.info("contact sheet with %d frames: %s", len(tiles), path)
    return path
