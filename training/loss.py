"""The paper's loss (soft Dice over the batch) and the hard Dice used to pick the best epoch.

Soft Dice (docs/benchmark.md, "Protocol")::

    Loss = 1 - (2 * sum(y * p) + eps) / (sum(y) + sum(p) + eps),   eps = 1e-7

with ``p`` the sigmoid probabilities and ``y`` the binary ground truth, the sums running over
every pixel of every frame of the batch (one ratio per batch, not a mean of per-frame ratios).

``loss: dice_bce`` (not the paper's; :class:`DiceBCELoss`) adds the mean binary cross-entropy
of every pixel. The batch ratio charges an outline on a frame without a root (empty ground
truth, e.g. before the injection) like any false-positive area of the batch; cross-entropy
charges each of its pixels directly, whatever the rest of the batch holds. It is the training
loss only: the validation loss in the logs stays the soft Dice, and the best epoch is chosen on
the hard Dice either way.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: The paper's smoothing constant.
DICE_EPS = 1e-7


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` as fp32 when it is half precision or not floating point (sums stay accurate)."""
    if not torch.is_floating_point(x) or x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def soft_dice_loss(probabilities: torch.Tensor, target: torch.Tensor, eps: float = DICE_EPS) -> torch.Tensor:
    """Soft Dice loss of a whole batch.

    Args:
        probabilities: Predicted foreground probabilities in [0, 1], any shape.
        target: Ground truth of the same shape (0/1, bool or float).
        eps: Smoothing constant (paper: 1e-7).

    Returns:
        A 0-d tensor ``1 - (2*sum(y*p) + eps) / (sum(y) + sum(p) + eps)``, computed in at least fp32.

    Raises:
        ValueError: the shapes differ.
    """
    if probabilities.shape != target.shape:
        raise ValueError(
            f"soft_dice_loss: prediction shape {tuple(probabilities.shape)} != target shape "
            f"{tuple(target.shape)}"
        )
    p = _at_least_fp32(probabilities)
    y = target.to(p.dtype)
    intersection = (p * y).sum()
    return 1.0 - (2.0 * intersection + eps) / (y.sum() + p.sum() + eps)


class SoftDiceLoss(nn.Module):
    """Soft Dice loss on logits (sigmoid first), one ratio per batch; see :func:`soft_dice_loss`."""

    def __init__(self, eps: float = DICE_EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Takes raw logits (N, 1, H, W) and the target of the same shape; returns the loss."""
        return soft_dice_loss(torch.sigmoid(_at_least_fp32(logits)), target, self.eps)


class DiceBCELoss(nn.Module):
    """Soft Dice over the batch plus the mean binary cross-entropy (module docstring)."""

    def __init__(self, eps: float = DICE_EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Takes raw logits (N, 1, H, W) and the target of the same shape; returns the loss."""
        z = _at_least_fp32(logits)
        bce = nn.functional.binary_cross_entropy_with_logits(z, target.to(z.dtype))
        return soft_dice_loss(torch.sigmoid(z), target, self.eps) + bce


#: ``loss`` setting -> loss module.
LOSSES = {"dice": SoftDiceLoss, "dice_bce": DiceBCELoss}


def make_loss(name: str) -> nn.Module:
    """The training loss named ``name`` (a key of :data:`LOSSES`).

    Raises:
        ValueError: an unknown name (the known ones are listed).
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]()


def dice_per_frame(
    logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5, eps: float = DICE_EPS
) -> torch.Tensor:
    """Hard Dice of each frame: the prediction is ``sigmoid(logits) > threshold``.

    Args:
        logits: Raw model output (N, 1, H, W) or (N, H, W).
        target: Ground truth of the same shape.
        threshold: Probability threshold.
        eps: Smoothing; a frame with empty prediction and empty ground truth scores 1.

    Returns:
        float32 tensor (N,) of Dice scores.

    Raises:
        ValueError: the shapes differ.
    """
    if logits.shape != target.shape:
        raise ValueError(
            f"dice_per_frame: prediction shape {tuple(logits.shape)} != target shape {tuple(target.shape)}"
        )
    pred = (torch.sigmoid(logits.float()) > threshold).flatten(1).float()
    y = (target > 0.5).flatten(1).float()
    intersection = (pred * y).sum(dim=1)
    return (2.0 * intersection + eps) / (pred.sum(dim=1) + y.sum(dim=1) + eps)
