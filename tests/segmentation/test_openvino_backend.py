"""OpenVINO bf16 backend: the CPU-flag probe, when ``auto`` picks it, agreement with eager fp32,
refusal where the CPU has no native bf16, and the fall-back when OpenVINO cannot compile."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from segmentation.errors import InferenceError
from segmentation.inference import engine as engine_mod
from segmentation.inference import openvino_backend
from segmentation.inference.backends import OnnxBackend
from segmentation.inference.config import PostprocessConfig, load_inference_config
from segmentation.inference.cpu import cpu_flags, cpu_has_native_bf16
from segmentation.inference.engine import InferenceEngine
from segmentation.inference.openvino_backend import OPENVINO_BF16, OpenVinoBackend
from segmentation.metrics import dice
from tests.segmentation.conftest import smooth_frames

RAW = PostprocessConfig(keep_largest_component=False, fill_holes=False)
#: Runs real bf16 only where this machine can (the project's CPU machine has AVX512-BF16).
NATIVE = pytest.mark.skipif(
    not (openvino_backend.openvino_installed() and cpu_has_native_bf16()),
    reason="needs the openvino package and a CPU with avx512_bf16 or amx_bf16",
)


def cpuinfo(flags: str) -> str:
    return (f"processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: Some CPU\nflags\t\t: {flags}\n"
            f"bugs\t\t: sysret_ss_attrs\n\nprocessor\t: 1\nflags\t\t: {flags}\n")


@pytest.mark.parametrize(("flags", "expected"), [
    ("fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 avx512vbmi", True),  # AVX512-BF16
    ("fpu sse2 avx2 avx512f amx_bf16 amx_tile amx_int8", True),  # AMX
    ("fpu sse2 avx avx2 fma f16c", False),  # AVX2 only
    ("fpu avx512f avx512bw avx512_vnni avx512_fp16 avx_vnni", False),  # VNNI and fp16 but no bf16
    ("", False),
])
def test_the_cpu_flag_probe(flags, expected):
    assert cpu_has_native_bf16(cpuinfo(flags)) is expected
    assert cpu_flags(cpuinfo(flags)) == frozenset(flags.split())


def test_the_cpu_flag_probe_without_x86_flags():
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm bf16 i8mm\n"
    assert cpu_flags(arm) == frozenset() and not cpu_has_native_bf16(arm)
    assert not cpu_has_native_bf16("garbage without colons\n")


class FakeOpenVino:
    """Records what the engine compiles instead of compiling it."""

    built: list = []

    def __init__(self, path, batch_fn, threshold, *, threads=0):
        self.name, self.path, self.threads = OPENVINO_BF16, path, threads
        FakeOpenVino.built.append(path)


@pytest.fixture
def fake_openvino(monkeypatch):
    FakeOpenVino.built = []
    monkeypatch.setattr(engine_mod, "checked_openvino_bf16", FakeOpenVino)
    monkeypatch.setattr(openvino_backend, "openvino_installed", lambda: True)
    return FakeOpenVino


def test_auto_picks_openvino_bf16_only_on_a_cpu_with_native_bf16(
        linknet_folder, onnx_cache, monkeypatch, fake_openvino):
    monkeypatch.setattr(openvino_backend, "cpu_has_native_bf16", lambda cpuinfo=None: True)
    engine = InferenceEngine.from_folder(linknet_folder, device="cpu", backend="auto", onnx_cache_dir=onnx_cache,
                                         threads=2)
    assert engine.backend_name == OPENVINO_BF16 and engine.folds == (0, 1)
    assert all(isinstance(b, FakeOpenVino) and b.threads == 2 for b in engine.backends.values())
    # it compiles the cached fp32 ONNX exports, the very files backend 'onnx' runs
    onnx = InferenceEngine.from_folder(linknet_folder, device="cpu", backend="onnx", onnx_cache_dir=onnx_cache)
    assert fake_openvino.built == [onnx.backends[0].path, onnx.backends[1].path]
    assert all(p.parent == onnx_cache for p in fake_openvino.built)

    monkeypatch.setattr(openvino_backend, "cpu_has_native_bf16", lambda cpuinfo=None: False)
    engine = InferenceEngine.from_folder(linknet_folder, device="cpu", backend="auto", onnx_cache_dir=onnx_cache)
    assert engine.backend_name == "onnx" and isinstance(engine.backends[0], OnnxBackend)

    monkeypatch.setattr(openvino_backend, "cpu_has_native_bf16", lambda cpuinfo=None: True)
    monkeypatch.setattr(openvino_backend, "openvino_installed", lambda: False)
    engine = InferenceEngine.from_folder(linknet_folder, device="cpu", backend="auto", onnx_cache_dir=onnx_cache)
    assert engine.backend_name == "onnx"
    assert len(fake_openvino.built) == 2  # nothing compiled after the first engine


def test_auto_never_uses_openvino_on_a_gpu(linknet_folder, monkeypatch, fake_openvino):
    built = []

    class FakeTorchBackend:
        def __init__(self, model, *, device, autocast_dtype, channels_last, name):
            self.name = name
            built.append((device.type, name))

    monkeypatch.setattr(openvino_backend, "cpu_has_native_bf16", lambda cpuinfo=None: True)
    monkeypatch.setattr(engine_mod, "resolve_device", lambda device: torch.device("cuda", 0))
    monkeypatch.setattr(engine_mod, "TorchBackend", FakeTorchBackend)
    monkeypatch.setattr(engine_mod, "gpu_autocast_dtype", lambda: torch.bfloat16)
    engine = InferenceEngine.from_folder(linknet_folder, device="cuda", backend="auto", folds=[0])
    assert engine.backend_name == "eager-bf16" and built == [("cuda", "eager-bf16")]
    with pytest.raises(InferenceError, match="'openvino-bf16' runs on the CPU only, the device is cuda:0"):
        InferenceEngine.from_folder(linknet_folder, device="cuda", backend=OPENVINO_BF16)
    assert fake_openvino.built == []


def test_openvino_bf16_is_refused_where_it_cannot_run_bf16(linknet_folder, onnx_cache, monkeypatch):
    monkeypatch.setattr(openvino_backend, "cpu_has_native_bf16", lambda cpuinfo=None: False)
    with pytest.raises(InferenceError, match=r"backend 'openvino-bf16' requested but this CPU has no native bf16 "
                                             r"\(none of amx_bf16, avx512_bf16 in the flags of /proc/cpuinfo\).*"
                                             r"use backend 'auto' or 'onnx'"):
        InferenceEngine.from_folder(linknet_folder, device="cpu", backend=OPENVINO_BF16, onnx_cache_dir=onnx_cache)
    monkeypatch.setattr(openvino_backend, "cpu_has_native_bf16", lambda cpuinfo=None: True)
    monkeypatch.setattr(openvino_backend, "openvino_installed", lambda: False)
    with pytest.raises(InferenceError, match="requested but the openvino package is not installed"):
        InferenceEngine.from_folder(linknet_folder, device="cpu", backend=OPENVINO_BF16, onnx_cache_dir=onnx_cache)


def test_a_failed_compile_falls_back_to_onnx_fp32_with_a_warning(
        linknet_folder, onnx_cache, monkeypatch, caplog, tmp_path):
    pytest.importorskip("openvino")
    # the real backend turns OpenVINO's errors into an InferenceError naming the file
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an ONNX model")
    with pytest.raises(InferenceError, match=r"broken\.onnx: OpenVINO cannot compile the model for the CPU"):
        OpenVinoBackend(bad)

    def failing(path, **kwargs):
        raise InferenceError(f"{path}: OpenVINO cannot compile the model for the CPU: compile exploded")

    monkeypatch.setattr(openvino_backend, "cpu_has_native_bf16", lambda cpuinfo=None: True)
    monkeypatch.setattr(openvino_backend, "OpenVinoBackend", failing)
    with caplog.at_level(logging.WARNING):
        engine = InferenceEngine.from_folder(linknet_folder, device="cpu", backend="auto", onnx_cache_dir=onnx_cache)
    assert engine.backend_name == "onnx" and isinstance(engine.backends[0], OnnxBackend)
    assert "openvino-bf16 unavailable" in caplog.text and "compile exploded" in caplog.text
    assert "running ONNX Runtime fp32" in caplog.text
    with pytest.raises(InferenceError, match="compile exploded"):  # asked for explicitly: no silent fall-back
        InferenceEngine.from_folder(linknet_folder, device="cpu", backend=OPENVINO_BF16, onnx_cache_dir=onnx_cache)


def test_the_inference_config_accepts_openvino_bf16():
    assert load_inference_config(overrides={"backend": OPENVINO_BF16}).backend == OPENVINO_BF16


@NATIVE
def test_openvino_bf16_runs_bf16_and_agrees_with_eager_fp32(linknet_folder, onnx_cache):
    frames = smooth_frames(4, 120, 100, seed=3)
    eager = InferenceEngine.from_folder(linknet_folder, device="cpu", backend="eager", postprocess=RAW)
    auto = InferenceEngine.from_folder(linknet_folder, device="cpu", backend="auto", postprocess=RAW,
                                       onnx_cache_dir=onnx_cache, batch_size=3)
    explicit = InferenceEngine.from_folder(linknet_folder, device="cpu", backend=OPENVINO_BF16, postprocess=RAW,
                                           onnx_cache_dir=onnx_cache, folds=[1])
    assert auto.backend_name == explicit.backend_name == OPENVINO_BF16
    assert all(isinstance(b, OpenVinoBackend) and b.precision == "bf16"
               for b in [*auto.backends.values(), *explicit.backends.values()])
    ref = eager.predict(frames, return_probabilities=True)
    got = auto.predict(frames, return_probabilities=True)
    assert 0.05 < ref.masks.mean() < 0.95  # a non-trivial mask, so agreement means something
    dices = [dice(a, b) for a, b in zip(got.masks, ref.masks)]
    assert min(dices) >= 0.98, dices
    diff = np.abs(got.probabilities - ref.probabilities)
    assert 0 < diff.max() < 0.1  # really not fp32 (bf16 rounding), yet close
    # results are copies: a later batch does not overwrite an earlier one
    first = explicit.backends[1].logits(np.zeros((2, 1, 64, 64), np.float32))
    again = first.copy()
    explicit.backends[1].logits(np.ones((2, 1, 64, 64), np.float32))
    assert first.shape == (2, 64, 64) and np.array_equal(first, again)


@NATIVE
def test_the_bf16_check_is_recorded_once_and_a_failed_one_refuses(linknet_folder, tmp_path, monkeypatch, caplog):
    cache = tmp_path / "onnx"
    engine = InferenceEngine.from_folder(linknet_folder, device="cpu", backend="auto", folds=[0],
                                         onnx_cache_dir=cache)
    assert engine.backend_name == OPENVINO_BF16
    (export,) = cache.glob("*.onnx")
    record = json.loads(export.with_name(export.stem + ".openvino-bf16.json").read_text())
    assert record["passed"] and record["finite"] and record["precision"] == "bf16"
    assert (record["frames"], record["size"], record["threshold"]) == (2, 64, 0.5)
    assert 0 < record["mean_abs"] <= 0.02 and record["flipped"] <= 0.02  # bf16, not fp32, yet close

    def no_second_check(*args, **kwargs):
        raise AssertionError("the recorded check ran again")

    monkeypatch.setattr(openvino_backend, "check_against_fp32", no_second_check)
    assert InferenceEngine.from_folder(linknet_folder, device="cpu", backend="auto", folds=[0],
                                       onnx_cache_dir=cache).backend_name == OPENVINO_BF16
    monkeypatch.undo()

    # limits no bf16 compilation can meet: the check fails, is recorded, and auto keeps fp32
    monkeypatch.setattr(openvino_backend, "CHECK_MAX_MEAN_ABS", 0.0)
    strict = tmp_path / "strict"
    with caplog.at_level(logging.WARNING):
        engine = InferenceEngine.from_folder(linknet_folder, device="cpu", backend="auto", folds=[0],
                                             onnx_cache_dir=strict)
    assert engine.backend_name == "onnx"
    assert "OpenVINO bf16 disagrees with fp32 on the check frames" in caplog.text
    (export,) = strict.glob("*.onnx")
    assert json.loads(export.with_name(export.stem + ".openvino-bf16.json").read_text())["passed"] is False
    with pytest.raises(InferenceError, match=r"disagrees with fp32 .*limit 0\.0;"):
        InferenceEngine.from_folder(linknet_folder, device="cpu", backend=OPENVINO_BF16, folds=[0],
                                    onnx_cache_dir=strict)
