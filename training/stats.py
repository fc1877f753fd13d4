"""Statistics of the patient-level evaluation: bootstrap confidence intervals, paired
Wilcoxon signed-rank tests and Holm's step-down correction for multiple comparisons.

The paper (Table 3) reports, per model, the median over patients of the per-patient Dice and
ASSD with a 95 % bootstrap confidence interval, and compares models with paired Wilcoxon
signed-rank tests on per-patient Dice, Holm-corrected. This module implements exactly that:

* :func:`bootstrap_ci`: percentile bootstrap over patients (``scipy.stats.bootstrap`` with
  ``method="percentile"``, seeded: resample the per-patient values with replacement; the interval
  is the ``(1-c)/2`` and ``(1+c)/2`` quantiles of the resampled statistic).
* :func:`holm`: Holm (1979) step-down adjusted p-values, written out here (no statsmodels).
* :func:`paired_wilcoxon` and :func:`pairwise_comparisons`: ``scipy.stats.wilcoxon`` on paired
  per-patient values of every pair of models, then :func:`holm` over all pairs.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from training.errors import EvaluationError

logger = logging.getLogger(__name__)

#: Default number of bootstrap resamples (conf/evaluate.yaml overrides it).
DEFAULT_RESAMPLES = 10_000


@dataclass(frozen=True)
class ConfidenceInterval:
    """A point estimate with its bootstrap confidence interval.

    ``low``/``high`` are NaN when fewer than one finite value was given.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    n: int
    resamples: int

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies within ``[low, high]`` (inclusive)."""
        return bool(self.low <= value <= self.high)

    def as_dict(self) -> dict[str, float | int]:
        """A JSON-serialisable view (NaN kept as float NaN)."""
        return {
            "estimate": self.estimate, "low": self.low, "high": self.high,
            "confidence": self.confidence, "n": self.n, "resamples": self.resamples,
        }


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    statistic: Callable[..., np.ndarray] = np.median,
    confidence: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile bootstrap confidence interval of ``statistic`` over ``values``
    (``scipy.stats.bootstrap``, ``method="percentile"``).

    Non-finite values (NaN ASSD of a patient whose frames were all missed) are dropped first;
    ``n`` in the result counts the values kept. With a single value every resample equals it:
    the interval is that value (scipy refuses fewer than two observations).

    Args:
        values: One value per unit being resampled (per patient).
        statistic: Vectorised reducer called as ``statistic(array, axis=-1)``
            (``np.median`` by default, ``np.mean`` works too).
        confidence: Coverage of the interval, in (0, 1).
        resamples: Number of bootstrap resamples (>= 1).
        seed: Seed of the ``numpy.random.default_rng`` generator (same seed -> same interval).

    Returns:
        The statistic on the original values and the percentile interval.

    Raises:
        EvaluationError: ``confidence`` outside (0, 1) or ``resamples`` < 1.
    """
    if not 0.0 < confidence < 1.0:
        raise EvaluationError(f"bootstrap confidence {confidence!r} must be in (0, 1)")
    if resamples < 1:
        raise EvaluationError(f"bootstrap resamples {resamples!r} must be >= 1")
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        nan = float("nan")
        return ConfidenceInterval(nan, nan, nan, confidence, 0, resamples)
    estimate = float(statistic(arr[None, :], axis=-1)[0])
    if n == 1:
        return ConfidenceInterval(estimate, estimate, estimate, confidence, 1, resamples)
    res = sps.bootstrap(
        (arr,), statistic, n_resamples=resamples, batch=max(1, 4_000_000 // n),  # bounded memory
        vectorized=True, confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return ConfidenceInterval(estimate, float(ci.low), float(ci.high), confidence, n, resamples)


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order.

    With the m finite p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value
    of the i-th smallest is ``max_{j <= i} min(1, (m - j + 1) * p_(j))``; a hypothesis is
    rejected at level alpha when its adjusted p-value is <= alpha, which is the same decision as
    Holm's sequential procedure. NaN inputs stay NaN and do not count in m.

    Raises:
        EvaluationError: a p-value outside [0, 1].
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size == 0:
        return out
    bad = p[finite][(p[finite] < 0) | (p[finite] > 1)]
    if bad.size:
        raise EvaluationError(f"p-values must lie in [0, 1], got {bad.tolist()}")
    m = finite.size
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


@dataclass(frozen=True)
class WilcoxonResult:
    """A paired Wilcoxon signed-rank test of ``a - b``."""

    statistic: float
    p_value: float
    n: int
    median_difference: float


def paired_wilcoxon(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> WilcoxonResult:
    """Two-sided paired Wilcoxon signed-rank test (``scipy.stats.wilcoxon``) of ``a`` vs ``b``.

    Pairs where either value is not finite are dropped. When every remaining difference is
    zero the test has nothing to rank: the result is statistic 0, p = 1 (no evidence of a
    difference). With no pair left the statistic and p-value are NaN.

    Raises:
        EvaluationError: ``a`` and ``b`` differ in length.
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise EvaluationError(f"paired samples differ in length: {x.size} vs {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    if n == 0:
        return WilcoxonResult(float("nan"), float("nan"), 0, float("nan"))
    diff = x - y
    median_diff = float(np.median(diff))
    if np.all(diff == 0):
        return WilcoxonResult(0.0, 1.0, n, median_diff)
    res = sps.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
    return WilcoxonResult(float(res.statistic), float(res.pvalue), n, median_diff)


@dataclass(frozen=True)
class Comparison:
    """One row of the model-comparison table."""

    model_a: str
    model_b: str
    n_patients: int
    median_a: float
    median_b: float
    median_difference: float
    statistic: float
    p_value: float
    p_holm: float
    significant: bool


def pairwise_comparisons(
    per_patient: Mapping[str, Mapping[str, float]], *, alpha: float = 0.05
) -> list[Comparison]:
    """Wilcoxon signed-rank tests between every pair of models, Holm-corrected over all pairs.

    Args:
        per_patient: ``{model: {patient_id: value}}`` (per-patient Dice). Each pair is tested on
            the patients both models were scored on.
        alpha: Family-wise significance level for the ``significant`` flag.

    Returns:
        One :class:`Comparison` per unordered pair, in the order of ``itertools.combinations``
        over the given model order.

    Raises:
        EvaluationError: ``alpha`` outside (0, 1).
    """
    if not 0.0 < alpha < 1.0:
        raise EvaluationError(f"alpha {alpha!r} must be in (0, 1)")
    rows = []
    for name_a, name_b in itertools.combinations(list(per_patient), 2):
        va, vb = per_patient[name_a], per_patient[name_b]
        common = sorted(set(va) & set(vb))
        if len(common) < len(set(va) | set(vb)):
            logger.warning(
                "comparison %s vs %s: only %d patients scored by both models (of %d)",
                name_a, name_b, len(common), len(set(va) | set(vb)),
            )
        a = np.array([va[p] for p in common], dtype=np.float64)
        b = np.array([vb[p] for p in common], dtype=np.float64)
        test = paired_wilcoxon(a, b)
        rows.append((name_a, name_b, a, b, test))
    adjusted = holm([r[4].p_value for r in rows]) if rows else np.array([])
    out = []
    for (name_a, name_b, a, b, test), p_adj in zip(rows, adjusted):
        out.append(
            Comparison(
                model_a=name_a, model_b=name_b, n_patients=test.n,
                median_a=_nanmedian(a), median_b=_nanmedian(b),
                median_difference=test.median_difference, statistic=test.statistic,
                p_value=test.p_value, p_holm=float(p_adj),
                significant=bool(math.isfinite(p_adj) and p_adj <= alpha),
            )
        )
    return out


def _nanmedian(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")
