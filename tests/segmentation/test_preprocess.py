"""normalize_frames (shared with training) and the model-input geometry."""

from __future__ import annotations

import numpy as np
import pytest

from segmentation.errors import InferenceError
from segmentation.inference.preprocess import (
    IMAGENET_MEAN,
    crop_padding,
    normalize_frames,
    restore_probabilities,
    to_model_input,
)


def test_normalize_rules():
    u8 = np.array([[0, 51, 255]], np.uint8)
    assert np.allclose(normalize_frames(u8), [[0, 0.2, 1]])
    assert normalize_frames(u8).dtype == np.float32
    u12 = np.array([[0, 2048, 4095]], np.uint16)
    assert np.allclose(normalize_frames(u12, bits_stored=12), [[0, 2048 / 4095, 1]])
    assert np.allclose(normalize_frames(np.array([[0, 51, 255]], np.uint16)), [[0, 0.2, 1]])  # 8 bit in 16
    rng = np.random.default_rng(0)
    wide = rng.integers(1000, 3000, (64, 64)).astype(np.uint16)
    out = normalize_frames(wide)  # unknown depth > 8 bit: robust percentile scaling
    assert out.min() == 0.0 and out.max() == 1.0 and 0.4 < np.median(out) < 0.6
    fl = np.array([[-0.5, 0.25, 2.0, np.nan]], np.float64)
    assert np.allclose(normalize_frames(fl), [[0, 0.25, 1, 0]])
    assert np.array_equal(normalize_frames(np.array([[True, False]])), [[1.0, 0.0]])
    stack = np.stack([wide, wide // 2])
    assert normalize_frames(stack).shape == (2, 64, 64)
    with pytest.raises(InferenceError, match="bits_stored must be in 1..32"):
        normalize_frames(u12, bits_stored=40)
    with pytest.raises(InferenceError, match="unsupported frame dtype"):
        normalize_frames(np.array([["a"]]))


def test_pad_and_crop_geometry():
    frame = np.full((100, 50), 255, np.uint8)
    batch, geo = to_model_input(frame, input_size=24, padded_size=32)
    assert batch.shape == (1, 1, 32, 32) and geo.pad_before == 4
    assert batch[0, 0, 4:28, 4:28].min() > 0.9999 and batch[0, 0, :4].max() == 0.0 and batch[0, 0, 28:].max() == 0.0
    maps = batch[:, 0]
    assert crop_padding(maps, geo).shape == (1, 24, 24)
    (back,) = restore_probabilities(maps, geo)
    assert back.shape == (100, 50) and back.min() > 0.9999
    rgb, _ = to_model_input(frame, input_size=32, in_channels=3, normalization="imagenet")
    assert rgb.shape == (1, 3, 32, 32)
    assert np.allclose(rgb[0, :, 0, 0], [(1 - m) / s for m, s in zip(IMAGENET_MEAN, (0.229, 0.224, 0.225))])
    with pytest.raises(InferenceError, match="unknown normalization"):
        to_model_input(frame, input_size=32, normalization="zscore")
