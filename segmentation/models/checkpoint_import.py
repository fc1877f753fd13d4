"""Import the authors' released checkpoints (whole smp models saved with ``torch.save(model)``).

The authors' training script (github.com/Nikita75699/segmentation_tavi, train_fold_dataset.py)
saves ``torch.save(model, "best_model.pth")`` per fold: a pickled smp model with
``in_channels=3``, ``activation="sigmoid"``, inputs normalised with ImageNet mean/std after
``/255`` (gray frames replicated to RGB). Such a file is converted into our model folder: the
architecture comes from the pickled class name (``MAnet``, ``PSPNet``...), the encoder from the
model's ``name`` attribute (smp stores ``"<arch prefix>-<encoder name>"``, e.g.
``"manet-efficientnet-b4"``), the input channels from the first convolution; the state dict is
loaded strictly into a freshly built model (our models output logits: the sigmoid is applied by
the engine) and saved as safetensors, one fold per checkpoint.

Trust: plain ``torch.load(weights_only=False)`` executes arbitrary code from the file. By
default this module never does that: it unpickles with a restricted unpickler that resolves only
torch's tensor-rebuild functions and a few builtin containers, and replaces every other class
(smp, torch.nn, efficientnet...) with an inert stand-in whose attributes are just recorded; the
tensors are then read from the stand-ins' ``_parameters``/``_buffers``/``_modules``. Only with
``trust_pickle=True`` (CLI ``--trust-pickle``) is the real ``torch.load(weights_only=False)``
used, for files from a source you trust that the restricted loader cannot read.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import collections
import hashlib
import logging
import pickle
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from segmentation.errors import ModelError
from segmentation.models.folder import ModelSpec, save_model_folder
from segmentation.models.zoo import build_model, canonical_architecture, canonical_encoder

logger = logging.getLogger(__name__)

_SAFE_BUILTINS = frozenset(
    {"set", "frozenset", "tuple", "list", "dict", "slice", "complex", "bytearray", "int", "float", "bool", "str"}
)
_SAFE_TORCH_UTILS = frozenset(
    {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
     "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_numpy"}
)


class _Stub:
    """Inert stand-in for a class named in a pickle: records its state, runs no code."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stub:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["_stub_args"] = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state, slots = state
            if isinstance(slots, dict):
                self.__dict__.update(slots)
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_stub_state"] = state


