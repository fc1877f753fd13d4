"""The calibrator is monotone in every feature, in the declared direction, and round-trips."""

from __future__ import annotations

import numpy as np
import pytest

from segmentation.qc.calibrator import DIRECTIONS, FEATURES, Calibrator
from segmentation.qc.errors import QualityError


def synthetic(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES)))
    signs = np.array([DIRECTIONS[f] for f in FEATURES], float)
    # the label depends on two features; one feature is given the WRONG sign in the data
    wrong = FEATURES.index("confidence")
    logit = 2.0 * signs[0] * x[:, 0] + 1.5 * signs[1] * x[:, 1] - 1.0 * signs[wrong] * x[:, wrong]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return x, y, wrong


def test_weights_follow_the_declared_directions_and_estimate_is_monotone():
    x, y, wrong = synthetic()
    cal = Calibrator.fit(x, y)
    for f, c in zip(cal.features, cal.coef):
        assert c * DIRECTIONS[f] >= 0, f
    assert cal.coef[wrong] == 0.0  # the data pull it the wrong way: clamped at zero
    assert abs(cal.coef[0]) > 0.5 and abs(cal.coef[1]) > 0.3
    base = np.zeros((1, len(FEATURES)))
    for j, f in enumerate(FEATURES):
        grid = np.repeat(base, 50, axis=0)
        grid[:, j] = np.linspace(-5, 5, 50)
        p = cal.predict(grid)
        assert np.all(np.diff(p) * DIRECTIONS[f] >= -1e-12), f


def test_missing_values_are_neutral_and_json_round_trip():
    x, y, _ = synthetic(seed=1)
    cal = Calibrator.fit(x, y)
    row = x[:1].copy()
    row[0, FEATURES.index("temporal_dice")] = np.nan
    filled = x[:1].copy()
    filled[0, FEATURES.index("temporal_dice")] = cal.mean[FEATURES.index("temporal_dice")]
    assert cal.predict(row) == pytest.approx(cal.predict(filled))
    back = Calibrator.from_json_dict(cal.to_json_dict())
    np.testing.assert_allclose(back.predict(x), cal.predict(x))
    bad = cal.to_json_dict()
    bad["coef"][0] = -bad["directions"][0] * 1.0
    with pytest.raises(QualityError, match="contradict"):
        Calibrator.from_json_dict(bad)


def test_fit_refuses_one_class_and_unknown_features():
    x, _, _ = synthetic(n=20)
    with pytest.raises(QualityError, match="both classes"):
        Calibrator.fit(x, np.ones(20))
    with pytest.raises(QualityError, match="unknown QC features"):
        Calibrator.fit(x[:, :1], np.arange(20) % 2, features=("colour",))
