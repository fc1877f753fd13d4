"""v2 (CT) phantom runs and cohorts: seeded bytes, ground truth = projected root, calibration, outputs."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pydicom
import pytest

from tavicore.config import ConfigError, load_config
from tavidata.format import Dataset
from tavidata.phantom import (
    PhantomConfig,
    generate_cohort,
    generate_run,
    load_phantom_preset,
    patient_seed,
)
from tavidata.phantom.config import PRESETS_FILE
from tavidata.phantom.ct.randomise import sample_ct_run
from tavidata.phantom.ct.run import (
    MASK_CHORD_VOXELS,
    build_ct_scene,
    ct_dir_of,
    load_anatomy,
)
from tests.peers import run_dciodvfy

CONFIG = PhantomConfig(generator="ct", size=160, projection_size=96, frames_per_run=(3, 3), seed=3)


@pytest.fixture(scope="module")
def run():
    return generate_run(CONFIG, patient_seed(CONFIG, 0), 0, stage="deployment")


def test_same_seed_same_bytes_other_run_other_bytes(run) -> None:
    again = generate_run(CONFIG, patient_seed(CONFIG, 0), 0, stage="deployment")
    assert run.frames.tobytes() == again.frames.tobytes() and run.masks.tobytes() == again.masks.tobytes()
    other = generate_run(CONFIG, patient_seed(CONFIG, 0), 1, stage="deployment")
    assert other.frames.tobytes() != run.frames.tobytes()
    assert run.frames.shape == (3, 160, 160) and run.frames.dtype == np.uint8 and run.masks.dtype == bool


def test_mask_covers_the_upper_root_and_the_root_is_dark(run) -> None:
    for mask in run.masks:
        assert 0.03 < mask.mean() < 0.4
        ys, xs = np.nonzero(mask)
        assert ys.mean() < 0.5 * mask.shape[0] and xs.mean() < 0.6 * mask.shape[1]  # upper left
    contrasts = []
    for p in range(4):
        r = generate_run(CONFIG, patient_seed(CONFIG, 10 + p), 0, stage="overview")
        image, mask = r.frames[1].astype(np.float32), r.masks[1]
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool) & ~mask
        contrasts.append(float(image[ring].mean() - image[mask].mean()))
    # the contrast-filled root is darker than its surroundings (real frames: 21-33 grey levels)
    assert float(np.median(contrasts)) > 8.0, contrasts


def test_mask_equals_the_thresholded_root_projection() -> None:
    anatomy = load_anatomy(ct_dir_of(CONFIG), CONFIG.ct_voxel_mm)
    rng = np.random.default_rng([5, 2, 0])
    case = sample_ct_run(rng, CONFIG, valve="evolut", n_frames=2, stage="overview")
    scene = build_ct_scene(rng, case, anatomy, projection_size=CONFIG.projection_size)
    # the static mask: the root's chord, projected with the background's rays and deformation
    chord = (scene.iodine["root_low"] + scene.iodine["root_up"]) > 0
    assert (scene.mask > 0).sum() > 0 and not ((scene.mask > 0) & ~chord).any()
    _, mask_t = scene.line_integral(case.timing.frame_times[0])
    overlap = (mask_t & (scene.mask > 0)).sum() / max((scene.mask > 0).sum(), 1)
    assert overlap > 0.8  # the frame's mask is the static one moved by a few mm of cardiac motion
    assert MASK_CHORD_VOXELS * anatomy.grid.voxel_mm > 0


def test_spacing_and_geometry_are_consistent(run) -> None:
    meta = run.meta
    assert meta["generator"] == "ct"
    magnification = meta["sid_mm"] / meta["sod_mm"]
    assert run.spacing_mm[0] == pytest.approx(meta["detector_spacing_mm"] / magnification, rel=1e-4)
    assert run.spacing_mm[0] == pytest.approx(meta["isocentre_spacing_mm"], rel=1e-4)
    assert 900 <= meta["sid_mm"] <= 1200 and 600 <= meta["sod_mm"] <= 800
    assert 0 <= meta["lao_deg"] <= 35 or meta["wide"]
    fov_iso = run.spacing_mm[0] * 160
    assert 90 < fov_iso < 250


def test_cohort_outputs_dicom_calibration_and_manifest_spacing(tmp_path) -> None:
    config = PhantomConfig(generator="ct", size=128, projection_size=64, patients=2, frames_per_run=(2, 2), seed=11)
    out = generate_cohort(tmp_path / "c", config, dicom=True)
    ds = Dataset.load(out)
    records = list(ds)
    assert len(records) == 4
    runs = json.loads((out / "runs.json").read_text())
    stats = json.loads((out / "stats.json").read_text())
    assert (out / "contact_sheet.png").is_file() and "summary" in stats
    for rec in records:
        meta = next(r for r in runs if r["patient_id"] == rec.patient_id and r["run_id"] == rec.run_id)
        assert rec.spacing_mm[0] == pytest.approx(meta["isocentre_spacing_mm"], rel=1e-5)
    path = out / "dicom" / "P001" / "run01.dcm"
    errors, _, output = run_dciodvfy(path)
    assert errors == [], output
    dcm = pydicom.dcmread(path)
    meta = runs[0]
    assert float(dcm.DistanceSourceToDetector) == pytest.approx(meta["sid_mm"], abs=0.01)
    assert float(dcm.DistanceSourceToPatient) == pytest.approx(meta["sod_mm"], abs=0.01)
    assert float(dcm.ImagerPixelSpacing[0]) == pytest.approx(meta["detector_spacing_mm"], rel=1e-4)
    assert float(dcm.ImagerPixelSpacing[0]) / float(dcm.EstimatedRadiographicMagnificationFactor) == pytest.approx(
        records[0].spacing_mm[0], rel=1e-4)
    assert float(dcm.PositionerPrimaryAngle) == pytest.approx(meta["lao_deg"], abs=0.05)
    assert float(dcm.PositionerSecondaryAngle) == pytest.approx(meta["cranial_deg"], abs=0.05)


def test_presets_and_generator_key() -> None:
    for name in ("tiny", "demo", "paper"):
        assert load_phantom_preset(name).generator == "v1"
    for name in ("ct_tiny", "ct_demo", "ct_train", "ct_train_pre", "ct_paper"):
        assert load_phantom_preset(name).generator == "ct"
    bad = PRESETS_FILE.parent / "phantom.yaml"
    with pytest.raises(ConfigError, match="generator"):
        load_config(bad, PhantomConfig, section="tiny", overrides={"generator": "v3"})


def test_domain_randomisation_widens_the_ranges() -> None:
    wide = PhantomConfig(generator="ct", domain_randomisation=1.0)
    real = PhantomConfig(generator="ct", domain_randomisation=0.0)
    lao_w = [sample_ct_run(np.random.default_rng(i), wide, valve="evolut", n_frames=1).lao_deg for i in range(200)]
    lao_r = [sample_ct_run(np.random.default_rng(i), real, valve="evolut", n_frames=1).lao_deg for i in range(200)]
    assert 0.0 <= min(lao_r) and max(lao_r) <= 35.0
    assert min(lao_w) < -10.0 and max(lao_w) > 45.0


def test_a_run_rendered_before_the_injection_has_no_dark_root() -> None:
    """``time_shift_s=-60`` renders the same scene before the bolus: the root region is no darker
    than its ring (the QC stress set's "no contrast" frames rely on it), and the ground truth is
    empty (no contrast-filled root to outline)."""
    from tavidata.phantom.ct.run import generate_ct_run

    seed = patient_seed(CONFIG, 10)
    filled = generate_ct_run(CONFIG, seed, 0, stage="overview")
    before = generate_ct_run(CONFIG, seed, 0, stage="overview", time_shift_s=-60.0)
    mask = filled.masks[1]
    assert root_contrast(filled.frames[1], mask) > root_contrast(before.frames[1], mask) + 8.0
    assert filled.masks.any(axis=(1, 2)).all()
    assert not before.masks.any()


def root_contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean grey of a ring around ``mask`` minus the mean inside (positive: the root is dark)."""
    core = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool) & ~mask
    return float(image.astype(np.float32)[ring].mean() - image.astype(np.float32)[core].mean())


