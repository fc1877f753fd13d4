"""Inference engine: backend agreement, ensembling, TTA, input types, fallbacks."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from segmentation.errors import InferenceError
from segmentation.inference import backends as backends_mod
from segmentation.inference.config import PostprocessConfig
from segmentation.inference.engine import InferenceEngine
from segmentation.metrics import dice
from tests.segmentation.conftest import make_model_folder, smooth_frames

RAW = PostprocessConfig(keep_largest_component=False, fill_holes=False)


@pytest.fixture(scope="module")
def pspnet_folder(tmp_path_factory):
    """PSPNet (exported with the dynamo exporter, opset 18) at 96 px."""
    return make_model_folder(tmp_path_factory.mktemp("psp") / "pspnet", arch="pspnet", size=96)


@pytest.mark.parametrize("which", ["linknet", "pspnet"])
def test_backends_agree_with_eager_fp32(which, linknet_folder, pspnet_folder, onnx_cache):
    folder = linknet_folder if which == "linknet" else pspnet_folder
    frames = smooth_frames(3, 120, 100, seed=1)
    results = {}
    for backend in ("eager", "onnx", "bf16"):
        engine = InferenceEngine.from_folder(folder, backend=backend, postprocess=RAW, onnx_cache_dir=onnx_cache,
                                             batch_size=2)
        assert engine.backend_name == backend
        results[backend] = engine.predict(frames, return_probabilities=True)
    ref = results["eager"]
    assert 0.05 < ref.masks.mean() < 0.95  # a non-trivial mask, so agreement means something
    # ONNX Runtime: probabilities within 1e-3 of eager fp32
    assert np.abs(results["onnx"].probabilities - ref.probabilities).max() < 1e-3
    assert np.array_equal(results["onnx"].masks, ref.masks) or min(
        dice(a, b) for a, b in zip(results["onnx"].masks, ref.masks)) > 0.999
    # bf16 autocast: mask Dice > 0.99 (PSPNet, whose 1/8-resolution logits are upsampled, moves
    # its smooth boundaries more: measured 0.991 pooled on this random-init model -> 0.985)
    assert dice(results["bf16"].masks, ref.masks) > (0.99 if which == "linknet" else 0.985)
    assert np.abs(results["bf16"].probabilities - ref.probabilities).max() < 0.5


def test_onnx_export_is_cached_by_weights_hash(linknet_folder, tmp_path):
    cache = tmp_path / "cache"
    InferenceEngine.from_folder(linknet_folder, backend="onnx", folds=[0], onnx_cache_dir=cache)
    files = sorted(cache.glob("*.onnx"))
    assert len(files) == 1 and files[0].name.startswith("linknet-resnet18-")
    mtime = files[0].stat().st_mtime_ns
    InferenceEngine.from_folder(linknet_folder, backend="onnx", folds=[0], onnx_cache_dir=cache)
    assert sorted(cache.glob("*.onnx")) == files and files[0].stat().st_mtime_ns == mtime
    InferenceEngine.from_folder(linknet_folder, backend="onnx", folds=[1], onnx_cache_dir=cache)
    assert len(list(cache.glob("*.onnx"))) == 2  # other weights -> other key


def test_auto_falls_back_to_eager_with_a_warning(linknet_folder, tmp_path, monkeypatch, caplog):
    def broken_export(*args, **kwargs):
        raise InferenceError("export exploded")

    monkeypatch.setattr(backends_mod, "export_onnx", broken_export)
    with caplog.at_level(logging.WARNING):
        engine = InferenceEngine.from_folder(linknet_folder, backend="auto", device="cpu",
                                             onnx_cache_dir=tmp_path / "c")
    assert engine.backend_name == "eager"
    assert "falling back to eager" in caplog.text and "export exploded" in caplog.text
    with pytest.raises(InferenceError, match="export exploded"):
        InferenceEngine.from_folder(linknet_folder, backend="onnx", onnx_cache_dir=tmp_path / "c")
    with pytest.raises(InferenceError,
                       match="unknown backend 'tensorrt'; valid backends: auto, eager, onnx, onnx-int8, "
                             "openvino-bf16, bf16"):
        InferenceEngine.from_folder(linknet_folder, backend="tensorrt")


def test_ensemble_is_the_mean_of_fold_probabilities(linknet_folder):
    frames = smooth_frames(2, 64, 64, seed=2)
    both = InferenceEngine.from_folder(linknet_folder, backend="eager", postprocess=RAW)
    assert both.folds == (0, 1)
    p_both = both.predict(frames, return_probabilities=True).probabilities
    singles = [InferenceEngine.from_folder(linknet_folder, backend="eager", folds=[k]).predict(
        frames, return_probabilities=True).probabilities for k in (0, 1)]
    assert np.abs(p_both - (singles[0] + singles[1]) / 2).max() < 1e-5
    assert np.abs(singles[0] - singles[1]).max() > 0.1  # the folds really differ


def test_flip_tta_is_flip_equivariant(linknet_folder):
    frames = smooth_frames(2, 72, 64, seed=3)
    tta = InferenceEngine.from_folder(linknet_folder, backend="eager", folds=[0], tta=True, postprocess=RAW)
    plain = InferenceEngine.from_folder(linknet_folder, backend="eager", folds=[0], postprocess=RAW)
    p = tta.predict(frames, return_probabilities=True)
    p_flipped = tta.predict(frames[:, :, ::-1].copy(), return_probabilities=True)
    assert p.masks.shape == p.probabilities.shape == (2, 72, 64) and p.confidence.shape == (2,)
    assert np.abs(p_flipped.probabilities[:, :, ::-1] - p.probabilities).max() < 1e-5
    q = plain.predict(frames, return_probabilities=True).probabilities
    q_flipped = plain.predict(frames[:, :, ::-1].copy(), return_probabilities=True).probabilities[:, :, ::-1]
    assert np.abs(p.probabilities - (q + q_flipped) / 2).max() < 1e-5


def test_any_size_and_bit_depth(linknet_folder):
    engine = InferenceEngine.from_folder(linknet_folder, backend="eager", batch_size=2)
    u8 = smooth_frames(1, 80, 60, seed=4)[0]
    u12 = (u8.astype(np.uint16) * 16)  # the same image stored in 12 bits
    fl = u8.astype(np.float32) / 255.0
    pred = engine.predict([u8, fl, smooth_frames(1, 50, 130, seed=5)[0]], return_probabilities=True)
    assert isinstance(pred.masks, list) and [m.shape for m in pred.masks] == [(80, 60), (80, 60), (50, 130)]
    assert pred.masks[0].dtype == bool and pred.confidence.dtype == np.float32
    assert np.abs(pred.probabilities[0] - pred.probabilities[1]).max() < 1e-5
    p12 = engine.predict(u12, bits_stored=12, return_probabilities=True).probabilities[0]
    assert np.abs(p12 - pred.probabilities[0]).max() < 1e-2
    assert ((pred.confidence >= 0) & (pred.confidence <= 1)).all()
    assert pred.low_confidence.shape == (3,)
    with pytest.raises(InferenceError, match="expected a non-empty 2-D array"):
        engine.predict([np.zeros((4, 4, 3), np.uint8)])


def test_host_threads_give_the_serial_results_in_input_order(linknet_folder):
    """Pre/post-processing on worker threads: same masks, maps and confidences, same order."""
    sizes = [(80, 60), (50, 130), (64, 64), (90, 70), (40, 40), (72, 100), (64, 48)]
    frames = [smooth_frames(1, h, w, seed=10 + i)[0] for i, (h, w) in enumerate(sizes)]
    serial = InferenceEngine.from_folder(linknet_folder, backend="eager", batch_size=2, host_threads=0)
    threaded = InferenceEngine.from_folder(linknet_folder, backend="eager", batch_size=2, host_threads=3)
    a = serial.predict(frames, return_probabilities=True)
    b = threaded.predict(frames, return_probabilities=True)
    assert [m.shape for m in b.masks] == sizes
    for ma, mb, pa, pb in zip(a.masks, b.masks, a.probabilities, b.probabilities):
        assert np.array_equal(ma, mb) and np.array_equal(pa, pb)
    assert np.array_equal(a.confidence, b.confidence)
    assert threaded.predict([]).confidence.shape == (0,)


def test_host_thread_errors_reach_the_caller(linknet_folder):
    engine = InferenceEngine.from_folder(linknet_folder, backend="eager", batch_size=2, host_threads=2)
    good = smooth_frames(3, 64, 64, seed=20)
    bad = np.zeros((8, 8), np.complex64)  # rejected while the batch is prepared, on a worker
    with pytest.raises(InferenceError, match="unsupported frame dtype complex64"):
        engine.predict([good[0], good[1], good[2], bad])
    with pytest.raises(InferenceError, match="host_threads must be >= 0"):
        InferenceEngine.from_folder(linknet_folder, backend="eager", host_threads=-1)
