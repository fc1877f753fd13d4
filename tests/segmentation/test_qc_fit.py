"""Fitting a folder's QC data end to end (`taviseg qc fit`), and the training hook's size guard."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segmentation.inference.engine import InferenceEngine
from segmentation.qc.fit import contrast_limit, fit_after_training
from segmentation.qc.store import QC_JSON, load_quality_model
from tavidata.format import Dataset, DatasetWriter
from tavidata.splits import split_dataset
from taviseg.cli import main as taviseg_main
from tests.segmentation.conftest import make_model_folder, smooth_frames


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def labelled_dataset(root, folder, *, patients=8, frames=4):
    """Frames whose ground truth is the model's own mask (Dice 1) for even patients and a
    shifted copy of it (Dice near 0) for odd ones: both label classes, known in advance."""
    engine = InferenceEngine.from_folder(folder, device="cpu", backend="eager", host_threads=0)
    with DatasetWriter(root, name="qc-fit-test") as writer:
        for p in range(patients):
            images = smooth_frames(frames, 64, 64, seed=100 + p)
            masks = engine.predict(images).masks
            for i, (img, m) in enumerate(zip(images, masks)):
                gt = m if p % 2 == 0 else np.roll(m, 32, axis=(0, 1)) & ~m
                writer.add(f"P{p:03d}", "run01", i, img, gt, spacing_mm=(0.5, 0.5))
    split_dataset(root, k=2, seed=0, val_fraction=0.25)
    return root


def test_qc_fit_command_writes_qc_data_the_folder_then_loads(tmp_path):
    folder = make_model_folder(tmp_path / "model", size=64)
    data = labelled_dataset(tmp_path / "data", folder)
    stress = tmp_path / "stress"
    assert taviseg_main(["-q", "qc", "stress", "--out", str(stress), "--size", "64", "--runs", "1",
                         "--frames", "2", "--no-samples"]) == 0
    assert load_quality_model(folder) is None
    assert taviseg_main(["-q", "qc", "fit", str(folder), "--data", str(data), "--stress", str(stress),
                         "--device", "cpu"]) == 0
    qc = load_quality_model(folder)
    assert qc is not None and 0.05 <= qc.flag_below <= 0.95
    data_json = json.loads((folder / QC_JSON).read_text())
    assert data_json["provenance"]["frames"]["stress"] == 20
    assert set(data_json["provenance"]["weights_sha256"]) == {"0"}
    for f, c in zip(qc.calibrator.features, qc.calibrator.coef):
        assert c * {"ood_log_distance": -1, "boundary_entropy": -1, "shape_implausibility": -1,
                    "components": -1}.get(f, 1) >= 0


def test_qc_fit_of_one_label_class_is_an_error_not_a_crash(tmp_path, capsys):
    folder = make_model_folder(tmp_path / "model", size=64)
    data = tmp_path / "data"
    with DatasetWriter(data, name="all-empty") as writer:
        for p in range(8):
            for i, img in enumerate(smooth_frames(2, 64, 64, seed=p)):
                writer.add(f"P{p:03d}", "run01", i, img, np.ones((64, 64), bool))
    split_dataset(data, k=2, seed=0, val_fraction=0.25)
    assert taviseg_main(["-q", "qc", "fit", str(folder), "--data", str(data), "--stress", str(data),
                         "--device", "cpu"]) == 1
    assert "both classes" in capsys.readouterr().err
    assert load_quality_model(folder) is None


def test_training_hook_skips_tiny_data_sets(tmp_path):
    folder = make_model_folder(tmp_path / "model", size=64)
    data = labelled_dataset(tmp_path / "data", folder, patients=4, frames=2)
    assert fit_after_training(folder, data, tmp_path / "stress", device="cpu") is None
    assert not (folder / QC_JSON).exists() and not (tmp_path / "stress").exists()


@pytest.mark.parametrize("good", [[0.3, 0.12, 0.5], [0.2, -0.06, 0.1, -0.01], [-0.2], [0.0]])
def test_the_no_contrast_gate_spares_every_good_held_out_frame(good):
    """A v2 root crossing the heart shadow can be lighter than its ring (contrast -0.06) and still
    be outlined right: the gate's limit lies below every good frame, with a margin."""
    limit = contrast_limit(np.array(good))
    assert limit < min(good) and limit <= -0.02
    assert limit == pytest.approx(1.5 * min(0.0, min(good)) - 0.02)


def test_the_training_hook_stresses_a_model_with_frames_of_its_own_generator():
    from segmentation.qc.fit import stress_preset

    assert stress_preset({"config": {"generator": "ct"}}) == "ct_demo"
    assert stress_preset({"config": {"generator": "v1"}}) == "demo"
    assert stress_preset({"name": "imported", "source": "release"}) == "demo"  # real data: no generator


