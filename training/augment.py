"""The paper's augmentation pipeline in Albumentations 2.x terms, for single-channel frames.

Published pipeline (docs/benchmark.md, "Protocol"), in order, and what we build for it:

====================================  ===================================================
paper (Albumentations 1.x)            here (Albumentations 2.0.8)
====================================  ===================================================
(resize to the input size, as the     ``Resize(input_size)``: image linear (area when
authors' data loader did first)       shrinking), mask nearest
HorizontalFlip(p=0.5)                 ``HorizontalFlip(p=0.5)``
ShiftScaleRotate(shift 0.0625,        ``Affine(translate_percent=0.0625, scale=(0.9, 1.1),
scale 0.1, rotate 15, p=0.5)          rotate=(-15, 15), keep_ratio=True,
                                      border_mode=BORDER_CONSTANT, fill=0, fill_mask=0, p=0.5)``.
                                      ShiftScaleRotate is deprecated in 2.x and its default
                                      border changed, so the border is explicit (the authors'
                                      code passed border_mode=0); ``keep_ratio`` keeps one scale
                                      for both axes, as ShiftScaleRotate did.
PadIfNeeded(input size, value=0)      ``PadIfNeeded(..., fill=0, fill_mask=0)``: 2.x ignores
                                      ``value``/``mask_value``. For sizes not divisible by 32
                                      (624) ``pad_height_divisor=pad_width_divisor=32`` pads
                                      to 640, the size the network accepts.
GaussNoise(var_limit=(3, 10), p=0.2)  :class:`RoundedGaussNoise` = ``GaussNoise(std_range=
                                      (sqrt(3)/255, sqrt(10)/255), mean_range=(0, 0), p=0.2)``:
                                      2.x ignores ``var_limit`` and would fall back to std
                                      0.2-0.44 (x255!). See below for the rounding.
Perspective(scale=(0.05, 0.1), p=0.5) :class:`QuadPerspective` = ``Perspective(scale=(0.05,
                                      0.1), keep_size=True, p=0.5)`` with the 1.x geometry
                                      (see below)
RandomBrightnessContrast(0.2, 0.2,    ``RandomBrightnessContrast(brightness_limit=0.2,
p=0.9)                                contrast_limit=0.2, p=0.9)``: out = in*a + b*255,
                                      a in [0.8, 1.2], b in [-0.2, 0.2]
HueSaturationValue(20, 30, 20, p=0.9) :class:`GrayHueSaturationValue` (below)
====================================  ===================================================

Hue-saturation-value on grey frames: the authors fed grey frames replicated to RGB. A grey
pixel has saturation 0, so the hue shift changes nothing and Albumentations 2.x leaves S=0
pixels unsaturated; only the value shift acts, i.e. the transform adds one offset in
[-20, +20] grey levels to the whole frame (clipped to 0..255). Albumentations 2.x given a
1-channel image zeroes hue/sat and emits a UserWarning on every call;
:class:`GrayHueSaturationValue` instead converts grey -> RGB -> HSV shift -> grey, which is
what the authors' RGB pipeline did, with no warning and the same random draws.

Gaussian noise on 8-bit frames: Albumentations 2.0.8 adds the float noise map to a uint8 image
by truncating it toward zero, which shrinks the variance (measured: 1.9 instead of 3, 7.8
instead of 10 grey levels squared). :class:`RoundedGaussNoise` draws the same noise map and
rounds ``image + noise`` to the nearest grey level instead, so the frames carry the published
variance (3-10, plus 1/12 from the rounding).

Perspective: the corners of the frame are pulled inward by ``|N(0, s)|`` of the size
(``s`` uniform in 0.05-0.1) and that quadrilateral is stretched back to the full frame
(``keep_size``). Albumentations 2.0.8 maps the quadrilateral to the full frame and then applies
the keep-size scale meant for the quadrilateral's own size, which zooms in a further
~10-25 % anchored at the top-left corner and drops the right and bottom of the frame (measured:
mean corner displacement 0.099 of the size instead of 0.060). :class:`QuadPerspective` draws
the same corners and restores the 1.x mapping (quadrilateral -> whole output frame).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.geometric import functional as fgeometric
from albumentations.augmentations.pixel import functional as fpixel

from training.config import AugmentConfig

logger = logging.getLogger(__name__)

#: Spatial size multiple required by the smp encoders (5 down-samplings).
PAD_DIVISOR = 32

_BORDER_MODES = {
    "constant": cv2.BORDER_CONSTANT,
    "reflect_101": cv2.BORDER_REFLECT_101,
    "replicate": cv2.BORDER_REPLICATE,
}


class GrayHueSaturationValue(A.HueSaturationValue):
    """``HueSaturationValue`` that treats a 1-channel frame as the grey RGB image it stands for.

    Same parameters and random draws as :class:`albumentations.HueSaturationValue`; a
    1-channel image is converted to RGB, shifted in HSV and converted back to grey. On grey
    content this is exactly a value (brightness) offset; see the module docstring.
    """

    def apply(
        self, img: np.ndarray, hue_shift: int, sat_shift: int, val_shift: int, **params: Any
    ) -> np.ndarray:
        """Shift hue, saturation and value; takes and returns an (H, W[, 1]) or (H, W, 3) image."""
        if img.ndim == 3 and img.shape[2] == 3:
            return fpixel.shift_hsv(img, hue_shift, sat_shift, val_shift)
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 1):
            raise TypeError(f"GrayHueSaturationValue expects 1 or 3 channels, got shape {img.shape}")
        gray = img[..., 0] if img.ndim == 3 else img
        rgb = cv2.cvtColor(np.ascontiguousarray(gray), cv2.COLOR_GRAY2RGB)
        shifted = cv2.cvtColor(fpixel.shift_hsv(rgb, hue_shift, sat_shift, val_shift), cv2.COLOR_RGB2GRAY)
        return shifted.reshape(img.shape)


class RoundedGaussNoise(A.GaussNoise):
    """``GaussNoise`` that rounds ``image + noise`` on uint8 images instead of truncating the noise.

    Same parameters and random draws as :class:`albumentations.GaussNoise`; see the module
    docstring for why.
    """

    def apply(self, img: np.ndarray, noise_map: np.ndarray, **params: Any) -> np.ndarray:
        """Add ``noise_map`` (grey levels) to ``img``; uint8 results are rounded and clipped."""
        if img.dtype != np.uint8:
            return super().apply(img, noise_map, **params)
        noisy = img.astype(np.float32) + noise_map.reshape(img.shape).astype(np.float32)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


class QuadPerspective(A.Perspective):
    """``Perspective`` whose output frame is exactly the jittered corner quadrilateral (1.x geometry).

    Same parameters and random draws as :class:`albumentations.Perspective`; see the module
    docstring for the 2.0.8 behaviour this corrects. Only ``keep_size=True`` and
    ``fit_output=False`` (the paper's settings) are supported.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.keep_size or self.fit_output:
            raise ValueError("QuadPerspective supports keep_size=True, fit_output=False only")

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Draw the corner jitter; returns the matrix mapping the quadrilateral onto the output."""
        image_shape = params["shape"][:2]
        scale = self.py_random.uniform(*self.scale)
        points = fgeometric.order_points(
            fgeometric.generate_perspective_points(image_shape, scale, self.random_generator)
        )
        _, max_width, max_height = fgeometric.compute_perspective_params(points, image_shape)
        target = np.array([[0, 0], [max_width, 0], [max_width, max_height], [0, max_height]], np.float32)
        matrix = cv2.getPerspectiveTransform(points.astype(np.float32), target)
        return {"matrix": matrix, "max_height": max_height, "max_width": max_width, "matrix_bbox": matrix}


def _resize(input_size: int) -> A.Resize:
    return A.Resize(
        height=input_size,
        width=input_size,
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        area_for_downscale="image",
        p=1.0,
    )


def _pad(input_size: int, pad_to: int) -> A.PadIfNeeded:
    """Zero padding (image and mask) from ``input_size`` to ``pad_to``, centred."""
    if pad_to < input_size:
        raise ValueError(f"pad_to {pad_to} is smaller than input_size {input_size}")
    common: dict[str, Any] = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": 0,
                              "position": "center", "p": 1.0}
    if pad_to > input_size and pad_to % PAD_DIVISOR == 0 and pad_to - input_size < PAD_DIVISOR:
        return A.PadIfNeeded(min_height=None, min_width=None, pad_height_divisor=PAD_DIVISOR,
                             pad_width_divisor=PAD_DIVISOR, **common)
    return A.PadIfNeeded(min_height=pad_to, min_width=pad_to, **common)


def build_eval_transform(input_size: int, pad_to: int | None = None) -> A.Compose:
    """Resize to ``input_size`` and zero-pad to ``pad_to`` (validation/test frames; no randomness).

    Args:
        input_size: Square size frames are resized to.
        pad_to: Square network input size (``segmentation.models.zoo.padded_input_size``);
            defaults to ``input_size``.

    Returns:
        An Albumentations ``Compose`` taking ``image=`` uint8 (H, W) and ``mask=`` uint8 (H, W).

    Raises:
        ValueError: ``pad_to`` smaller than ``input_size``.
    """
    pad_to = input_size if pad_to is None else pad_to
    return A.Compose([_resize(input_size), _pad(input_size, pad_to)], strict=True)


def build_train_transform(input_size: int, cfg: AugmentConfig, pad_to: int | None = None) -> A.Compose:
    """The paper's training pipeline (module docstring), preceded by the resize.

    Args:
        input_size: Square size frames are resized to.
        cfg: Augmentation parameters; ``cfg.enabled=False`` gives :func:`build_eval_transform`.
        pad_to: Network input size (defaults to ``input_size``).

    Returns:
        An Albumentations ``Compose``; reseed it per sample with ``set_random_seed``.

    Raises:
        ValueError: ``pad_to`` smaller than ``input_size``.
    """
    pad_to = input_size if pad_to is None else pad_to
    if not cfg.enabled:
        return build_eval_transform(input_size, pad_to)
    border = _BORDER_MODES[cfg.border_mode]
    std_range = (math.sqrt(cfg.noise_var_limit[0]) / 255.0, math.sqrt(cfg.noise_var_limit[1]) / 255.0)
    transforms = [
        _resize(input_size),
        A.HorizontalFlip(p=cfg.hflip_p),
        A.Affine(
            translate_percent=(-cfg.shift_limit, cfg.shift_limit),
            scale=(1.0 - cfg.scale_limit, 1.0 + cfg.scale_limit),
            rotate=(-cfg.rotate_limit, cfg.rotate_limit),
            keep_ratio=True,
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=border,
            fill=0,
            fill_mask=0,
            p=cfg.affine_p,
        ),
        _pad(input_size, pad_to),
        RoundedGaussNoise(std_range=std_range, mean_range=(0.0, 0.0), p=cfg.noise_p),
        QuadPerspective(
            scale=cfg.perspective_scale,
            keep_size=True,
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=border,
            fill=0,
            fill_mask=0,
            p=cfg.perspective_p,
        ),
        A.RandomBrightnessContrast(
            brightness_limit=cfg.brightness_limit, contrast_limit=cfg.contrast_limit,
            brightness_by_max=True, p=cfg.brightness_contrast_p,
        ),
        GrayHueSaturationValue(
            hue_shift_limit=cfg.hue_shift_limit, sat_shift_limit=cfg.sat_shift_limit,
            val_shift_limit=cfg.val_shift_limit, p=cfg.hsv_p,
        ),
    ]
    return A.Compose(transforms, strict=True)
