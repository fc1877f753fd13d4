"""Typed training configuration: ``conf/train/*.yaml`` -> :class:`TrainConfig`.

One YAML file per configuration (see ``conf/train/``)::

    model: {architecture: manet, encoder: efficientnet-b4, input_size: 896}
    optim: {name: rmsprop, lr: 1.0e-3}
    epochs: 35
    batch_size: auto

Every key is checked by the project's one loader (:mod:`tavicore.config`): unknown or mistyped
keys, wrong types and out-of-range values raise :class:`~tavicore.config.ConfigError` naming the
file and the dotted key. Architecture and encoder names are checked against the model zoo.

The augmentation defaults are the paper's parameters (docs/benchmark.md, "Protocol"), written
in their Albumentations 2.x form (see :mod:`training.augment` for the 1.x -> 2.x mapping).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tavicore.config import CONF_DIR, ConfigError, load_config, setting

logger = logging.getLogger(__name__)

#: Batch size used when ``batch_size: auto`` runs on a CPU (the GPU memory search needs a GPU).
CPU_AUTO_BATCH_SIZE = 2


@dataclass(frozen=True)
class ModelConfig:
    """Which network to train: an smp architecture, an encoder and the square input size."""

    architecture: str = setting(doc="smp architecture name (segmentation.models.zoo.ARCHITECTURES)")
    encoder: str = setting(doc="smp encoder name (segmentation.models.zoo)")
    input_size: int = setting(512, ge=32, le=2048, doc="frames are resized to this square size")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer of the paper's search space (Table 1) and its learning rate."""

    name: Literal["adam", "radam", "rmsprop"] = setting("adam", doc="optimizer")
    lr: float = setting(1e-3, gt=0.0, le=1.0, doc="learning rate")
    weight_decay: float = setting(0.0, ge=0.0, le=1.0, doc="L2 weight decay")
    schedule: Literal["constant", "cosine"] = setting(
        "constant", doc="learning rate over the epochs: constant (the paper) or cosine decay to lr * final_lr_fraction"
    )
    final_lr_fraction: float = setting(0.01, ge=0.0, le=1.0, doc="cosine schedule: last epoch's lr as a fraction of lr")


