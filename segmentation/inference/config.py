"""The one inference-settings schema, :class:`InferenceConfig`, loaded by :mod:`tavicore.config`.

Every command that runs a model folder reads it, so a switch means the same everywhere:
``taviseg predict`` loads ``conf/inference.yaml`` (the whole file is an InferenceConfig); the
node reads the ``processing.inference`` section of ``conf/node.yaml``
(:class:`dicom_node.config.ProcessingConfig`), ``taviseg evaluate`` the ``inference`` section of
``conf/evaluate.yaml`` (:class:`training.evaluate.EvaluateConfig`). The engine is built from it
with :meth:`segmentation.inference.engine.InferenceEngine.from_config`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tavicore.config import CONF_DIR, ConfigError, load_config, setting

#: The default configuration file.
DEFAULT_INFERENCE_CONFIG = CONF_DIR / "inference.yaml"

Backend = Literal["auto", "eager", "onnx", "onnx-int8", "openvino-bf16", "bf16"]


@dataclass(frozen=True)
class PostprocessConfig:
    """Mask post-processing, each step switchable (applied in this order)."""

    threshold: float | None = setting(
        None, gt=0.0, lt=1.0, doc="probability threshold; null = the model folder's threshold"
    )
    keep_largest_component: bool = setting(True, doc="keep only the largest 8-connected component")
    fill_holes: bool = setting(True, doc="fill holes enclosed by the mask")


@dataclass(frozen=True)
class ConfidenceConfig:
    """Per-frame confidence (see segmentation.inference.confidence)."""

    margin_fraction: float = setting(
        0.05, ge=0.0, le=1.0,
        doc="neighbourhood of the predicted region, as a fraction of the frame's shorter side",
    )
    flag_below: float = setting(0.8, ge=0.0, le=1.0, doc="frames below this are flagged low-confidence")


@dataclass(frozen=True)
class InferenceConfig:
    """How to run a model folder on frames."""

    device: str = setting("auto", doc="auto (CUDA if available, else CPU), cpu, cuda or cuda:N")
    backend: Backend = setting(
        "auto", doc="auto (GPU: eager + bf16/fp16 autocast; CPU: the model folder's int8 variant when it has "
        "one, else OpenVINO bf16 on CPUs with native bf16 (avx512_bf16/amx_bf16) and openvino installed, else "
        "ONNX Runtime fp32), eager, onnx (fp32), onnx-int8 (CPU only), openvino-bf16 (CPU with native bf16 "
        "only), bf16"
    )
    batch_size: int = setting(8, ge=1, le=1024, doc="frames per forward pass")
    folds: tuple[int, ...] | None = setting(None, doc="folds to ensemble; null = all folds present")
    tta: bool = setting(False, doc="horizontal-flip test-time augmentation")
    channels_last: bool = setting(True, doc="channels-last memory format for the eager backends")
    threads: int = setting(0, ge=0, le=512, doc="CPU threads for torch/ONNX Runtime/OpenVINO; 0 = default")
    onnx_cache_dir: Path | None = setting(None, doc="exported .onnx cache; null = user cache dir")
    host_threads: int = setting(
        2, ge=0, le=64, doc="threads that pre- and post-process frames while the model runs; 0 = none"
    )
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)


#: The keys of an ``inference`` section.
INFERENCE_KEYS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(InferenceConfig))


def check_inference_section(data: Mapping[str, Any] | None, where: str, own_keys: Iterable[str] = ()) -> None:
    """Refuse inference settings written beside their ``inference:`` section instead of in it.

    Configurations written before the settings had one schema put ``device``, ``backend``,
    ``batch_size``... directly in the node's ``processing`` section or at the top of
    ``evaluate.yaml``; the message says where they go now.

    Args:
        data: The raw mapping holding the ``inference`` section (not checked if not a mapping).
        where: Its dotted name in error messages (``"processing"``; ``""`` for the top level).
        own_keys: Keys of ``data`` that are not inference settings though named like one
            (``confidence`` in evaluate.yaml is the bootstrap level).

    Raises:
        ConfigError: naming each misplaced key and its new place.
    """
    if not isinstance(data, Mapping):
        return
    own = set(own_keys)
    stray = [str(k) for k in data if k in INFERENCE_KEYS and k not in own]
    if stray:
        prefix = f"{where}." if where else ""
        moved = ", ".join(f"{prefix}{k} -> {prefix}inference.{k}" for k in stray)
        raise ConfigError(
            f"{prefix}{stray[0]}: inference settings belong in the {prefix}inference section "
            f"(segmentation.inference.config.InferenceConfig, as in conf/inference.yaml); move {moved}"
        )


def default_onnx_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/taviseg/onnx`` (``~/.cache/taviseg/onnx`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "taviseg" / "onnx"


def load_inference_config(path: str | Path | None = None, overrides: dict | None = None) -> InferenceConfig:
    """Load ``conf/inference.yaml`` (or ``path``) into an :class:`InferenceConfig`.

    Raises:
        tavicore.config.ConfigError: unknown key, wrong type or out-of-range value.
    """
    return load_config(path or DEFAULT_INFERENCE_CONFIG, InferenceConfig, overrides=overrides)
