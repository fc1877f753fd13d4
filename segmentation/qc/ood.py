"""Input out-of-distribution score: Mahalanobis distance of pooled encoder features.

:class:`EncoderFeatures` runs the encoder of a model folder's network (the first fold) on a
preprocessed batch and global-average-pools its two deepest stages into one vector per frame
(ResNet-18: 256 + 512 values). :class:`FeatureGaussian` holds the mean and the shrunk inverse
covariance of these vectors over the model's training frames (Ledoit-Wolf shrinkage towards a
scaled identity, so a few hundred frames give a well-conditioned estimate), and the
distribution of the training frames' own distances; :meth:`FeatureGaussian.distance` is the
Mahalanobis distance of new frames. Frames unlike anything the model was trained on (other
anatomy, no contrast, corrupted, another modality) lie far out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from segmentation.errors import ModelError
from segmentation.models.folder import ModelFolder
from segmentation.qc.errors import QualityError

logger = logging.getLogger(__name__)

#: Encoder stages pooled (counted from the deepest).
POOLED_STAGES = 2


class EncoderFeatures:
    """Pooled features of the deepest encoder stages of one fold's network.

    Args:
        folder: The loaded model folder.
        device: Where the encoder runs.
        fold: Which fold's encoder (default: the first).

    Raises:
        ModelError: the network has no ``encoder`` (not a segmentation_models_pytorch model).
    """

    def __init__(self, folder: ModelFolder, *, device: torch.device | str = "cpu", fold: int | None = None) -> None:
        model = folder.build(fold, device=device)
        encoder = getattr(model, "encoder", None)
        if encoder is None:
            raise ModelError(f"{folder.path}: the network has no encoder to take features from")
        self.encoder = encoder.eval()
        self.device = torch.device(device)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``(N, C, P, P)`` float32 preprocessed batch -> ``(N, D)`` float64 features."""
        out = []
        with torch.inference_mode():
            for start in range(0, batch.shape[0], 8):
                x = torch.from_numpy(np.ascontiguousarray(batch[start:start + 8])).to(self.device)
                stages = self.encoder(x)[-POOLED_STAGES:]
                out.append(torch.cat([s.float().mean(dim=(2, 3)) for s in stages], dim=1).cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 0))


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of rows ``x`` (N, D) and the shrinkage used (0..1)."""
    n, d = x.shape
    xc = x - x.mean(axis=0)
    s = xc.T @ xc / n
    mu = np.trace(s) / d
    delta = s.copy()
    delta[np.diag_indices(d)] -= mu
    delta2 = float((delta * delta).sum()) / d
    x2 = xc * xc
    beta2 = float(((x2.T @ x2).sum() / n - (s * s).sum()) / (d * n))
    beta2 = min(beta2, delta2)
    shrink = beta2 / delta2 if delta2 > 0 else 1.0
    cov = (1 - shrink) * s
    cov[np.diag_indices(d)] += shrink * mu
    return cov, float(shrink)


@dataclass(frozen=True)
class FeatureGaussian:
    """Mean and precision of training features; distances of the training frames themselves."""

    mean: np.ndarray
    precision: np.ndarray
    train_distances: np.ndarray
    shrinkage: float

    @classmethod
    def fit(cls, features: np.ndarray) -> FeatureGaussian:
        """Fit on ``(N, D)`` training features.

        Raises:
            QualityError: fewer than 3 frames or non-finite values.
        """
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[0] < 3:
            raise QualityError(f"need (N >= 3, D) training features, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise QualityError("training features hold non-finite values")
        cov, shrink = ledoit_wolf(x)
        cov[np.diag_indices_from(cov)] += 1e-9 * max(1e-12, float(np.trace(cov)) / cov.shape[0])
        precision = np.linalg.inv(cov)
        g = cls(mean=x.mean(axis=0), precision=precision, train_distances=np.zeros(0), shrinkage=shrink)
        return cls(mean=g.mean, precision=precision, train_distances=np.sort(g.distance(x)), shrinkage=shrink)

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distances ``(N,)`` of ``(N, D)`` features.

        Raises:
            QualityError: the feature length differs from the fitted one.
        """
        x = np.atleast_2d(np.asarray(features, np.float64))
        if x.shape[1] != self.mean.shape[0]:
            raise QualityError(f"features have {x.shape[1]} values, the fitted statistics {self.mean.shape[0]}")
        d = x - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))

    def train_quantile(self, q: float) -> float:
        """The ``q`` quantile of the training frames' own distances."""
        return float(np.quantile(self.train_distances, q))
