"""The benchmark's model zoo: six smp architectures x the paper's encoders, built offline.

Every model is a ``segmentation_models_pytorch`` network with randomly initialised weights
(``encoder_weights=None``: nothing is ever downloaded). A local encoder weights file
(``.pth``/``.pt`` state dict or ``.safetensors``) can be loaded into ``model.encoder``.

Names (lower case, as in the configuration files):

* architectures: ``manet``, ``pspnet``, ``unetplusplus``, ``fpn``, ``linknet``, ``deeplabv3plus``;
* paper encoders (Table 1): ``efficientnet-b0``, ``efficientnet-b4``, ``se_resnext50_32x4d``,
  ``resnet50``, ``resnet101``, ``se_resnext101_32x4d``, ``tu-regnetx_120`` (smp 0.6.0 name of
  RegNetX-120; the deprecated ``timm-regnetx_120`` is accepted as an alias);
* small encoders for CPU tests and demos: ``resnet18``, ``resnet34``, ``mobilenet_v2``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from segmentation.errors import ModelError

logger = logging.getLogger(__name__)

#: Architecture name -> smp class name (the paper's six decoders).
ARCHITECTURES: dict[str, str] = {
    "manet": "MAnet",
    "pspnet": "PSPNet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "linknet": "Linknet",
    "deeplabv3plus": "DeepLabV3Plus",
}
#: The encoders of the paper's search space (Table 1), as smp 0.6.0 names them.
PAPER_ENCODERS: tuple[str, ...] = (
    "efficientnet-b0",
    "efficientnet-b4",
    "se_resnext50_32x4d",
    "resnet50",
    "resnet101",
    "se_resnext101_32x4d",
    "tu-regnetx_120",
)
#: Small encoders for CPU tests and demos.
SMALL_ENCODERS: tuple[str, ...] = ("resnet18", "resnet34", "mobilenet_v2")
#: Every encoder name build_model accepts (after alias resolution).
ENCODERS: tuple[str, ...] = PAPER_ENCODERS + SMALL_ENCODERS
#: Accepted spellings -> canonical name.
ENCODER_ALIASES: dict[str, str] = {"timm-regnetx_120": "tu-regnetx_120"}
#: Architectures whose forward pass takes any input size (no divisibility requirement).
ANY_SIZE_ARCHITECTURES: frozenset[str] = frozenset({"pspnet"})
#: Spatial divisor required by the other architectures (encoder output stride).
SIZE_DIVISOR = 32


def canonical_architecture(name: str) -> str:
    """The canonical architecture name for ``name`` (case-insensitive; smp class names accepted).

    Raises:
        ModelError: unknown name; the message lists the valid ones.
    """
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    for arch, cls_name in ARCHITECTURES.items():
        if key in (arch, cls_name.lower()):
            return arch
    raise ModelError(
        f"unknown architecture {name!r}; valid architectures: {', '.join(ARCHITECTURES)}"
    )


def canonical_encoder(name: str) -> str:
    """The canonical encoder name for ``name`` (aliases resolved).

    Raises:
        ModelError: unknown name; the message lists the valid ones.
    """
    key = str(name).strip().lower()
    key = ENCODER_ALIASES.get(key, key)
    if key not in ENCODERS:
        raise ModelError(f"unknown encoder {name!r}; valid encoders: {', '.join(ENCODERS)}")
    return key


def padded_input_size(architecture: str, size: int) -> int:
    """The network input size for a requested ``size``: the next multiple of 32, except PSPNet.

    The paper's search space has 624 px, which the divisible-by-32 architectures cannot take;
    such a size is padded (624 -> 640) rather than refused. Frames are resized to ``size`` and
    zero-padded (centred) to the returned size; predictions are cropped back.

    Raises:
        ModelError: unknown architecture or a non-positive size.
    """
    arch = canonical_architecture(architecture)
    if int(size) <= 0:
        raise ModelError(f"input size must be a positive number of pixels, got {size!r}")
    size = int(size)
    if arch in ANY_SIZE_ARCHITECTURES:
        return size
    return -(-size // SIZE_DIVISOR) * SIZE_DIVISOR


def build_model(
    architecture: str,
    encoder: str,
    *,
    in_channels: int = 1,
    classes: int = 1,
    encoder_weights_path: str | Path | None = None,
) -> torch.nn.Module:
    """Build an smp model offline (random init; optional local encoder weights).

    Args:
        architecture: One of :data:`ARCHITECTURES` (case-insensitive, smp class names too).
        encoder: One of :data:`ENCODERS` (or an alias in :data:`ENCODER_ALIASES`).
        in_channels: Input channels (1 for our grayscale models, 3 for the authors' models).
        classes: Output channels (1: the aortic-root logit).
        encoder_weights_path: Optional ``.pth``/``.pt``/``.safetensors`` encoder state dict,
            loaded strictly into ``model.encoder`` (see :func:`load_encoder_weights`).

    Returns:
        The model (training mode, fp32, CPU); its output is raw logits (no activation).

    Raises:
        ModelError: unknown architecture/encoder, bad channel counts, or an unusable weights file.
    """
    import segmentation_models_pytorch as smp

    arch = canonical_architecture(architecture)
    enc = canonical_encoder(encoder)
    if in_channels < 1 or classes < 1:
        raise ModelError(f"in_channels and classes must be >= 1, got {in_channels} and {classes}")
    cls = getattr(smp, ARCHITECTURES[arch])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = cls(encoder_name=enc, encoder_weights=None, in_channels=in_channels, classes=classes)
    if encoder_weights_path is not None:
        load_encoder_weights(model, encoder_weights_path)
    logger.debug("built %s/%s (in_channels=%d, classes=%d)", arch, enc, in_channels, classes)
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a tensor state dict from ``.safetensors`` or a ``.pth``/``.pt`` file (weights only).

    ``.pth`` files are read with ``torch.load(weights_only=True)``: no code from the file runs.
    A file holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.

    Raises:
        ModelError: missing file, unreadable file, or no tensor mapping inside.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors/pickle raise many types; all mean "unreadable"
        raise ModelError(
            f"{path}: cannot read weights ({type(exc).__name__}: {exc}); expected a "
            ".safetensors file or a .pth/.pt tensor state dict"
        ) from exc
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ModelError(f"{path}: does not hold a state dict of tensors")
    return dict(state)


def load_encoder_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load an encoder state dict into ``model.encoder`` (strict).

    Keys may carry an ``encoder.`` prefix (taken from a whole-model state dict: only the
    ``encoder.*`` entries are used). A first convolution trained on 3 channels is adapted to a
    1-channel model by summing over its input channels (as smp does for pretrained weights).

    Raises:
        ModelError: unreadable file, or missing/unexpected keys or shape mismatches (listed).
    """
    state = read_state_dict(path)
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    target = model.encoder.state_dict()
    for key, value in list(state.items()):
        want = target.get(key)
        if (
            want is not None
            and value.ndim == 4
            and want.ndim == 4
            and value.shape[1] != want.shape[1]
            and want.shape[1] == 1
            and value.shape[0] == want.shape[0]
            and value.shape[2:] == want.shape[2:]
        ):
            state[key] = value.sum(dim=1, keepdim=True)
            logger.info("encoder weights: summed %s over %d input channels", key, value.shape[1])
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(set(state) & set(target))
        if tuple(state[k].shape) != tuple(target[k].shape)
    ]
    if missing or unexpected or shapes:
        raise ModelError(
            f"{path}: encoder weights do not fit {type(model.encoder).__name__}: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}, {len(shapes)} shape mismatches {shapes[:3]}"
        )
    model.encoder.load_state_dict(state, strict=True)
    logger.info("loaded encoder weights from %s (%d tensors)", path, len(state))


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