def test_runs_that_start_before_the_injection_have_empty_masks_until_the_contrast_arrives() -> None:
    early = dataclasses.replace(CONFIG, pre_injection=1.0)
    empty_frames = filled_frames = 0
    for i in range(4):
        seed = patient_seed(CONFIG, 20 + i)
        run = generate_run(early, seed, 0, stage="overview")
        on_bolus = generate_run(CONFIG, seed, 0, stage="overview")
        assert run.meta["bolus_shift_s"] < 0 and "bolus_shift_s" not in on_bolus.meta
        assert on_bolus.masks.any(axis=(1, 2)).all()
        has_root = run.masks.any(axis=(1, 2))
        # once the contrast has arrived it stays: the empty frames come first
        k = int((~has_root).sum())
        assert not has_root[:k].any() and has_root[k:].all(), has_root
        for j in range(len(run.masks)):
            if has_root[j]:
                filled_frames += 1
            else:  # no contrast-filled root in the picture either: the root region is not dark
                empty_frames += 1
                assert root_contrast(run.frames[j], on_bolus.masks[j]) < root_contrast(
                    on_bolus.frames[j], on_bolus.masks[j]) - 5.0
    assert empty_frames > 0 and filled_frames > 0, (empty_frames, filled_frames)


def test_pre_injection_leaves_the_other_runs_byte_identical() -> None:
    half = dataclasses.replace(CONFIG, pre_injection=0.5)
    shifted = kept = 0
    for i in range(4):
        seed = patient_seed(CONFIG, 30 + i)
        run, plain = generate_run(half, seed, 0), generate_run(CONFIG, seed, 0)
        if "bolus_shift_s" in run.meta:
            shifted += 1
            assert run.frames.tobytes() != plain.frames.tobytes()
        else:
            kept += 1
            assert run.frames.tobytes() == plain.frames.tobytes() and run.masks.tobytes() == plain.masks.tobytes()
    assert shifted and kept, (shifted, kept)
