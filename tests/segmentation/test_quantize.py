"""int8 quantisation: the variant and its provenance, the accuracy check that refuses to write,
the engine's choice of variant, old folders, and the variant recorded in the SR."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import shutil

import numpy as np
import pytest
import torch

from segmentation.errors import InferenceError, ModelError
from segmentation.inference import engine as engine_mod
from segmentation.inference import quantize as quantize_mod
from segmentation.inference.engine import InferenceEngine
from segmentation.inference.quantize import (
    INT8_VARIANT,
    AccuracyCheckError,
    QuantizationError,
    QuantizeSettings,
    default_weight_type,
    method_text,
    quantize_model_folder,
)
from segmentation.metrics import dice
from segmentation.models.folder import (
    VARIANTS_FILENAME,
    load_model_folder,
    save_model_folder,
)
from tests.segmentation.conftest import make_model_folder, make_state

#: The product's targets except the median mask Dice: 0.98 instead of 0.99. The test model is a
#: random network at 48 px whose masks are fragmented (most pixels lie near a boundary, where
#: int8 flips them), unlike a trained model's smooth outline. With 7-bit weights (the default on
#: AVX2) it scored a median of 0.9900 against the 0.99 target; trained LinkNet/ResNet-18 at 512 px
#: scored 0.9933 (bench/RESULTS.md). The refusal itself is tested below with blank calibration.
SETTINGS = QuantizeSettings(calibration_frames=4, check_frames=4, batch_size=4, min_median_dice=0.98)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """The tiny phantom preset at 96 px: 4 patients x 4 frames with ground-truth masks."""
    from tavidata.phantom import generate_cohort, load_phantom_preset

    root = tmp_path_factory.mktemp("phantom") / "tiny"
    generate_cohort(root, dataclasses.replace(load_phantom_preset("tiny"), size=96), contact_sheet=False)
    return root


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, phantom, onnx_cache):
    """A LinkNet/ResNet-18 48 px folder with its int8 variant, and the report."""
    folder = make_model_folder(tmp_path_factory.mktemp("q") / "model", size=48)
    report = quantize_model_folder(folder, phantom, settings=SETTINGS, onnx_cache_dir=onnx_cache)
    return folder, report


def test_quantize_writes_the_variant_with_provenance(quantized, phantom):
    import onnx
    import onnxruntime
    from onnx import numpy_helper

    folder, report = quantized
    assert report.written and report.passed and list(report.files) == [0]
    mf = load_model_folder(folder)
    variant = mf.variants[INT8_VARIANT]
    path = folder / variant.files[0]
    assert path == report.files[0] and path.is_file()
    assert variant.sha256[0] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert variant.source_weights_sha256[0] == mf.weights_hash(0)
    assert variant.padded_size == mf.spec.padded_size == 64
    prov = variant.provenance
    cal = prov["calibration"]
    assert cal["dataset"]["name"] == "phantom-tiny" and cal["dataset"]["path"] == str(phantom.resolve())
    assert cal["method"] == "minmax" and "QDQ" in prov["method"] and "per-channel" in prov["method"]
    fold = cal["folds"]["0"]
    assert fold["calibration_frames"] == 4 and len(fold["calibration_frame_ids"]) == 4
    # calibration and check frames come from different patients
    assert not set(fold["calibration_patients"]) & set(fold["check_patients"])
    check = fold["check"]
    assert check["median_dice_vs_fp32"] >= SETTINGS.min_median_dice and check["worst_frame"].startswith("P00")
    assert check["fp32_dice_gt"] is not None and abs(check["dice_change"]) <= 0.005
    assert prov["versions"]["onnxruntime"] == onnxruntime.__version__
    assert prov["versions"]["onnx"] == onnx.__version__
    # the file really is int8: quantised weights, activations through QDQ pairs; the head stays float
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    # 8-bit signed weights where this CPU has VNNI/AMX-INT8, 7-bit ones elsewhere (AVX2's u8 x s8
    # kernels saturate with 8 bits, not with 7)
    weight_type = default_weight_type()
    assert variant.provenance["weight_type"] == weight_type and prov["method"] == method_text(weight_type)
    want = onnx.TensorProto.UINT8 if weight_type == "uint8" else onnx.TensorProto.INT8
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == want and t.dims]
    assert len(weights) > 10
    if weight_type == "int7":
        assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64
    head = [n for n in model.graph.node if "logits" in n.output]
    assert head and head[0].op_type == "Conv" and fold["nodes_kept_float"] == [head[0].name]


def test_engine_picks_int8_on_cpu_unless_told_otherwise(quantized, phantom, onnx_cache):
    from tavidata.format import Dataset

    folder, _ = quantized
    dataset = Dataset.load(phantom)
    frames = np.stack([dataset.read_image(r) for r in dataset.records])
    auto = InferenceEngine.from_folder(folder, device="cpu", backend="auto", onnx_cache_dir=onnx_cache)
    assert auto.backend_name == INT8_VARIANT
    assert auto.backends[0].path == folder / "fold_0.onnx-int8.onnx"
    fp32 = InferenceEngine.from_folder(folder, device="cpu", backend="onnx", onnx_cache_dir=onnx_cache)
    assert fp32.backend_name == "onnx" and fp32.backends[0].path.parent == onnx_cache
    eager = InferenceEngine.from_folder(folder, device="cpu", backend="eager")
    assert eager.backend_name == "eager"
    explicit = InferenceEngine.from_folder(folder, device="cpu", backend="onnx-int8")
    assert explicit.backend_name == INT8_VARIANT
    got, ref = auto.predict(frames).masks, eager.predict(frames).masks
    assert 0.05 < ref.mean() < 0.95
    assert np.median([dice(a, b) for a, b in zip(got, ref)]) > SETTINGS.min_median_dice


def test_int8_is_never_used_on_a_gpu(quantized, monkeypatch):
    """On a (pretended) CUDA device, auto picks eager autocast and onnx-int8 is refused."""
    folder, _ = quantized
    built = []

    class FakeTorchBackend:
        def __init__(self, model, *, device, autocast_dtype, channels_last, name):
            self.name = name
            built.append((device.type, autocast_dtype, name))

    monkeypatch.setattr(engine_mod, "resolve_device", lambda device: torch.device("cuda", 0))
    monkeypatch.setattr(engine_mod, "TorchBackend", FakeTorchBackend)
    monkeypatch.setattr(engine_mod, "gpu_autocast_dtype", lambda: torch.bfloat16)
    engine = InferenceEngine.from_folder(folder, device="cuda", backend="auto")
    assert engine.backend_name == "eager-bf16" and built == [("cuda", torch.bfloat16, "eager-bf16")]
    with pytest.raises(InferenceError, match="'onnx-int8' runs on the CPU only, the device is cuda:0"):
        InferenceEngine.from_folder(folder, device="cuda", backend="onnx-int8")


def test_a_variant_of_other_weights_is_not_used(quantized, tmp_path, onnx_cache, caplog, no_native_bf16):
    folder, _ = quantized
    copy = tmp_path / "retrained"
    shutil.copytree(folder, copy)
    spec = load_model_folder(copy).spec
    save_model_folder(copy, spec, {0: make_state("linknet", "resnet18", seed=5)}, overwrite=True)
    assert (copy / VARIANTS_FILENAME).is_file()  # still listed, but made from the old weights
    with caplog.at_level(logging.WARNING):
        engine = InferenceEngine.from_folder(copy, device="cpu", backend="auto", onnx_cache_dir=onnx_cache)
    assert engine.backend_name == "onnx" and "made from other weights" in caplog.text
    with pytest.raises(InferenceError, match=r"folds \[0\] have no valid int8 variant; make it with "
                                             r"`taviseg model quantize"):
        InferenceEngine.from_folder(copy, device="cpu", backend="onnx-int8")


def test_a_failed_accuracy_check_writes_nothing(tmp_path, phantom, onnx_cache, monkeypatch):
    """Calibrated on blank frames, the activation ranges are wrong: the check fails, nothing is written."""
    folder = make_model_folder(tmp_path / "model", size=48)
    before = sorted(p.name for p in folder.iterdir())

    def blank_batches(mf, images, batch_size):
        return [np.zeros((len(images), 1, mf.spec.padded_size, mf.spec.padded_size), np.float32)]

    monkeypatch.setattr(quantize_mod, "model_batches", blank_batches)
    with pytest.raises(AccuracyCheckError, match="int8 variant not written, the accuracy check failed") as info:
        quantize_model_folder(folder, phantom, settings=SETTINGS, onnx_cache_dir=onnx_cache,
                              rejected_dir=tmp_path / "rejected")
    assert info.value.report.files == {0: tmp_path / "rejected" / "fold_0.onnx-int8.rejected.onnx"}
    assert info.value.report.files[0].stat().st_size > 0  # kept for inspection, outside the folder
    check = info.value.report.checks[0]
    assert not check.passed and check.median_dice_vs_fp32 < 0.99 and check.worst_frame
    assert "median Dice vs fp32" in check.reasons[0]
    assert sorted(p.name for p in folder.iterdir()) == before  # no variants.json, no .onnx
    assert load_model_folder(folder).variants == {}


def test_the_check_fails_targets_the_int8_model_cannot_meet(quantized, phantom):
    """The int8 model that passed the default targets fails stricter ones, each reason named."""
    from tavidata.format import Dataset

    folder, report = quantized
    mf = load_model_folder(folder)
    dataset = Dataset.load(phantom)
    records = dataset.records
    images = [dataset.read_image(r) for r in records]
    masks = [dataset.read_mask(r) for r in records]
    ids = [r.frame_id for r in records]
    int8_path = report.files[0]
    passed = quantize_mod.check_fold(mf, 0, int8_path, images, masks, ids, SETTINGS)
    assert passed.passed and passed.frames == len(records) and passed.worst_frame in ids
    if passed.min_dice_vs_fp32 == 1.0:
        pytest.skip("int8 and fp32 masks identical on every frame: no Dice target below 1 to miss")
    strict = dataclasses.replace(SETTINGS, min_median_dice=1.0, max_dice_change=0.0)
    failed = quantize_mod.check_fold(mf, 0, int8_path, images, masks, ids, strict)
    assert not failed.passed
    assert failed.min_dice_vs_fp32 == pytest.approx(passed.min_dice_vs_fp32)
    if failed.median_dice_vs_fp32 < 1.0:
        assert any(r.startswith("median Dice vs fp32") for r in failed.reasons)
    if failed.dice_change:
        assert any(r.startswith("Dice vs ground truth changed by") for r in failed.reasons)
    assert "FAILED" in failed.describe() and failed.worst_frame in failed.describe()


def test_old_folders_without_variants_load_and_run_fp32(tmp_path, onnx_cache, no_native_bf16):
    folder = make_model_folder(tmp_path / "old", size=48)
    assert not (folder / VARIANTS_FILENAME).exists()
    assert json.loads((folder / "config.json").read_text())["format_version"] == 1
    mf = load_model_folder(folder)
    assert mf.variants == {} and mf.variant_file(INT8_VARIANT, 0) is None
    engine = InferenceEngine.from_folder(folder, device="cpu", backend="auto", onnx_cache_dir=onnx_cache)
    assert engine.backend_name == "onnx"
    (folder / VARIANTS_FILENAME).write_text('{"format": "something-else"}')
    with pytest.raises(ModelError,
                       match=r"variants.json: format is 'something-else', expected 'taviseg-model-variants'"):
        load_model_folder(folder)


def test_calibration_data_errors_are_named(tmp_path, onnx_cache):
    folder = make_model_folder(tmp_path / "m", size=48)
    with pytest.raises(QuantizationError, match="calibration data: .*not a taviseg data set"):
        quantize_model_folder(folder, tmp_path / "nowhere", onnx_cache_dir=onnx_cache)
    with pytest.raises(QuantizationError, match="calibrate_method 'magic'"):
        QuantizeSettings(calibrate_method="magic")


def test_the_sr_records_the_model_variant():
    import pydicom

    from segmentation.dicom.calibration import calibrate
    from segmentation.dicom.seg import build_segmentation
    from segmentation.dicom.sr import build_measurement_report, measure_frames
    from tests.dicom import derive
    from tests.dicom.checks import to_bytes

    ds = derive.xa_dataset(derive.cine(2, 40, 48, bits=12), bits_stored=12)
    del ds.PixelData
    masks = derive.disc_masks(2, 40, 48)
    names = {"algorithm_name": "taviseg-test", "algorithm_version": "1"}
    seg = build_segmentation(ds, masks, frame_numbers=[1, 2], series_number=901,
                             series_description="AI", **names)
    sr = build_measurement_report(ds, seg, measure_frames(masks, [1, 2], [0.9, 0.8]), calibration=calibrate(ds),
                                  series_number=902, series_description="AI", model_variant=INT8_VARIANT, **names)
    back = pydicom.dcmread(io.BytesIO(to_bytes(sr)))

    def texts(items):
        for item in items:
            if "TextValue" in item:
                yield item.ConceptNameCodeSequence[0].CodeValue, str(item.TextValue)
            yield from texts(item.get("ContentSequence", []))

    params = [t for code, t in texts(back.ContentSequence) if code == "111002"]  # Algorithm Parameters
    assert params and set(params) == {"model variant: onnx-int8"}
    plain = build_measurement_report(ds, seg, measure_frames(masks, [1, 2]), calibration=calibrate(ds),
                                     series_number=902, series_description="AI", **names)
    assert "model variant:" not in str(plain)


def test_the_weight_type_follows_the_cpu_int8_dot_product():
    from segmentation.inference.cpu import cpu_has_int8_dot

    def cpuinfo(flags):
        return f"processor\t: 0\nflags\t\t: {flags}\n"

    assert not cpu_has_int8_dot(cpuinfo("fpu sse2 avx avx2 fma"))  # AVX2: u8 x s8 saturates
    assert not cpu_has_int8_dot(cpuinfo("avx2 avx512f avx512bw"))  # AVX-512 without VNNI too
    assert cpu_has_int8_dot(cpuinfo("avx2 avx512f avx512_vnni"))
    assert cpu_has_int8_dot(cpuinfo("avx2 avx_vnni")) and cpu_has_int8_dot(cpuinfo("amx_int8"))
    with pytest.raises(QuantizationError, match="weight_type 'int4'"):
        QuantizeSettings(weight_type="int4")


def test_a_signed_int8_variant_does_not_run_on_a_cpu_that_would_saturate(
        quantized, tmp_path, onnx_cache, caplog, monkeypatch, no_native_bf16):
    """A variant made with signed weights on a VNNI machine and copied to an AVX2 one: auto runs
    fp32 there and says why; an explicit onnx-int8 is refused naming the remedy."""
    from segmentation.inference import cpu as cpu_mod

    folder, _ = quantized
    copy = tmp_path / "from-a-vnni-machine"
    shutil.copytree(folder, copy)
    listing = json.loads((copy / VARIANTS_FILENAME).read_text())
    listing["variants"][INT8_VARIANT]["provenance"]["weight_type"] = "int8"
    (copy / VARIANTS_FILENAME).write_text(json.dumps(listing))
    monkeypatch.setattr(cpu_mod, "cpu_has_int8_dot", lambda cpuinfo=None: False)
    with caplog.at_level(logging.WARNING):
        engine = InferenceEngine.from_folder(copy, device="cpu", backend="auto", onnx_cache_dir=onnx_cache)
    assert engine.backend_name == "onnx" and "int8 variant not used" in caplog.text
    with pytest.raises(InferenceError, match="signed int8 weights and this CPU has no VNNI"):
        InferenceEngine.from_folder(copy, device="cpu", backend="onnx-int8")
    monkeypatch.setattr(cpu_mod, "cpu_has_int8_dot", lambda cpuinfo=None: True)
    assert InferenceEngine.from_folder(copy, device="cpu", backend="auto").backend_name == INT8_VARIANT
    # 7-bit weights (int7) cannot saturate: they run on the CPU without VNNI
    monkeypatch.setattr(cpu_mod, "cpu_has_int8_dot", lambda cpuinfo=None: False)
    listing["variants"][INT8_VARIANT]["provenance"]["weight_type"] = "int7"
    (copy / VARIANTS_FILENAME).write_text(json.dumps(listing))
    assert InferenceEngine.from_folder(copy, device="cpu", backend="auto").backend_name == INT8_VARIANT
