"""Turning a mask image file into a boolean mask.

Accepted encodings (the file is read unchanged, so 8- and 16-bit files both work):

- grayscale 0/1: foreground is every value > 0;
- grayscale 0/255 (or any other maximum above 1): foreground is every value > 127, which also
  absorbs the ringing of JPEG-compressed masks;
- colour (RGB or RGBA): without ``color``, the brightest colour channel of each pixel is
  thresholded as above (any coloured pixel on a black background is foreground); an RGBA file
  whose colour channels are all black uses its alpha channel instead. With ``color=(r, g, b)``,
  only pixels within :data:`COLOR_TOLERANCE` of that colour (in every channel) are foreground,
  which selects one class of a multi-class colour mask.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from tavidata.errors import DatasetError

logger = logging.getLogger(__name__)

#: Largest per-channel difference from ``color`` still counted as that colour.
COLOR_TOLERANCE = 32


def _threshold(values: np.ndarray) -> np.ndarray:
    if values.size and int(values.max()) <= 1:
        return values > 0
    return values > 127


def mask_from_array(array: np.ndarray, *, color: tuple[int, int, int] | None = None) -> np.ndarray:
    """Boolean mask from a 2-D gray or 3-D BGR/BGRA array as returned by ``cv2.imread``.

    Raises:
        DatasetError: an array of another shape, or ``color`` given for a grayscale mask.
    """
    if array.ndim == 2:
        if color is not None:
            raise DatasetError(f"a mask colour {color} was given but the mask is grayscale")
        return _threshold(array)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise DatasetError(f"mask array of shape {array.shape} is neither grayscale nor RGB(A)")
    bgr = array[:, :, :3]
    if color is not None:
        target = np.array(color[::-1], dtype=np.int32)  # RGB -> BGR (cv2 order)
        diff = np.abs(bgr.astype(np.int32) - target)
        return np.all(diff <= COLOR_TOLERANCE, axis=2)
    brightest = bgr.max(axis=2)
    if array.shape[2] == 4 and not brightest.any():
        return _threshold(array[:, :, 3])
    return _threshold(brightest)


def read_mask_file(path: Path, *, color: tuple[int, int, int] | None = None) -> np.ndarray:
    """Read a mask image file into a boolean 2-D array (see the module docstring).

    Raises:
        DatasetError: the file cannot be read or decoded, or has an unsupported layout.
    """
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise DatasetError(f"{path}: unreadable mask file")
    try:
        return mask_from_array(array, color=color)
    except DatasetError as exc:
        raise DatasetError(f"{path}: {exc}") from exc


def read_image_file(path: Path) -> np.ndarray:
    """Read a frame image as 8-bit grayscale (colour files are converted with ``cv2``).

    Raises:
        DatasetError: unreadable file, or a bit depth other than 8 (the data-set format stores
            8-bit frames; convert 16-bit frames explicitly before importing).
    """
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise DatasetError(f"{path}: unreadable image file")
    if array.dtype != np.uint8:
        raise DatasetError(f"{path}: image is {array.dtype}, expected 8-bit (uint8) frames")
    if array.ndim == 3:
        code = cv2.COLOR_BGR2GRAY if array.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        array = cv2.cvtColor(array, code)
    return array