def _stub_reconstructor(cls: type, base: type, state: Any) -> Any:
    obj = _Stub.__new__(cls) if isinstance(cls, type) and issubclass(cls, _Stub) else _Stub()
    if state is not None:
        obj.__dict__["_stub_state"] = state
    return obj


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only tensor-rebuild helpers and safe builtins; every other class becomes a stub."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stubs: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        # protocol-2 pickles name Python 2 modules (__builtin__, copy_reg): map them first
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if module == "torch._utils" and name in _SAFE_TORCH_UTILS:
            return getattr(torch._utils, name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "builtins" and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        if module == "torch" and name in ("Size", "device"):
            return getattr(torch, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "copyreg" and name == "_reconstructor":
            return _stub_reconstructor
        key = (module, name)
        if key not in self._stubs:
            self._stubs[key] = type(str(name), (_Stub,), {"__module__": str(module)})
        return self._stubs[key]


_RESTRICTED_PICKLE = types.SimpleNamespace(Unpickler=_RestrictedUnpickler, __name__="taviseg_restricted_pickle")


@dataclass(frozen=True)
class ImportedCheckpoint:
    """What was found in one checkpoint file."""

    path: Path
    architecture: str
    encoder: str
    in_channels: int
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    class_name: str = ""
    smp_name: str = ""
    activation: str = ""
    sha256: str = ""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _collect_tensors(obj: Any, prefix: str, out: dict[str, torch.Tensor], depth: int = 0) -> None:
    """Walk ``_modules`` recursively, gathering ``_parameters`` and persistent ``_buffers``."""
    if depth > 64:
        raise ModelError("checkpoint module tree is deeper than 64 levels")
    d = getattr(obj, "__dict__", {})
    skip = d.get("_non_persistent_buffers_set") or set()
    for k, v in (d.get("_parameters") or {}).items():
        if isinstance(v, torch.Tensor):
            out[prefix + k] = v.detach()
    for k, v in (d.get("_buffers") or {}).items():
        if isinstance(v, torch.Tensor) and k not in skip:
            out[prefix + k] = v.detach()
    for name, child in (d.get("_modules") or {}).items():
        if child is not None:
            _collect_tensors(child, f"{prefix}{name}.", out, depth + 1)


def _activation_name(root: Any) -> str:
    head = (getattr(root, "__dict__", {}).get("_modules") or {}).get("segmentation_head")
    for child in (getattr(head, "__dict__", {}).get("_modules") or {}).values():
        inner = (getattr(child, "__dict__", {}).get("_modules") or {}).get("activation")
        if inner is not None:
            return type(inner).__name__.lower()
    return ""


def load_checkpoint_object(path: Path, *, trust_pickle: bool = False) -> Any:
    """Unpickle a checkpoint (restricted by default; see the module docstring).

    Raises:
        ModelError: missing or unreadable file.
    """
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    if trust_pickle:
        logger.warning("loading %s with torch.load(weights_only=False): code in the file runs", path)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # arbitrary pickle content can raise anything
            raise ModelError(f"{path}: cannot load checkpoint: {type(exc).__name__}: {exc}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RESTRICTED_PICKLE)
    except Exception as exc:  # corrupt archives raise RuntimeError, pickle errors, EOFError...
        raise ModelError(
            f"{path}: the restricted loader cannot read this checkpoint ({type(exc).__name__}: {exc}); "
            "if you trust its source, retry with --trust-pickle (runs code from the file)"
        ) from exc


def inspect_checkpoint(
    path: str | Path,
    *,
    architecture: str | None = None,
    encoder: str | None = None,
    trust_pickle: bool = False,
) -> ImportedCheckpoint:
    """Read one checkpoint and identify its architecture, encoder and input channels.

    A whole pickled smp model identifies itself; a bare state dict (or ``{"state_dict": ...}``,
    Lightning ``model.`` prefixes removed) needs ``architecture`` and ``encoder``.

    Raises:
        ModelError: unreadable file, unidentifiable model (says which argument to give), or a
            model with more than one output class.
    """
    path = Path(path)
    obj = load_checkpoint_object(path, trust_pickle=trust_pickle)
    state: dict[str, torch.Tensor] = {}
    class_name = smp_name = activation = ""
    if isinstance(obj, dict):
        inner = obj.get("state_dict") if isinstance(obj.get("state_dict"), dict) else obj
        state = {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}
        if state and all(k.startswith("model.") for k in state):
            state = {k[len("model."):]: v for k, v in state.items()}
    elif isinstance(obj, torch.nn.Module):
        class_name = type(obj).__name__
        smp_name = str(getattr(obj, "name", "") or "")
        state = {k: v.detach() for k, v in obj.state_dict().items()}
        activation = _activation_name(obj)
    else:
        class_name = type(obj).__name__
        smp_name = str(getattr(obj, "__dict__", {}).get("name", "") or "")
        _collect_tensors(obj, "", state)
        activation = _activation_name(obj)
    if not state:
        raise ModelError(f"{path}: no weights found (expected a pickled smp model or a state dict)")
    arch = architecture or class_name
    if not arch:
        raise ModelError(f"{path}: a bare state dict does not name its architecture; give --arch")
    arch = canonical_architecture(arch)
    enc = encoder
    if enc is None and "-" in smp_name:
        enc = smp_name.split("-", 1)[1]
    if not enc:
        raise ModelError(f"{path}: cannot tell the encoder (no smp 'name' attribute); give --encoder")
    enc = canonical_encoder(enc)
    head = state.get("segmentation_head.0.weight")
    if head is not None and head.shape[0] != 1:
        raise ModelError(f"{path}: model has {head.shape[0]} output classes; only 1 (aortic root) is supported")
    first_conv = next((v for k, v in state.items() if k.startswith("encoder.") and v.ndim == 4), None)
    if first_conv is None:
        raise ModelError(f"{path}: no encoder convolution found in the weights")
    return ImportedCheckpoint(
        path=path, architecture=arch, encoder=enc, in_channels=int(first_conv.shape[1]),
        state_dict=state, class_name=class_name, smp_name=smp_name, activation=activation,
        sha256=_sha256(path),
    )


def import_checkpoints(
    checkpoints: list[str | Path],
    out_dir: str | Path,
    *,
    input_size: int = 512,
    architecture: str | None = None,
    encoder: str | None = None,
    normalization: str = "imagenet",
    threshold: float = 0.5,
    folds: list[int] | None = None,
    trust_pickle: bool = False,
    overwrite: bool = False,
) -> Path:
    """Convert checkpoints (one per fold) into a model folder.

    Args:
        checkpoints: Checkpoint files, in fold order.
        out_dir: Model folder to write.
        input_size: The size the models were trained at (the authors' files do not record it).
        architecture, encoder: Override/give the names (needed for bare state dicts).
        normalization: ``"imagenet"`` for the authors' models (their preprocessing), or ``"unit"``.
        threshold: Probability threshold.
        folds: Fold index of each checkpoint (default 0, 1, ...).
        trust_pickle: Use plain ``torch.load(weights_only=False)`` (runs code from the files).
        overwrite: Replace an existing model folder.

    Returns:
        The model folder path.

    Raises:
        ModelError: unreadable or unidentifiable checkpoints, checkpoints that disagree with
            each other, or weights that do not load strictly into the rebuilt model.
    """
    if not checkpoints:
        raise ModelError("no checkpoints given")
    fold_ids = list(range(len(checkpoints))) if folds is None else [int(f) for f in folds]
    if len(fold_ids) != len(checkpoints):
        raise ModelError(f"{len(checkpoints)} checkpoints but {len(fold_ids)} fold numbers")
    infos = [
        inspect_checkpoint(p, architecture=architecture, encoder=encoder, trust_pickle=trust_pickle)
        for p in checkpoints
    ]
    first = infos[0]
    for info in infos[1:]:
        if ((info.architecture, info.encoder, info.in_channels)
                != (first.architecture, first.encoder, first.in_channels)):
            raise ModelError(
                f"{info.path}: {info.architecture}/{info.encoder}/{info.in_channels}ch differs from "
                f"{first.path}: {first.architecture}/{first.encoder}/{first.in_channels}ch"
            )
    fold_states = {}
    for fold, info in zip(fold_ids, infos):
        model = build_model(info.architecture, info.encoder, in_channels=info.in_channels)
        try:
            model.load_state_dict(dict(info.state_dict), strict=True)
        except RuntimeError as exc:
            raise ModelError(
                f"{info.path}: weights do not load into {info.architecture}/{info.encoder} "
                f"({info.in_channels} channels): {exc}"
            ) from exc
        fold_states[fold] = model.state_dict()
        logger.info("checkpoint %s -> fold %d (%s/%s)", info.path.name, fold, info.architecture, info.encoder)
    spec = ModelSpec(
        architecture=first.architecture,
        encoder=first.encoder,
        input_size=int(input_size),
        in_channels=first.in_channels,
        normalization=normalization,
        threshold=float(threshold),
        provenance={
            "source": "imported checkpoint",
            "checkpoints": [
                {"fold": f, "file": i.path.name, "sha256": i.sha256, "class": i.class_name,
                 "smp_name": i.smp_name, "activation": i.activation}
                for f, i in zip(fold_ids, infos)
            ],
            "note": "input size and normalisation are not recorded in the checkpoints; given at import",
        },
        folds=tuple(fold_ids),
    )
    return save_model_folder(out_dir, spec, fold_states, overwrite=overwrite)
