"""Post-processing steps, confidence and the inference configuration."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from segmentation.inference.confidence import frame_confidence
from segmentation.inference.config import PostprocessConfig, load_inference_config
from segmentation.inference.postprocess import (
    fill_holes,
    keep_largest_component,
    postprocess_mask,
    threshold_mask,
)
from tavicore.config import ConfigError


def _two_blobs_with_hole() -> np.ndarray:
    p = np.zeros((60, 80), np.float32)
    p[5:45, 5:45] = 0.9      # big blob
    p[20:25, 20:25] = 0.1    # hole inside it
    p[50:55, 60:70] = 0.8    # small blob
    p[0:3, 70:80] = 0.55     # faint blob at the border
    return p


def test_threshold():
    p = _two_blobs_with_hole()
    assert threshold_mask(p, 0.5).sum() == 40 * 40 - 25 + 50 + 30
    assert threshold_mask(p, 0.6).sum() == 40 * 40 - 25 + 50


def test_keep_largest_component_matches_scipy_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(30):
        m = ndimage.uniform_filter(rng.random((50, 60)), 5) > 0.52
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        got = keep_largest_component(m)
        if n == 0:
            assert not got.any()
            continue
        sizes = np.bincount(lab.ravel())[1:]
        assert got.sum() == sizes.max()
        assert len(np.unique(lab[got])) == 1  # one component kept
    diag = np.eye(5, dtype=bool)  # 8-connected diagonal is one component
    assert keep_largest_component(diag).sum() == 5


def test_fill_holes_matches_scipy():
    rng = np.random.default_rng(1)
    for _ in range(30):
        m = ndimage.uniform_filter(rng.random((40, 50)), 4) > 0.5
        assert np.array_equal(fill_holes(m), ndimage.binary_fill_holes(m))


@pytest.mark.parametrize("largest,holes,expected", [
    (False, False, 40 * 40 - 25 + 50 + 30),
    (True, False, 40 * 40 - 25),
    (False, True, 40 * 40 + 50 + 30),
    (True, True, 40 * 40),
])
def test_each_step_is_switchable(largest, holes, expected):
    cfg = PostprocessConfig(keep_largest_component=largest, fill_holes=holes)
    assert postprocess_mask(_two_blobs_with_hole(), cfg, default_threshold=0.5).sum() == expected
    # the config threshold overrides the model's
    cfg_t = PostprocessConfig(threshold=0.6, keep_largest_component=False, fill_holes=False)
    assert postprocess_mask(_two_blobs_with_hole(), cfg_t, default_threshold=0.5).sum() == 40 * 40 - 25 + 50


def test_confidence_definition():
    certain = np.zeros((100, 100), np.float32)
    certain[30:60, 30:60] = 1.0
    mask = certain > 0.5
    assert frame_confidence(certain, mask) == pytest.approx(1.0)
    unsure = np.where(mask, 0.6, 0.4).astype(np.float32)
    assert frame_confidence(unsure, mask) == pytest.approx(0.2, abs=1e-6)
    # far-away background does not inflate the score: only the neighbourhood counts
    mixed = certain.copy()
    mixed[30:60, 30:60] = 0.55
    c_small = frame_confidence(mixed, mask, margin_fraction=0.01)
    c_large = frame_confidence(mixed, mask, margin_fraction=1.0)
    assert c_small < 0.3 < c_large
    assert frame_confidence(np.full((10, 10), 0.5, np.float32), np.zeros((10, 10), bool)) == 0.0


def test_inference_config_file_and_strict_keys(tmp_path):
    cfg = load_inference_config()
    assert cfg.backend == "auto" and cfg.postprocess.keep_largest_component and cfg.postprocess.fill_holes
    assert cfg.postprocess.threshold is None and cfg.folds is None
    cfg2 = load_inference_config(overrides={"postprocess.fill_holes": False, "folds": [0, 2], "backend": "bf16"})
    assert not cfg2.postprocess.fill_holes and cfg2.folds == (0, 2) and cfg2.backend == "bf16"
    with pytest.raises(ConfigError, match="postprocess.fill_hole: unknown key \\(did you mean 'fill_holes'"):
        load_inference_config(overrides={"postprocess.fill_hole": False})
    with pytest.raises(ConfigError, match="backend: invalid value 'tensorrt'"):
        load_inference_config(overrides={"backend": "tensorrt"})
    with pytest.raises(ConfigError, match="out of range"):
        load_inference_config(overrides={"postprocess.threshold": 1.5})
