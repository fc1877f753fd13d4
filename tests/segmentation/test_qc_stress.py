"""The stress-set command is seeded: same seed, same bytes; another seed or part, other frames."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from segmentation.qc.errors import QualityError
from segmentation.qc.stress import CORRUPTIONS, StressSpec, corrupt
from tavidata.format import Dataset
from taviseg.cli import main as taviseg_main


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def build(out: Path, seed: int, part: str = "fit", *extra: str) -> int:
    return taviseg_main(["-q", "qc", "stress", "--out", str(out), "--seed", str(seed), "--part", part,
                         "--size", "64", "--runs", "1", "--frames", "2", *extra])


def test_same_seed_same_bytes_other_seed_other_frames(tmp_path):
    assert build(tmp_path / "a", 0, "fit", "--no-samples") == 0
    assert build(tmp_path / "b", 0, "fit", "--no-samples") == 0
    assert build(tmp_path / "c", 1, "fit", "--no-samples") == 0
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert a == b
    images = [k for k in a if k.startswith("images/")]
    assert len(images) == 2 * len(CORRUPTIONS)
    assert sum(a[k] != c.get(k) for k in images) > len(images) // 2
    ds = Dataset.load(tmp_path / "a")
    assert {r.stage for r in ds.records} == set(CORRUPTIONS)
    for rec in ds.records:  # no root to see without contrast
        assert Dataset.read_mask(rec).any() == (rec.stage not in ("no_contrast", "cropped")) or rec.stage == "cropped"


def test_real_samples_have_empty_ground_truth_and_parts_are_disjoint(tmp_path, samples_dir):
    assert build(tmp_path / "t", 0, "test", "--samples", str(samples_dir)) == 0
    ds = Dataset.load(tmp_path / "t")
    real = [r for r in ds.records if r.stage == "real"]
    assert {r.patient_id for r in real} == {"Rwg04XA1UNC", "Rrubo0015RFGEDRSuncompressed"}
    assert len(real) == 8 and not any(Dataset.read_mask(r).any() for r in real)
    assert ds.meta["stress"]["part"] == "test" and ds.meta["stress"]["frames"]["real"] == 8


def test_corruptions_change_frames_as_described():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[:10, :20] = True
    params = {"quarter_turns": 1, "crop": (0, 0, 32)}
    out, m = corrupt(img, mask, "inverted", 0.5, rng, params)
    assert np.array_equal(out, 255 - img) and np.array_equal(m, mask)
    out, m = corrupt(img, mask, "rotated", 0.5, rng, params)
    assert np.array_equal(m, np.rot90(mask))
    out, m = corrupt(img, mask, "low_contrast", 1.0, rng, params)
    assert out.std() < 0.2 * img.std()
    out, m = corrupt(img, mask, "cropped", 0.5, rng, params)
    assert m.mean() == pytest.approx(4 * mask.mean(), rel=0.05)
    with pytest.raises(QualityError, match="unknown corruption"):
        corrupt(img, mask, "sepia", 0.5, rng, params)
    with pytest.raises(QualityError, match="part"):
        StressSpec(part="train")


def test_without_a_samples_folder_the_command_says_what_to_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TAVISEG_DICOM_SAMPLES", raising=False)
    assert build(tmp_path / "s", 0, "fit") != 0
    assert "--samples DIR" in capsys.readouterr().err
    assert not (tmp_path / "s" / "manifest.csv").exists()


def test_a_v2_preset_draws_its_runs_from_the_ct_generator(tmp_path):
    """With a CT preset every phantom run is a v2 run: its pixel spacing follows from the run's
    C-arm geometry (so it differs between runs), and "no contrast" frames have empty truth."""
    assert build(tmp_path / "v2", 0, "fit", "--no-samples", "--preset", "ct_tiny") == 0
    assert build(tmp_path / "v2b", 0, "fit", "--no-samples", "--preset", "ct_tiny") == 0
    assert digest(tmp_path / "v2") == digest(tmp_path / "v2b")
    ds = Dataset.load(tmp_path / "v2")
    clean = [r for r in ds.records if r.stage == "clean"]
    spacing = {r.stage: r.spacing_mm for r in ds.records if r.stage not in ("cropped",)}
    assert len(set(spacing.values())) > 3, spacing  # one geometry per run (v1: the preset's one spacing)
    assert all(Dataset.read_mask(r).any() for r in clean)
    assert not any(Dataset.read_mask(r).any() for r in ds.records if r.stage == "no_contrast")
