"""Frame preprocessing shared by training and inference.

:func:`normalize_frames` is THE intensity normalisation of the project (training uses it too):

* ``uint8`` -> ``x / 255``;
* other integer types (10-16 bit detector data as decoded from DICOM):
  with ``bits_stored`` (from the DICOM header) -> ``x / (2**bits_stored - 1)``, clipped to [0, 1];
  without it, a frame whose maximum is <= 255 is 8-bit data in a wider container (``x / 255``);
  otherwise the frame is rescaled robustly, per frame, from its 0.5th..99.5th percentiles to
  [0, 1] (clipped);
* ``bool`` -> 0.0 / 1.0;
* floating point -> assumed already in [0, 1]; passed through as float32, clipped to [0, 1]
  (NaN becomes 0).

:func:`to_model_input` then resizes each frame to the model's input size (cv2 ``INTER_AREA``
when shrinking, ``INTER_LINEAR`` when enlarging; aspect ratio is not kept, as in the paper's
pipeline), zero-pads it centred to the padded size (624 -> 640), replicates the channel for
3-channel models and applies the model's normalisation (``unit`` or ``imagenet``).
:func:`restore_probabilities` undoes the geometry: crop the padding, resize to the original size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from segmentation.errors import InferenceError

logger = logging.getLogger(__name__)

#: ImageNet channel statistics (RGB) used by ``normalization="imagenet"`` models.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Percentiles used to rescale integer frames of unknown bit depth.
ROBUST_PERCENTILES = (0.5, 99.5)

FrameInput = np.ndarray | Sequence[np.ndarray]


def _normalize_one(frame: np.ndarray, bits_stored: int | None) -> np.ndarray:
    dtype = frame.dtype
    if dtype == np.uint8:
        return frame.astype(np.float32) * np.float32(1.0 / 255.0)
    if dtype == np.bool_:
        return frame.astype(np.float32)
    if np.issubdtype(dtype, np.floating):
        out = np.nan_to_num(frame.astype(np.float32, copy=False), nan=0.0)
        return np.clip(out, 0.0, 1.0)
    if not np.issubdtype(dtype, np.integer):
        raise InferenceError(f"unsupported frame dtype {dtype}; expected an integer, bool or float type")
    if bits_stored is not None:
        scale = np.float32(1.0 / float(2 ** int(bits_stored) - 1))
        return np.clip(frame.astype(np.float32) * scale, 0.0, 1.0)
    fmax = int(frame.max()) if frame.size else 0
    fmin = int(frame.min()) if frame.size else 0
    if fmin >= 0 and fmax <= 255:
        return frame.astype(np.float32) * np.float32(1.0 / 255.0)
    lo, hi = np.percentile(frame, ROBUST_PERCENTILES)
    if hi <= lo:
        return np.zeros(frame.shape, np.float32)
    out = (frame.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0)


def normalize_frames(frames: np.ndarray, *, bits_stored: int | None = None) -> np.ndarray:
    """Map frames of any bit depth to float32 in [0, 1] (the rule is in the module docstring).

    Args:
        frames: ``(H, W)`` or ``(N, H, W)`` array: uint8, uint16/int (8-16 bit), bool or float.
        bits_stored: Bits Stored of integer data (DICOM (0028,0101)), 1..32; None if unknown.

    Returns:
        float32 array of the same shape, values in [0, 1].

    Raises:
        InferenceError: wrong number of dimensions, unsupported dtype or bits_stored.
    """
    frames = np.asarray(frames)
    if frames.ndim not in (2, 3):
        raise InferenceError(f"frames must be (H, W) or (N, H, W), got shape {frames.shape}")
    if bits_stored is not None and not 1 <= int(bits_stored) <= 32:
        raise InferenceError(f"bits_stored must be in 1..32, got {bits_stored!r}")
    if frames.ndim == 2:
        return _normalize_one(frames, bits_stored)
    if frames.dtype == np.uint8 or bits_stored is not None or np.issubdtype(frames.dtype, np.floating):
        return _normalize_one(frames, bits_stored)
    return np.stack([_normalize_one(f, bits_stored) for f in frames]) if len(frames) else frames.astype(np.float32)


def as_frame_list(frames: FrameInput) -> list[np.ndarray]:
    """Frames as a list of 2-D arrays (accepts ``(N, H, W)``, ``(H, W)`` or a list of 2-D arrays).

    Raises:
        InferenceError: an element is not 2-D or is empty.
    """
    if isinstance(frames, np.ndarray):
        if frames.ndim == 2:
            items = [frames]
        elif frames.ndim == 3:
            items = list(frames)
        else:
            raise InferenceError(f"frames must be (H, W) or (N, H, W), got shape {frames.shape}")
    else:
        items = [np.asarray(f) for f in frames]
    for i, f in enumerate(items):
        if f.ndim != 2 or f.size == 0:
            raise InferenceError(f"frame {i}: expected a non-empty 2-D array, got shape {f.shape}")
    return items


def resize_to(image: np.ndarray, height: int, width: int, *, area_when_shrinking: bool = True) -> np.ndarray:
    """Resize a 2-D float image: INTER_AREA when shrinking (if allowed), else INTER_LINEAR."""
    h, w = image.shape
    if (h, w) == (height, width):
        return image
    shrinking = height <= h and width <= w
    interp = cv2.INTER_AREA if (shrinking and area_when_shrinking) else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


@dataclass(frozen=True)
class Geometry:
    """How frames were mapped to the network input: sizes needed to map predictions back."""

    input_size: int
    padded_size: int
    original_shapes: tuple[tuple[int, int], ...]

    @property
    def pad_before(self) -> int:
        """Rows/columns of zero padding before the resized frame (centred padding)."""
        return (self.padded_size - self.input_size) // 2


def to_model_input(
    frames: FrameInput,
    *,
    input_size: int,
    padded_size: int | None = None,
    in_channels: int = 1,
    normalization: str = "unit",
    bits_stored: int | None = None,
) -> tuple[np.ndarray, Geometry]:
    """Frames -> network input batch.

    Args:
        frames: ``(N, H, W)``/``(H, W)`` array or a list of 2-D arrays (sizes may differ).
        input_size: Square size each frame is resized to.
        padded_size: Network size (>= input_size); the resized frame is zero-padded, centred.
        in_channels: 1, or 3 (the gray frame is replicated).
        normalization: ``"unit"`` ([0, 1]) or ``"imagenet"`` (then ImageNet mean/std per channel).
        bits_stored: Passed to :func:`normalize_frames`.

    Returns:
        ``(batch float32 (N, C, P, P), geometry)``.

    Raises:
        InferenceError: bad frames, sizes, channels or normalisation name.
    """
    items = as_frame_list(frames)
    padded = input_size if padded_size is None else int(padded_size)
    if input_size <= 0 or padded < input_size:
        raise InferenceError(f"invalid sizes: input_size={input_size}, padded_size={padded}")
    if in_channels not in (1, 3):
        raise InferenceError(f"in_channels must be 1 or 3, got {in_channels}")
    if normalization not in ("unit", "imagenet"):
        raise InferenceError(f"unknown normalization {normalization!r}; valid: 'unit', 'imagenet'")
    n = len(items)
    batch = np.zeros((n, in_channels, padded, padded), np.float32)
    off = (padded - input_size) // 2
    for i, frame in enumerate(items):
        unit = normalize_frames(frame, bits_stored=bits_stored)
        resized = resize_to(unit, input_size, input_size)
        batch[i, :, off:off + input_size, off:off + input_size] = resized
    if normalization == "imagenet":
        if in_channels != 3:
            raise InferenceError("normalization 'imagenet' needs in_channels=3")
        mean = np.asarray(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1)
        batch = (batch - mean) / std
    geometry = Geometry(input_size, padded, tuple((int(f.shape[0]), int(f.shape[1])) for f in items))
    return batch, geometry


def crop_padding(maps: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Remove the centred padding from ``(N, P, P)`` maps -> ``(N, S, S)``."""
    off, size = geometry.pad_before, geometry.input_size
    return maps[:, off:off + size, off:off + size]


def restore_probabilities(maps: np.ndarray, geometry: Geometry) -> list[np.ndarray]:
    """Padded-size probability maps -> one float32 map per frame at its original size.

    Args:
        maps: ``(N, P, P)`` probabilities at the network size.
        geometry: From :func:`to_model_input`.

    Returns:
        List of ``(H_i, W_i)`` float32 maps (bilinear; area-averaged when shrinking).
    """
    cropped = crop_padding(maps, geometry)
    return [
        np.clip(resize_to(np.ascontiguousarray(m, dtype=np.float32), h, w), 0.0, 1.0)
        for m, (h, w) in zip(cropped, geometry.original_shapes)
    ]
