"""Crash-safe training state: atomic checkpoint, weights and JSON writes, and RNG states.

Every file is written to a temporary name in the same folder, flushed to disk and renamed
over the target (``os.replace``), so a ``kill -9`` at any point leaves either the old or the
new file, never half of one. Checkpoints are read with ``torch.load(weights_only=True)``:
RNG states are stored as tensors and plain Python values so that no pickled code is needed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tavicore.fileio import write_atomic
from training.errors import TrainingError

logger = logging.getLogger(__name__)

#: Version of the checkpoint layout written by :func:`save_checkpoint`.
CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Write a training checkpoint atomically (``torch.save`` of ``state`` plus a version).

    Args:
        path: Target file (``fold_<k>/checkpoint_last.pt``).
        state: Tensors, state dicts and plain Python values (no numpy arrays or objects).
    """
    payload = {"checkpoint_version": CHECKPOINT_VERSION, **state}
    write_atomic(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (weights only, on the CPU).

    Raises:
        TrainingError: unreadable file or another checkpoint version (the message names the path).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise TrainingError(f"{path}: unreadable checkpoint ({exc}); delete it to restart the fold") from exc
    version = state.get("checkpoint_version") if isinstance(state, dict) else None
    if version != CHECKPOINT_VERSION:
        raise TrainingError(
            f"{path}: checkpoint version {version!r} is not supported (this taviseg writes "
            f"version {CHECKPOINT_VERSION}); delete it to restart the fold"
        )
    return state


def save_weights(path: Path, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write a model state dict as safetensors atomically (tensors moved to CPU, made contiguous)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors state dict.

    Raises:
        TrainingError: missing or unreadable file (names the path).
    """
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise TrainingError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except (OSError, RuntimeError, ValueError) as exc:
        raise TrainingError(f"{path}: unreadable weights: {exc}") from exc


def capture_rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [np_name, torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore generator states captured by :func:`capture_rng_state`.

    Raises:
        TrainingError: the mapping lacks a generator's state.
    """
    try:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        cuda = state["cuda"]
    except (KeyError, TypeError, ValueError) as exc:
        raise TrainingError(f"checkpoint RNG state is incomplete or malformed: {exc}") from exc
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    elif cuda:
        logger.warning("checkpoint holds %d CUDA RNG states; not restored on this machine", len(cuda))