@dataclass(frozen=True)
class AugmentConfig:
    """The paper's augmentation pipeline; the defaults are the published parameters.

    Order (as published): horizontal flip; shift-scale-rotate (Albumentations 2.x ``Affine``);
    pad-if-needed; Gaussian noise; perspective; random brightness/contrast; hue-saturation-value.
    """

    enabled: bool = setting(True, doc="apply the training augmentation (validation never does)")
    hflip_p: float = setting(0.5, ge=0.0, le=1.0, doc="horizontal flip probability")
    affine_p: float = setting(0.5, ge=0.0, le=1.0, doc="shift-scale-rotate probability")
    shift_limit: float = setting(0.0625, ge=0.0, le=0.5, doc="max shift, fraction of the size")
    scale_limit: float = setting(0.1, ge=0.0, le=0.9, doc="scale in [1 - limit, 1 + limit]")
    rotate_limit: float = setting(15.0, ge=0.0, le=180.0, doc="max rotation in degrees")
    border_mode: Literal["constant", "reflect_101", "replicate"] = setting(
        "constant", doc="border handling of the affine/perspective warps (authors' code: constant)"
    )
    noise_p: float = setting(0.2, ge=0.0, le=1.0, doc="Gaussian noise probability")
    noise_var_limit: tuple[float, float] = setting(
        (3.0, 10.0), ge=0.0, le=65025.0, doc="noise variance range in 8-bit grey levels squared"
    )
    perspective_p: float = setting(0.5, ge=0.0, le=1.0, doc="perspective probability")
    perspective_scale: tuple[float, float] = setting(
        (0.05, 0.1), ge=0.0, le=0.5, doc="perspective corner jitter (std, fraction of the size)"
    )
    brightness_contrast_p: float = setting(0.9, ge=0.0, le=1.0, doc="brightness/contrast probability")
    brightness_limit: float = setting(0.2, ge=0.0, le=1.0, doc="brightness shift, fraction of 255")
    contrast_limit: float = setting(0.2, ge=0.0, le=1.0, doc="contrast factor in [1 - l, 1 + l]")
    hsv_p: float = setting(0.9, ge=0.0, le=1.0, doc="hue-saturation-value probability")
    hue_shift_limit: float = setting(20.0, ge=0.0, le=180.0, doc="hue shift (no effect on grey)")
    sat_shift_limit: float = setting(30.0, ge=0.0, le=255.0, doc="saturation shift (no effect on grey)")
    val_shift_limit: float = setting(20.0, ge=0.0, le=255.0, doc="value shift = grey offset")

    def __post_init__(self) -> None:
        for name in ("noise_var_limit", "perspective_scale"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"augment.{name}: range {low}..{high} is reversed (low > high)")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs besides the data set and the output folder."""

    model: ModelConfig = setting(doc="network to train")
    optim: OptimConfig = setting(default_factory=OptimConfig, doc="optimizer")
    epochs: int = setting(35, ge=1, le=10000, doc="training epochs per fold (paper: 35)")
    loss: Literal["dice", "dice_bce"] = setting(
        "dice", doc="dice: soft Dice over the batch (paper); dice_bce: plus pixel cross-entropy")
    batch_size: int | Literal["auto"] = setting(
        "auto", ge=1, doc="frames per batch, or 'auto' (GPU: ~70-90% of GPU memory; CPU: 2)"
    )
    memory_fraction: tuple[float, float] = setting(
        (0.7, 0.9), ge=0.05, le=0.98, doc="target GPU memory fraction of batch_size: auto"
    )
    max_batch_size: int = setting(256, ge=1, le=65536, doc="upper bound of the auto batch search")
    augment: AugmentConfig = setting(default_factory=AugmentConfig, doc="training augmentation")
    amp: bool = setting(True, doc="mixed precision on GPU (bf16 where supported, else fp16)")
    amp_dtype: Literal["auto", "bf16", "fp16"] = setting("auto", doc="autocast dtype on GPU")
    channels_last: bool = setting(True, doc="channels-last memory format (GPU and CPU)")
    seed: int = setting(0, ge=0, le=2**31 - 1, doc="seed of weights init, shuffling, augmentation")
    num_workers: int = setting(0, ge=0, le=64, doc="DataLoader worker processes")
    device: str = setting("auto", doc="'auto', 'cpu', 'cuda' or 'cuda:N'")
    deterministic: bool = setting(True, doc="deterministic algorithms on CPU (bitwise resume)")
    cpu_threads: int | None = setting(
        None, ge=1, le=1024, doc="torch CPU threads during training (None: torch's default); CPU "
        "results depend on it, and 1 avoids oversubscription on a busy machine"
    )
    threshold: float = setting(0.5, gt=0.0, lt=1.0, doc="probability threshold of the Dice score")
    max_train_frames: int | None = setting(None, ge=1, doc="cap on training frames (quick runs)")
    max_val_frames: int | None = setting(None, ge=1, doc="cap on validation frames (quick runs)")

    def __post_init__(self) -> None:
        low, high = self.memory_fraction
        if low > high:
            raise ValueError(f"memory_fraction: range {low}..{high} is reversed (low > high)")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device: {self.device!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")


def check_model_names(model: ModelConfig, *, source: str = "") -> ModelConfig:
    """Check the architecture and encoder names against the model zoo.

    Args:
        model: The model section.
        source: File name for the error message.

    Returns:
        ``model`` with the canonical zoo names (aliases resolved, lower case).

    Raises:
        ConfigError: an unknown architecture or encoder (the message lists the valid ones).
    """
    from segmentation.errors import ModelError
    from segmentation.models import zoo

    prefix = f"{source}: " if source else ""
    try:
        architecture = zoo.canonical_architecture(model.architecture)
    except ModelError as exc:
        raise ConfigError(f"{prefix}model.architecture: {exc}") from None
    try:
        encoder = zoo.canonical_encoder(model.encoder)
    except ModelError as exc:
        raise ConfigError(f"{prefix}model.encoder: {exc}") from None
    return dataclasses.replace(model, architecture=architecture, encoder=encoder)


def train_config_names() -> list[str]:
    """Names of the shipped training configurations (``conf/train/<name>.yaml``)."""
    return sorted(p.stem for p in (CONF_DIR / "train").glob("*.yaml"))


def resolve_train_config(name: str | Path) -> Path:
    """The one way a training configuration is named: an existing file, or the bare name of a
    shipped one (``cpu_demo`` or ``cpu_demo.yaml`` -> ``conf/train/cpu_demo.yaml``).

    Raises:
        ConfigError: neither a file nor a shipped name (the message lists the shipped names).
    """
    path = Path(name)
    if path.is_file():
        return path
    shipped = CONF_DIR / "train" / f"{path.name.removesuffix('.yaml')}.yaml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise ConfigError(f"{name}: training configuration not found (neither a file nor a shipped name); shipped: "
                      f"{', '.join(train_config_names())}")


def load_train_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Load a training configuration file, apply dotted-key overrides and validate it.

    Args:
        path: YAML file, or the name of a shipped one (:func:`resolve_train_config`).
        overrides: ``{"optim.lr": 1e-4, "epochs": 2}`` applied on top of the file.

    Returns:
        The validated :class:`TrainConfig`.

    Raises:
        ConfigError: missing/malformed file, unknown key, bad value or unknown model name.
    """
    path = resolve_train_config(path)
    cfg = load_config(path, TrainConfig, overrides=overrides)
    cfg = dataclasses.replace(cfg, model=check_model_names(cfg.model, source=str(path)))
    logger.debug("loaded training config %s", path)
    return cfg