def test_the_training_hook_puts_the_real_samples_of_the_environment_in_its_stress_set(
        tmp_path, samples_dir, monkeypatch):
    """`taviseg train` fits QC data through the hook: with $TAVISEG_DICOM_SAMPLES set (as in the
    README's commands), its stress set holds the real non-TAVI runs, not phantom frames only."""
    monkeypatch.setenv("TAVISEG_DICOM_SAMPLES", str(samples_dir))
    folder = make_model_folder(tmp_path / "model", size=64)
    data = labelled_dataset(tmp_path / "data", folder, patients=16, frames=8)
    assert fit_after_training(folder, data, tmp_path / "stress", device="cpu") is not None
    stages = {f.stage for f in Dataset.load(tmp_path / "stress").records}
    assert "real" in stages and "clean" in stages
    assert json.loads((folder / QC_JSON).read_text())


def test_a_samples_folder_without_the_stress_files_still_gives_qc_data(tmp_path, monkeypatch, caplog):
    """$TAVISEG_DICOM_SAMPLES naming some other folder: the hook fits on phantom frames only and
    says which files were missing, instead of leaving the model without QC data."""
    other = tmp_path / "other-samples"
    other.mkdir()
    monkeypatch.setenv("TAVISEG_DICOM_SAMPLES", str(other))
    folder = make_model_folder(tmp_path / "model", size=64)
    data = labelled_dataset(tmp_path / "data", folder, patients=16, frames=8)
    with caplog.at_level("WARNING"):
        assert fit_after_training(folder, data, tmp_path / "stress", device="cpu") is not None
    assert "without real samples" in caplog.text and "rubo_0002_XA_jpegbaseline_96f" in caplog.text
    assert "real" not in {f.stage for f in Dataset.load(tmp_path / "stress").records}


def test_the_flip_feature_is_left_out_for_a_model_that_is_not_flip_consistent():
    from segmentation.qc.calibrator import FEATURES
    from segmentation.qc.fit import calibrator_features

    rows = lambda flips: [{"features": {"flip_dice": f}} for f in flips]  # noqa: E731
    # trained without flips for views with the root on one side: ~0 on good frames
    assert "flip_dice" not in calibrator_features(rows([0.0, 0.02, 0.0, 0.06]))
    assert calibrator_features(rows([0.95, 0.9, 0.1])) == FEATURES
    assert calibrator_features(rows([float("nan")])) == FEATURES  # not measured: nothing to judge by


def test_the_no_contrast_limit_lies_below_the_training_outlines_too(tmp_path):
    """The "no contrast" gate's limit rests on the ground-truth outlines of the training frames
    as well as the model's good held-out outlines: a training root lighter than its ring (a v2
    root over the spine) keeps an unseen root like it from being emptied."""
    from segmentation.qc.contrast import mask_contrast
    from segmentation.qc.fit import model_patients

    folder = make_model_folder(tmp_path / "model", size=64)
    data = labelled_dataset(tmp_path / "data", folder, patients=10)
    stress = tmp_path / "stress"
    assert taviseg_main(["-q", "qc", "stress", "--out", str(stress), "--size", "64", "--runs", "1",
                         "--frames", "2", "--no-samples"]) == 0
    assert taviseg_main(["-q", "qc", "fit", str(folder), "--data", str(data), "--stress", str(stress),
                         "--device", "cpu"]) == 0
    dataset = Dataset.load(data)
    train_p, _ = model_patients(dataset, [0])
    gt_contrast = [mask_contrast(Dataset.read_image(r), Dataset.read_mask(r)) for r in dataset.frames_of(train_p)]
    assert min(gt_contrast) < -0.02  # the shifted outlines of the odd patients: lighter than their ring
    assert load_quality_model(folder).gate.contrast_min <= contrast_limit(np.array(gt_contrast)) + 1e-9


def test_the_flag_threshold_is_chosen_on_qualities_predicted_out_of_fold():
    """Each held-out patient's quality comes from a calibrator that did not see that patient;
    with one patient (nothing to hold out) it is the full calibrator's."""
    from segmentation.qc.calibrator import Calibrator
    from segmentation.qc.fit import cross_fitted_quality

    rng = np.random.default_rng(0)
    feats = ("boundary_entropy", "confidence")

    def rows(patient, n, good):
        return [{"patient_id": patient, "dice": 0.9 if good else 0.3,
                 "features": {"boundary_entropy": rng.normal(0.2 if good else 0.5, 0.1),
                              "confidence": rng.normal(0.95 if good else 0.85, 0.03)}} for _ in range(n)]

    held = [r for p in range(6) for r in rows(f"P{p}", 6, True) + rows(f"P{p}", 2, False)]
    odd = rows("P9", 4, True)
    for r in odd:  # a patient whose good frames look bad: only its own fit could know better
        r["features"]["boundary_entropy"] = 0.45
    held += odd
    stress = rows("S", 20, False)
    y = np.array([r["dice"] >= 0.8 for r in held + stress], float)
    x = np.array([[r["features"][f] for f in feats] for r in held + stress])
    full = Calibrator.fit(x, y, features=feats)
    oof = cross_fitted_quality(full, held, stress, folds=3, seed=0)
    inside = full.predict(x[:len(held)])
    assert oof.shape == (len(held),) and not np.allclose(oof, inside)
    # predicting P9 without P9 in the fit can only rate its odd good frames lower
    p9 = [i for i, r in enumerate(held) if r["patient_id"] == "P9"]
    assert oof[p9].mean() <= inside[p9].mean() + 1e-9
    one = [r for r in held if r["patient_id"] == "P0"]
    np.testing.assert_allclose(cross_fitted_quality(full, one, stress), full.predict(x[:len(one)]))


