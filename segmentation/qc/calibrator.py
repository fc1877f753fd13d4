"""The calibrator: QC features -> P(frame Dice >= 0.8), monotone in every feature.

A logistic regression on standardised features whose weights are sign-constrained: each
feature has a declared direction (:data:`DIRECTIONS`: +1 = a larger value means a better frame,
-1 = a worse one) and its weight may only have that sign (0 allowed), so the estimate is
monotone in each feature by construction (a frame further out of distribution never gets a
higher quality). Fitted with L-BFGS-B under the sign bounds and a small L2 penalty; a missing
feature value (NaN, e.g. the temporal consistency of a single-frame image) is replaced by its
training mean, i.e. it leaves the estimate where the other features put it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from segmentation.qc.errors import QualityError

logger = logging.getLogger(__name__)

#: Every QC feature and its direction (+1: larger is better; -1: larger is worse).
DIRECTIONS: dict[str, int] = {
    "ood_log_distance": -1,     # log Mahalanobis distance of encoder features (ood)
    "flip_dice": +1,            # flip-TTA agreement (disagreement)
    "boundary_entropy": -1,     # entropy in the boundary band (disagreement)
    "temporal_dice": +1,        # agreement with neighbouring frames (temporal)
    "shape_implausibility": -1, # RMS z-score of the shape against training masks (shape)
    "components": -1,           # components of the thresholded map (shape)
    "mask_contrast": +1,        # outlined region darker than its surroundings (contrast)
    "confidence": +1,           # the old probability-margin confidence
}
FEATURES: tuple[str, ...] = tuple(DIRECTIONS)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


@dataclass(frozen=True)
class Calibrator:
    """Fitted monotone logistic calibrator (see the module docstring)."""

    features: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        *,
        features: Sequence[str] = FEATURES,
        l2: float = 1e-2,
        sample_weight: np.ndarray | None = None,
    ) -> Calibrator:
        """Fit on feature rows ``x`` (N, len(features)) and labels ``y`` (1 = Dice >= 0.8).

        Raises:
            QualityError: unknown feature names, shapes that disagree, or a single class.
        """
        from scipy.optimize import minimize

        features = tuple(features)
        unknown = [f for f in features if f not in DIRECTIONS]
        if unknown:
            raise QualityError(f"unknown QC features {unknown}; known: {', '.join(FEATURES)}")
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64).ravel()
        if x.ndim != 2 or x.shape != (len(y), len(features)):
            raise QualityError(f"x must be (N, {len(features)}) with N = {len(y)} labels, got {x.shape}")
        if len(np.unique(y)) < 2:
            raise QualityError("the calibrator needs frames of both classes (Dice >= 0.8 and < 0.8)")
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
        mean = np.nanmean(x, axis=0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        xi = np.where(np.isnan(x), mean, x)
        std = xi.std(axis=0)
        std = np.where(std > 1e-9, std, 1.0)
        z = (xi - mean) / std
        signs = np.array([DIRECTIONS[f] for f in features], np.float64)
        wsum = w.sum()

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            b, v = theta[0], theta[1:]
            logit = b + z @ (signs * v)
            p = _sigmoid(logit)
            eps = 1e-12
            nll = -np.sum(w * (y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))) / wsum
            g = w * (p - y) / wsum
            grad = np.concatenate([[g.sum()], signs * (z.T @ g) + 2 * l2 * v])
            return nll + l2 * float(v @ v), grad

        theta0 = np.zeros(1 + len(features))
        bounds = [(None, None)] + [(0.0, None)] * len(features)
        res = minimize(loss, theta0, jac=True, method="L-BFGS-B", bounds=bounds)
        if not res.success:
            logger.warning("calibrator fit did not converge: %s", res.message)
        coef = signs * res.x[1:]
        return cls(features=features, mean=mean, std=std, coef=coef, intercept=float(res.x[0]))

    def _z(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, np.float64))
        if x.shape[1] != len(self.features):
            raise QualityError(f"expected {len(self.features)} features {self.features}, got {x.shape[1]}")
        return (np.where(np.isnan(x), self.mean, x) - self.mean) / self.std

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(Dice >= 0.8) per row of ``x`` (N, len(features)); float64 ``(N,)``."""
        return _sigmoid(self.intercept + self._z(x) @ self.coef)

    def predict_dicts(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """:meth:`predict` on feature dicts (keys: :attr:`features`; missing -> NaN)."""
        x = np.array([[float(r.get(f, math.nan)) for f in self.features] for r in rows], np.float64)
        return self.predict(x.reshape(len(rows), len(self.features)))

    def to_json_dict(self) -> dict:
        """JSON form (stored in qc.json)."""
        return {
            "kind": "monotone-logistic",
            "features": list(self.features),
            "directions": [DIRECTIONS[f] for f in self.features],
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "coef": [float(v) for v in self.coef],
            "intercept": float(self.intercept),
        }

    @classmethod
    def from_json_dict(cls, data: Mapping) -> Calibrator:
        """Inverse of :meth:`to_json_dict`.

        Raises:
            QualityError: another kind, unknown features, lengths that disagree, or a weight whose
                sign contradicts its feature's direction.
        """
        if data.get("kind") != "monotone-logistic":
            raise QualityError(f"calibrator kind {data.get('kind')!r} is not 'monotone-logistic'")
        features = tuple(data["features"])
        unknown = [f for f in features if f not in DIRECTIONS]
        if unknown:
            raise QualityError(f"unknown QC features {unknown}; known: {', '.join(FEATURES)}")
        arrays = [np.asarray(data[k], np.float64) for k in ("mean", "std", "coef")]
        if any(a.shape != (len(features),) for a in arrays):
            raise QualityError(f"calibrator arrays must hold {len(features)} values each")
        mean, std, coef = arrays
        wrong = [f for f, c in zip(features, coef) if c * DIRECTIONS[f] < 0]
        if wrong:
            raise QualityError(f"calibrator weights contradict the declared direction of {wrong}")
        return cls(features=features, mean=mean, std=std, coef=coef, intercept=float(data["intercept"]))
