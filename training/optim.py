"""Optimizers of the training recipes (the paper's three, with the libraries' defaults otherwise)."""

from __future__ import annotations

import math

import torch

from training.config import OptimConfig
from training.errors import TrainingError

#: Optimizer name -> class.
OPTIMIZERS = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam, "rmsprop": torch.optim.RMSprop}


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """Adam, RAdam or RMSprop over the model's parameters (library defaults otherwise).

    Raises:
        TrainingError: unknown optimizer name.
    """
    if optim.name not in OPTIMIZERS:
        raise TrainingError(f"unknown optimizer {optim.name!r}; valid: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[optim.name](model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)


def epoch_lr(optim: OptimConfig, epoch: int, epochs: int) -> float:
    """Learning rate of ``epoch`` (1-based) out of ``epochs`` under ``optim.schedule``.

    Stateless (a function of the epoch number only), so a resumed run continues the same curve:
    ``constant`` gives ``optim.lr``; ``cosine`` falls from ``optim.lr`` at epoch 1 to
    ``optim.lr * optim.final_lr_fraction`` at the last epoch along half a cosine.
    """
    if optim.schedule == "constant" or epochs <= 1:
        return optim.lr
    low = optim.lr * optim.final_lr_fraction
    progress = (min(max(epoch, 1), epochs) - 1) / (epochs - 1)
    return low + (optim.lr - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr


__all__ = ["OPTIMIZERS", "build_optimizer", "epoch_lr", "set_lr"]
