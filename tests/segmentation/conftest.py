"""Fixtures of the segmentation tests: small model folders with confident (saturated) outputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from segmentation.models.folder import ModelSpec, save_model_folder
from segmentation.models.zoo import build_model


def make_state(arch: str, encoder: str, *, seed: int, head_scale: float = 30.0, in_channels: int = 1) -> dict:
    """A random-init state dict whose head is scaled so most probabilities are far from 0.5,
    and whose head bias is centred so about half of a smooth frame is foreground."""
    torch.manual_seed(seed)
    model = build_model(arch, encoder, in_channels=in_channels).eval()
    head = model.segmentation_head[0]
    x = torch.from_numpy(smooth_frames(2, 64, 64, seed=seed, dtype=np.float32))[:, None]
    with torch.no_grad():
        head.weight.mul_(head_scale)
        head.bias.mul_(head_scale)
        logits = model(x.repeat(1, in_channels, 1, 1))
        head.bias.sub_(logits.median())
    return model.state_dict()


def make_model_folder(
    path: Path,
    *,
    arch: str = "linknet",
    encoder: str = "resnet18",
    size: int = 64,
    folds: int = 1,
    seed: int = 0,
    **spec_kwargs,
) -> Path:
    """Write a model folder with ``folds`` differently seeded folds."""
    spec = ModelSpec(architecture=arch, encoder=encoder, input_size=size, **spec_kwargs)
    states = {k: make_state(arch, encoder, seed=seed + k, in_channels=spec.in_channels) for k in range(folds)}
    return save_model_folder(path, spec, states)


def smooth_frames(n: int, h: int, w: int, *, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    """Smooth random frames (structure at several scales) of the given dtype."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        low = rng.random((max(2, h // 8), max(2, w // 8))).astype(np.float32)
        img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
        out.append(np.clip(img, 0, 1))
    frames = np.stack(out)
    if dtype == np.uint8:
        return (frames * 255).astype(np.uint8)
    if dtype == np.uint16:
        return (frames * 4095).astype(np.uint16)
    return frames.astype(dtype)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_per_xdist_worker():
    """Under pytest-xdist, one torch thread per worker: oversubscribed OpenMP threads make torch
    many times slower (measured 4x on 2 shared cores)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def linknet_folder(tmp_path_factory) -> Path:
    """LinkNet/ResNet-18, 64 px, two folds."""
    return make_model_folder(tmp_path_factory.mktemp("models") / "linknet", folds=2)


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory) -> Path:
    """A session-wide ONNX cache dir (exports are reused across tests)."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture
def no_native_bf16(monkeypatch):
    """Pretend the CPU has no native bf16, so ``backend: auto`` keeps ONNX Runtime fp32 on any machine."""
    from segmentation.inference import openvino_backend

    monkeypatch.setattr(openvino_backend, "cpu_has_native_bf16", lambda cpuinfo=None: False)
