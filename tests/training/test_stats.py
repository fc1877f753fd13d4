"""Bootstrap CIs, Holm step-down and paired Wilcoxon tests against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.errors import EvaluationError
from training.stats import bootstrap_ci, holm, paired_wilcoxon, pairwise_comparisons


def test_holm_matches_hand_example() -> None:
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> 0.06)
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_keeps_nan_and_rejects_bad_values() -> None:
    adjusted = holm([0.5, float("nan"), 0.4])
    # m = 2 (NaN not counted): 0.4 x 2 = 0.8; 0.5 x 1 = 0.5 -> monotone 0.8
    assert adjusted[2] == pytest.approx(0.8)
    assert adjusted[0] == pytest.approx(0.8)
    assert math.isnan(adjusted[1])
    assert holm([0.9, 0.8]).tolist() == [1.0, 1.0]
    with pytest.raises(EvaluationError, match="1.5"):
        holm([0.1, 1.5])


def test_holm_decisions_equal_sequential_procedure() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        p = rng.uniform(0, 0.1, size=7)
        alpha = 0.05
        order = np.argsort(p)
        rejected = np.zeros(p.size, bool)
        for k, i in enumerate(order):  # sequential Holm: stop at the first non-rejection
            if p[i] > alpha / (p.size - k):
                break
            rejected[i] = True
        assert np.array_equal(holm(p) <= alpha, rejected)


def test_wilcoxon_exact_small_sample() -> None:
    a = np.array([0.90, 0.85, 0.80, 0.95, 0.70])
    b = a - np.array([0.01, 0.02, 0.03, 0.04, 0.05])  # all differences positive
    res = paired_wilcoxon(a, b)
    assert res.statistic == 0.0
    assert res.p_value == pytest.approx(2 / 2**5)  # exact two-sided p for n = 5
    assert res.n == 5
    assert res.median_difference == pytest.approx(0.03)


def test_wilcoxon_identical_and_empty_and_mismatch() -> None:
    same = paired_wilcoxon([0.5, 0.6], [0.5, 0.6])
    assert (same.statistic, same.p_value) == (0.0, 1.0)
    empty = paired_wilcoxon([float("nan")], [0.3])
    assert empty.n == 0 and math.isnan(empty.p_value)
    with pytest.raises(EvaluationError, match="3 vs 2"):
        paired_wilcoxon([1, 2, 3], [1, 2])


def test_pairwise_comparisons_holm_over_pairs() -> None:
    rng = np.random.default_rng(0)
    patients = [f"P{i:03d}" for i in range(12)]
    base = rng.uniform(0.8, 0.9, size=12)
    models = {
        "good": dict(zip(patients, base + 0.05)),
        "mid": dict(zip(patients, base + rng.normal(0, 0.002, 12))),
        "bad": dict(zip(patients, base - 0.05)),
    }
    rows = pairwise_comparisons(models)
    assert [(r.model_a, r.model_b) for r in rows] == [("good", "mid"), ("good", "bad"), ("mid", "bad")]
    raw = [r.p_value for r in rows]
    np.testing.assert_allclose([r.p_holm for r in rows], holm(raw))
    good_bad = rows[1]
    assert good_bad.n_patients == 12 and good_bad.significant
    assert good_bad.median_difference == pytest.approx(0.10)
    assert all(0.0 <= r.p_value <= r.p_holm <= 1.0 for r in rows)


def test_bootstrap_ci_seeded_contains_median_and_narrows_with_n() -> None:
    rng = np.random.default_rng(1)
    small = rng.normal(0.9, 0.03, size=15)
    ci = bootstrap_ci(small, resamples=2000, seed=7)
    assert ci.estimate == pytest.approx(np.median(small))
    assert ci.low < ci.estimate < ci.high
    assert ci == bootstrap_ci(small, resamples=2000, seed=7)  # seeded
    assert ci != bootstrap_ci(small, resamples=2000, seed=8)
    large = rng.normal(0.9, 0.03, size=600)
    ci_large = bootstrap_ci(large, resamples=2000, seed=7)
    assert (ci_large.high - ci_large.low) < (ci.high - ci.low) / 3
    # the 95 % percentile interval of the median of N(0.9, 0.03) with n=600 covers 0.9
    assert ci_large.contains(0.9)


def test_bootstrap_ci_matches_scipy_percentile_method() -> None:
    from scipy import stats as sps

    values = np.random.default_rng(5).uniform(0, 1, size=40)
    ours = bootstrap_ci(values, statistic=np.mean, resamples=4000, seed=2)
    ref = sps.bootstrap((values,), np.mean, n_resamples=4000, method="percentile",
                        rng=np.random.default_rng(11)).confidence_interval
    assert ours.low == pytest.approx(ref.low, abs=0.01)
    assert ours.high == pytest.approx(ref.high, abs=0.01)
    # the seed is that of numpy's default_rng handed to scipy: the same interval to the bit
    same = sps.bootstrap((values,), np.mean, n_resamples=4000, method="percentile",
                         rng=np.random.default_rng(2)).confidence_interval
    assert (ours.low, ours.high) == (same.low, same.high)


def test_bootstrap_ci_is_the_percentile_interval_not_bca() -> None:
    from scipy import stats as sps

    skewed = np.random.default_rng(4).lognormal(0.0, 1.0, size=30)  # percentile and BCa differ here
    ours = bootstrap_ci(skewed, statistic=np.mean, resamples=3000, seed=1)
    dist = sps.bootstrap((skewed,), np.mean, n_resamples=3000, method="percentile",
                         rng=np.random.default_rng(1)).bootstrap_distribution
    np.testing.assert_allclose([ours.low, ours.high], np.percentile(dist, [2.5, 97.5]), rtol=1e-12)
    bca = sps.bootstrap((skewed,), np.mean, n_resamples=3000, method="BCa",
                        rng=np.random.default_rng(1)).confidence_interval
    assert abs(ours.high - bca.high) > 0.05


def test_bootstrap_ci_of_one_value_is_that_value_and_large_cohorts_are_batched() -> None:
    one = bootstrap_ci([0.87, float("nan")], resamples=50)
    assert (one.n, one.estimate, one.low, one.high) == (1, 0.87, 0.87, 0.87)
    big = np.random.default_rng(9).normal(0.9, 0.03, size=5000)  # batches of 800 resamples
    ci = bootstrap_ci(big, resamples=2000, seed=3)
    assert ci.low < np.median(big) < ci.high and ci.high - ci.low < 0.005


def test_bootstrap_ci_drops_nan_and_validates() -> None:
    ci = bootstrap_ci([1.0, float("nan"), 3.0], resamples=100)
    assert ci.n == 2 and ci.estimate == 2.0
    assert math.isnan(bootstrap_ci([float("nan")]).estimate)
    with pytest.raises(EvaluationError, match="confidence"):
        bootstrap_ci([1.0], confidence=1.5)
    with pytest.raises(EvaluationError, match="resamples"):
        bootstrap_ci([1.0], resamples=0)
