"""The hyper-parameter search space of the benchmark (Table 1 of the paper).

Five categorical hyper-parameters: architecture, encoder, input size, optimizer and learning
rate (the paper tuned the learning rate over three fixed values, so it is categorical too).
Everything else (batch-size rule, epochs, augmentation...) comes from the base training
configuration and is held constant, as in the paper.

``conf/tune.yaml`` holds the space (section ``search_space``); :func:`suggest` draws one point
for an Optuna trial and :func:`apply_params` turns it into a :class:`~training.config.TrainConfig`
with :func:`dataclasses.replace`. Input size 624 is kept: the model zoo pads it to 640 for the
architectures that need a multiple of 32 (``segmentation.models.zoo.padded_input_size``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tavicore.config import ConfigError, setting
from training.config import ModelConfig, OptimConfig, TrainConfig

logger = logging.getLogger(__name__)

#: Names of the searched hyper-parameters, in the order they are suggested.
PARAM_NAMES = ("architecture", "encoder", "input_size", "optimizer", "lr")

#: The paper's Table 1, in this project's names (smp architecture / encoder names).
PAPER_SEARCH_SPACE: dict[str, tuple[Any, ...]] = {
    "architecture": ("unetplusplus", "linknet", "fpn", "pspnet", "deeplabv3plus", "manet"),
    "encoder": (
        "efficientnet-b0", "efficientnet-b4", "se_resnext50_32x4d", "resnet50", "resnet101",
        "se_resnext101_32x4d", "tu-regnetx_120",
    ),
    "input_size": (512, 624, 896),
    "optimizer": ("adam", "radam", "rmsprop"),
    "lr": (1e-3, 1e-4, 1e-5),
}

OptimizerName = Literal["adam", "radam", "rmsprop"]


@dataclass(frozen=True)
class SearchSpace:
    """Candidate values of each searched hyper-parameter (each a non-empty, duplicate-free list)."""

    architecture: tuple[str, ...] = setting(
        PAPER_SEARCH_SPACE["architecture"], doc="smp architectures (segmentation.models.zoo)"
    )
    encoder: tuple[str, ...] = setting(PAPER_SEARCH_SPACE["encoder"], doc="smp encoders")
    input_size: tuple[int, ...] = setting(
        PAPER_SEARCH_SPACE["input_size"], ge=32, le=2048, doc="square input sizes (px)"
    )
    optimizer: tuple[OptimizerName, ...] = setting(
        PAPER_SEARCH_SPACE["optimizer"], doc="optimizers"
    )
    lr: tuple[float, ...] = setting(PAPER_SEARCH_SPACE["lr"], gt=0.0, le=1.0, doc="learning rates")

    def __post_init__(self) -> None:
        for name in PARAM_NAMES:
            values = getattr(self, name)
            if not values:
                raise ValueError(f"search_space.{name}: needs at least one value")
            if len(set(values)) != len(values):
                raise ValueError(f"search_space.{name}: duplicate values in {list(values)}")

    def restrict(self, architecture: str) -> SearchSpace:
        """The same space with a single architecture (the paper tuned each one separately).

        Raises:
            ConfigError: ``architecture`` is not one of the space's architectures.
        """
        if architecture not in self.architecture:
            raise ConfigError(
                f"architecture {architecture!r} is not in the search space; "
                f"valid: {', '.join(self.architecture)}"
            )
        return dataclasses.replace(self, architecture=(architecture,))

    def size(self) -> int:
        """Number of distinct configurations in the space."""
        n = 1
        for name in PARAM_NAMES:
            n *= len(getattr(self, name))
        return n

    def as_dict(self) -> dict[str, list[Any]]:
        """The candidate values per hyper-parameter, as plain lists."""
        return {name: list(getattr(self, name)) for name in PARAM_NAMES}


def check_search_space(space: SearchSpace) -> None:
    """Check architecture and encoder names against the model zoo.

    Raises:
        ConfigError: an unknown name (the message lists the valid ones).
    """
    from segmentation.models import zoo

    bad = [a for a in space.architecture if a not in zoo.ARCHITECTURES]
    if bad:
        raise ConfigError(
            f"search_space.architecture: unknown {bad}; valid: {', '.join(zoo.ARCHITECTURES)}"
        )
    known = tuple(zoo.PAPER_ENCODERS) + tuple(zoo.SMALL_ENCODERS)
    bad = [e for e in space.encoder if e not in known]
    if bad:
        raise ConfigError(f"search_space.encoder: unknown {bad}; valid: {', '.join(known)}")


def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """Draw one configuration for an Optuna trial (every parameter categorical).

    Args:
        trial: An ``optuna.trial.Trial``.
        space: The search space.

    Returns:
        ``{"architecture": ..., "encoder": ..., "input_size": ..., "optimizer": ..., "lr": ...}``
    """
    return {name: trial.suggest_categorical(name, list(getattr(space, name))) for name in PARAM_NAMES}


def apply_params(base: TrainConfig, params: Mapping[str, Any]) -> TrainConfig:
    """The base training configuration with a trial's hyper-parameters applied.

    Args:
        base: Configuration providing everything held constant during tuning.
        params: Mapping with the keys of :data:`PARAM_NAMES` (missing keys keep the base value).

    Returns:
        A new frozen :class:`TrainConfig` (``dataclasses.replace``; ``base`` is unchanged).

    Raises:
        ConfigError: an unknown parameter name.
    """
    unknown = [k for k in params if k not in PARAM_NAMES]
    if unknown:
        raise ConfigError(f"unknown tuning parameter(s) {unknown}; valid: {', '.join(PARAM_NAMES)}")
    model: ModelConfig = base.model
    optim: OptimConfig = base.optim
    model = dataclasses.replace(
        model,
        architecture=str(params.get("architecture", model.architecture)),
        encoder=str(params.get("encoder", model.encoder)),
        input_size=int(params.get("input_size", model.input_size)),
    )
    optim = dataclasses.replace(
        optim,
        name=str(params.get("optimizer", optim.name)),
        lr=float(params.get("lr", optim.lr)),
    )
    return dataclasses.replace(base, model=model, optim=optim)