def test_the_training_hook_keeps_qc_data_fitted_for_the_same_weights(tmp_path, monkeypatch):
    """`taviseg train` run again over finished folds rewrites the model folder with the same
    weights: its QC data are kept, not fitted again; new weights are fitted again."""
    from segmentation.models.folder import load_model_folder, save_model_folder
    from tests.segmentation.conftest import make_state

    monkeypatch.delenv("TAVISEG_DICOM_SAMPLES", raising=False)
    folder = make_model_folder(tmp_path / "model", size=64)
    data = labelled_dataset(tmp_path / "data", folder, patients=16, frames=8)
    first = fit_after_training(folder, data, tmp_path / "stress", device="cpu")
    assert first is not None
    stamp = (folder / QC_JSON).stat().st_mtime_ns
    spec = load_model_folder(folder).spec  # the training command's rewrite, same weights
    save_model_folder(folder, spec, {0: load_model_folder(folder).state_dict(0)}, overwrite=True)
    again = fit_after_training(folder, data, tmp_path / "stress", device="cpu")
    assert again is not None and again.flag_below == first.flag_below
    assert (folder / QC_JSON).stat().st_mtime_ns == stamp
    state = make_state("linknet", "resnet18", seed=0)  # the same network, one weight nudged
    key = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)
    state[key] = state[key] + 1e-4
    save_model_folder(folder, spec, {0: state}, overwrite=True)
    assert fit_after_training(folder, data, tmp_path / "stress", device="cpu") is not None
    assert (folder / QC_JSON).stat().st_mtime_ns != stamp
    fitted = json.loads((folder / QC_JSON).read_text())["provenance"]["weights_sha256"]
    assert fitted == {"0": load_model_folder(folder).weights_hash(0)}


def test_frames_the_model_leaves_empty_are_answered_by_the_gate_not_fitted(tmp_path):
    """A data set with frames without a root (before the injection, empty ground truth) that the
    model rightly leaves empty: those frames are not calibrator rows (their features are
    degenerate; the gate answers them "nothing segmented"), and the fit still succeeds."""
    from segmentation.qc.assess import QualityAssessor
    from segmentation.qc.fit import fit_quality_model

    # The random model's threshold is put just above its highest probability on a black frame:
    # it outlines nothing there, and a few pixels on the smooth frames that peak higher.
    probe = InferenceEngine.from_folder(make_model_folder(tmp_path / "probe", size=64), device="cpu",
                                        backend="eager", host_threads=0)
    blank = [np.zeros((64, 64), np.uint8)] * 3
    threshold = float(probe.predict(blank[:1], return_probabilities=True).probabilities[0].max()) + 1e-3
    candidates = smooth_frames(60, 64, 64, seed=200)
    peaks = [float(p.max()) for p in probe.predict(candidates, return_probabilities=True).probabilities]
    outlined = [img for img, peak in zip(candidates, peaks) if peak > threshold + 1e-3]
    assert len(outlined) >= 30, len(outlined)
    folder = make_model_folder(tmp_path / "model", size=64, threshold=threshold)
    engine = InferenceEngine.from_folder(folder, device="cpu", backend="eager", host_threads=0)
    assert not any(m.any() for m in engine.predict(blank).masks)  # this model outlines nothing there
    data = tmp_path / "data"
    with DatasetWriter(data, name="qc-fit-pre-injection") as writer:
        for p in range(10):
            images = outlined[3 * p:3 * p + 3]
            masks = engine.predict(images).masks
            assert all(m.any() for m in masks)
            for i, (img, m) in enumerate(zip(images, masks)):
                writer.add(f"P{p:03d}", "run01", i, img, m if p % 2 == 0 else np.roll(m, 32, axis=(0, 1)) & ~m,
                           spacing_mm=(0.5, 0.5))
            for i, img in enumerate(blank):  # the frames before the contrast arrives
                writer.add(f"P{p:03d}", "run01", 3 + i, img, np.zeros((64, 64), bool), spacing_mm=(0.5, 0.5))
    split_dataset(data, k=2, seed=0, val_fraction=0.25)
    stress = tmp_path / "stress"
    assert taviseg_main(["-q", "qc", "stress", "--out", str(stress), "--size", "64", "--runs", "1",
                         "--frames", "2", "--no-samples"]) == 0
    assessor = QualityAssessor(engine=engine, qc=None)
    rows: list[dict] = []
    qc = fit_quality_model(assessor, data, [stress], rows_out=rows, save=False)
    assert rows and all(r["features"]["area_frac"] > 0 for r in rows)
    assert qc.shape.area_frac_range[0] > 0
    pred = assessor.predict(blank)
    assert pred.reasons == ["nothing segmented"] * 3 and pred.flagged.all()
    assert pred.verdict.text == "AI: no aortic root found in 3 frames"
