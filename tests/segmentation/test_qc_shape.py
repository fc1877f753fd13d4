"""QC measurements on known masks: shape in mm, flip/temporal Dice, boundary entropy, contrast."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segmentation.qc.contrast import mask_contrast
from segmentation.qc.disagreement import boundary_entropy, flip_dice
from segmentation.qc.errors import QualityError
from segmentation.qc.shape import (
    EMPTY_SHAPE_Z,
    ShapeStats,
    count_components,
    shape_features,
)
from segmentation.qc.temporal import temporal_dice


def rect(h=100, w=120, top=10, left=20, rows=40, cols=20) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[top:top + rows, left:left + cols] = True
    return m


def test_rectangle_shape_in_mm_and_fractions():
    m = rect()
    f = shape_features(m, (0.5, 0.25))
    assert f["area_mm2"] == pytest.approx(40 * 20 * 0.5 * 0.25)
    assert f["area_frac"] == pytest.approx(800 / 12000)
    # extents 20 mm (rows) x 5 mm (columns): elongation of a uniform rectangle = ratio of sides
    assert f["elongation"] == pytest.approx(4.0, rel=0.02)
    assert f["width_mm"] == pytest.approx(5.0, rel=0.1)
    assert f["solidity"] == pytest.approx(1.0, abs=0.06)
    assert f["components"] == 1 and f["border_contact"] == 0.0
    assert f["centroid_row_frac"] == pytest.approx(29.5 / 99)
    assert f["centroid_col_frac"] == pytest.approx(29.5 / 119)


def test_border_contact_solidity_and_components():
    top = rect(top=0)
    assert shape_features(top)["border_contact"] == pytest.approx(20 / (2 * 120 + 2 * 98))
    ell = rect(rows=60, cols=60) & ~rect(top=10, left=40, rows=40, cols=40)  # an L: solidity well below 1
    assert shape_features(ell)["solidity"] < 0.75
    two = rect() | rect(left=80)
    assert count_components(two) == 2
    assert shape_features(rect(), raw_mask=two)["components"] == 2


def test_empty_mask_and_bad_input():
    f = shape_features(np.zeros((10, 10), bool))
    assert f["area_mm2"] == 0.0 and f["components"] == 0
    with pytest.raises(QualityError, match="2-D"):
        shape_features(np.zeros((2, 3, 4), bool))
    with pytest.raises(QualityError, match="spacing"):
        shape_features(rect(), (0.0, 1.0))


def test_shape_stats_score_unusual_shapes_higher():
    rng = np.random.default_rng(0)
    train = [shape_features(rect(rows=int(rng.integers(35, 45)), cols=int(rng.integers(18, 23)),
                                 top=int(rng.integers(5, 15))), (0.5, 0.5)) for _ in range(20)]
    stats = ShapeStats.fit(train, fov_mm=60.0)
    typical = stats.implausibility(shape_features(rect(), (0.5, 0.5)))
    huge = stats.implausibility(shape_features(rect(rows=90, cols=110, top=5, left=5), (0.5, 0.5)))
    assert typical < 1.5 and huge > 5.0
    assert stats.implausibility(shape_features(np.zeros((100, 120), bool))) == EMPTY_SHAPE_Z
    back = ShapeStats.from_json_dict(stats.to_json_dict())
    assert back == stats
    assert stats.spacing_for((100, 120), None) == (0.5, 0.5)
    with pytest.raises(QualityError, match=">= 2 non-empty"):
        ShapeStats.fit(train[:1])


def test_flip_and_temporal_dice():
    a, b = rect(), rect(left=30)
    assert flip_dice(a, a) == 1.0
    assert flip_dice(a, b) == pytest.approx(2 * 400 / 1600)
    assert flip_dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    jump = [a, a, rect(top=50, left=80), a]
    t = temporal_dice(jump)
    assert t[0] == 1.0 and t[2] == 0.0 and t[1] == pytest.approx(0.5) and t[3] == 0.0
    assert math.isnan(temporal_dice([a])[0])


def test_boundary_entropy_sharp_vs_blurred():
    m = rect()
    sharp = m.astype(np.float32) * 0.999
    half = np.full(m.shape, 0.5, np.float32)
    assert boundary_entropy(sharp, m) < 0.05
    assert boundary_entropy(half, m) == pytest.approx(1.0, abs=1e-6)


def test_mask_contrast_dark_region_vs_no_contrast():
    rng = np.random.default_rng(1)
    image = rng.normal(150, 10, (100, 120)).astype(np.float32)
    m = rect()
    dark = image.copy()
    dark[m] -= 60
    assert mask_contrast(dark, m) > 0.3
    assert abs(mask_contrast(image, m)) < 0.1
    assert mask_contrast(image, np.zeros_like(m)) == 0.0
