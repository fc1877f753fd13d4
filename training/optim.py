"""Optimizers of the training recipes (the paper's three, with the libraries' defaults otherwise)."""

from __future__ import annotations

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


__all__ = ["OPTIMIZERS", "build_optimizer"]
