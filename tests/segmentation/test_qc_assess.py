"""The quality assessor on small models: same masks as the engine, QC data stored in the model
folder and loaded with it, a folder without QC data still runs and says so, the gate empties."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest

from segmentation.errors import ModelError
from segmentation.inference.engine import InferenceEngine
from segmentation.qc.assess import QualityAssessor
from segmentation.qc.calibrator import DIRECTIONS, FEATURES, Calibrator
from segmentation.qc.ood import FeatureGaussian
from segmentation.qc.shape import ShapeStats, shape_features
from segmentation.qc.store import (
    NOT_AVAILABLE,
    QC_JSON,
    QC_NPZ,
    Gate,
    QualityModel,
    load_quality_model,
    save_quality_model,
)
from tests.segmentation.conftest import make_model_folder, smooth_frames


def make_qc(engine: InferenceEngine, *, gate: Gate | None = None, flag_below: float = 0.5,
            frames: np.ndarray | None = None) -> QualityModel:
    """QC data for a test model, fitted on ``frames`` (default: smooth frames): OOD statistics of
    their encoder features, shapes of discs, and a calibrator standardised on the frames' own
    features with unit weights in the declared directions (qualities spread around 0.5)."""
    frames = smooth_frames(12, 64, 64, seed=5) if frames is None else frames
    measured = QualityAssessor(engine=engine, qc=None).measure(frames, sequence=True)
    ood = FeatureGaussian.fit(measured.encoder)
    yy, xx = np.mgrid[:64, :64]
    discs = [((yy - 24) ** 2 + (xx - 32) ** 2) < r * r for r in range(8, 16)]
    shape = ShapeStats.fit([shape_features(d, (0.5, 0.5)) for d in discs], fov_mm=32.0)
    for f, d in zip(measured.features, ood.distance(measured.encoder)):
        f["ood_log_distance"] = float(np.log1p(d))
        f["shape_implausibility"] = shape.implausibility(f)
    x = np.array([[f[k] for k in FEATURES] for f in measured.features], np.float64)
    mean = np.nan_to_num(np.nanmean(x, axis=0))
    std = np.nan_to_num(np.nanstd(x, axis=0))
    std = np.where(std > 1e-6, std, 1.0)
    coef = np.array([float(DIRECTIONS[f]) for f in FEATURES])
    calibrator = Calibrator(features=FEATURES, mean=mean, std=std, coef=coef, intercept=0.0)
    gate = gate or Gate(ood_max=1e9, area_frac_min=0.0, area_frac_max=1.0, contrast_min=-1e9)
    return QualityModel(calibrator=calibrator, shape=shape, ood=ood, gate=gate,
                        flag_below=flag_below, provenance={"purpose": "tests"})


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One torch thread: on a shared, loaded 2-core machine two threads ran 14x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("qc") / "m", size=64)


@pytest.fixture(scope="module")
def engine(folder):
    return InferenceEngine.from_folder(folder, device="cpu", backend="eager", host_threads=0)


@pytest.mark.parametrize("tta", [False, True])
def test_assessor_masks_are_the_engines(folder, tta):
    eng = InferenceEngine.from_folder(folder, device="cpu", backend="eager", host_threads=0, tta=tta)
    frames = smooth_frames(3, 80, 72, seed=2)
    expected = eng.predict(frames)
    got = QualityAssessor(engine=eng, qc=None).predict(frames)
    for a, b in zip(got.masks, expected.masks):
        assert np.array_equal(a, b)
    np.testing.assert_allclose(got.confidence, expected.confidence, atol=1e-6)


def test_folder_without_qc_data_loads_and_says_so(tmp_path, caplog):
    path = make_model_folder(tmp_path / "plain", size=64)
    eng = InferenceEngine.from_folder(path, device="cpu", backend="eager", host_threads=0)
    with caplog.at_level(logging.WARNING, logger="segmentation.qc.store"):
        first = QualityAssessor.from_engine(eng)
        second = QualityAssessor.from_engine(eng)
    assert not first.available and not second.available
    assert sum("no QC data" in r.getMessage() for r in caplog.records) == 1  # logged once
    pred = first.predict(smooth_frames(2, 64, 64))
    assert pred.quality is None and pred.quality_text(0) == NOT_AVAILABLE
    assert not pred.flagged.any() and pred.verdict.status == "unknown"
    assert pred.verdict.text == "AI outline, quality not available"
    assert all(m.shape == (64, 64) for m in pred.masks)


def test_qc_data_round_trip_through_the_folder(tmp_path, engine):
    qc = make_qc(engine)
    path = make_model_folder(tmp_path / "withqc", size=64)
    save_quality_model(path, qc)
    data = json.loads((path / QC_JSON).read_text())
    assert data["format"] == "taviseg-qc" and data["format_version"] == 1
    assert data["target"] == "P(frame Dice >= 0.8)"
    back = load_quality_model(path)
    assert back is not None and back.flag_below == qc.flag_below and back.gate == qc.gate
    np.testing.assert_allclose(back.ood.precision, qc.ood.precision)
    eng = InferenceEngine.from_folder(path, device="cpu", backend="eager", host_threads=0)
    frames = smooth_frames(4, 64, 64, seed=9)
    a = QualityAssessor.from_engine(eng).predict(frames)
    b = QualityAssessor(engine=eng, qc=qc).predict(frames)
    assert a.quality is not None and np.all((a.quality >= 0) & (a.quality <= 1))
    np.testing.assert_allclose(a.quality, b.quality)
    assert a.features[0]["ood_distance"] >= 0 and not np.isnan(a.features[1]["temporal_dice"])


def test_invalid_qc_data_is_an_error_naming_the_file(tmp_path, engine):
    path = make_model_folder(tmp_path / "bad", size=64)
    save_quality_model(path, make_qc(engine))
    data = json.loads((path / QC_JSON).read_text())
    data["format_version"] = 99
    (path / QC_JSON).write_text(json.dumps(data))
    with pytest.raises(ModelError, match="QC format version 99"):
        load_quality_model(path)
    data["format_version"] = 1
    (path / QC_JSON).write_text(json.dumps(data))
    (path / QC_NPZ).unlink()
    with pytest.raises(ModelError, match="qc.npz"):
        load_quality_model(path)


def test_gate_gives_empty_masks_with_a_reason_and_flags_them(engine):
    frames = smooth_frames(3, 64, 64, seed=3)
    qc = make_qc(engine, gate=Gate(ood_max=0.0, area_frac_min=0.0, area_frac_max=1.0, contrast_min=-1e9,
                                   shape_max=-1.0))
    pred = QualityAssessor(engine=engine, qc=qc).predict(frames)
    assert all(not m.any() for m in pred.masks)
    assert any(m.any() for m in pred.raw_masks)
    assert all(r is not None and "unlike the training frames" in r for r in pred.reasons)
    assert pred.flagged.all() and pred.verdict.status == "fail" and pred.verdict.no_root == 3
    assert pred.verdict.text == "AI: no aortic root found in 3 frames"
    area = make_qc(engine, gate=Gate(ood_max=1e9, area_frac_min=0.0, area_frac_max=1e-4, contrast_min=-1e9))
    pred = QualityAssessor(engine=engine, qc=area).predict(frames)
    assert [r is not None and "implausible area" in r for r, m in zip(pred.reasons, pred.raw_masks) if m.any()]


def test_distance_alone_flags_a_frame_but_keeps_a_plausible_outline(engine):
    """Real frames sit farther from synthetic training frames than held-out ones do: an
    out-of-distribution input keeps its outline (flagged) unless the outline is also unlike a root."""
    frames = smooth_frames(3, 64, 64, seed=3)
    qc = make_qc(engine, gate=Gate(ood_max=0.0, area_frac_min=0.0, area_frac_max=1.0, contrast_min=-1e9,
                                   shape_max=1e9))
    qc = dataclasses.replace(qc, ood_flag=0.0)
    pred = QualityAssessor(engine=engine, qc=qc).predict(frames)
    assert any(m.any() for m in pred.raw_masks)
    assert all(np.array_equal(m, r) for m, r in zip(pred.masks, pred.raw_masks))
    assert all(r is None for r in pred.reasons)
    assert pred.flagged.all()


def test_qc_data_of_other_weights_are_not_used(tmp_path, engine, caplog):
    path = make_model_folder(tmp_path / "retrained", size=64)
    qc = make_qc(engine)
    save_quality_model(path, dataclasses.replace(qc, provenance={"weights_sha256": {"0": "0" * 64}}))
    eng = InferenceEngine.from_folder(path, device="cpu", backend="eager", host_threads=0)
    with caplog.at_level(logging.ERROR, logger="segmentation.qc.assess"):
        assert not QualityAssessor.from_engine(eng).available
    assert any("fitted for other weights" in r.getMessage() for r in caplog.records)
    right = {"0": eng.folder.weights_hash(0)}
    save_quality_model(path, dataclasses.replace(qc, provenance={"weights_sha256": right}))
    assert QualityAssessor.from_engine(eng).available


def test_frames_beyond_the_fitted_range_are_flagged_but_keep_their_outline(engine):
    frames = smooth_frames(3, 64, 64, seed=3)
    qc = dataclasses.replace(make_qc(engine, flag_below=0.0), ood_flag=0.0)
    pred = QualityAssessor(engine=engine, qc=qc).predict(frames)
    assert pred.flagged.all() and pred.reasons == [None] * 3
    assert all(np.array_equal(a, b) for a, b in zip(pred.masks, pred.raw_masks))
    assert not QualityAssessor(engine=engine, qc=dataclasses.replace(qc, ood_flag=1e9)).predict(frames).flagged.any()


def test_the_encoder_features_alone_are_those_the_measurement_pools(engine):
    frames = smooth_frames(5, 70, 64, seed=11)
    assessor = QualityAssessor(engine=engine, qc=None)
    np.testing.assert_allclose(assessor.encoder_features(frames), assessor.measure(frames).encoder,
                               rtol=1e-5, atol=1e-6)


def without_flip(qc: QualityModel) -> QualityModel:
    """``qc`` with a calibrator that leaves the flip feature out."""
    cal = qc.calibrator
    keep = [i for i, f in enumerate(cal.features) if f != "flip_dice"]
    return dataclasses.replace(qc, calibrator=Calibrator(
        features=tuple(cal.features[i] for i in keep), mean=cal.mean[keep], std=cal.std[keep],
        coef=cal.coef[keep], intercept=cal.intercept))


@pytest.mark.parametrize("tta", [False, True])
def test_without_the_flip_feature_the_assessor_runs_one_pass_per_frame(folder, tta):
    """A calibrator without flip_dice (a model that is not flip-consistent): no mirrored forward
    pass unless TTA needs it (half the QC inference), flip_dice not measured, the same masks."""
    frames = smooth_frames(3, 64, 64, seed=7)
    results = {}
    for flips in (True, False):
        eng = InferenceEngine.from_folder(folder, device="cpu", backend="eager", host_threads=0, tta=tta)
        qc = make_qc(eng)
        seen: list[int] = []
        for backend in eng.backends.values():
            logits = backend.logits
            backend.logits = lambda x, _f=logits, _seen=seen: (_seen.append(x.shape[0]), _f(x))[1]
        pred = QualityAssessor(engine=eng, qc=qc if flips else without_flip(qc)).predict(frames)
        assert sum(seen) == (6 if flips or tta else 3), seen
        assert np.isfinite(pred.quality).all()
        assert all(np.isnan(f["flip_dice"]) == (not flips and not tta) for f in pred.features)
        results[flips] = pred.masks
    assert all(np.array_equal(a, b) for a, b in zip(results[True], results[False]))
