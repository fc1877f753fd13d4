"""`taviseg evaluate`: fold routing, metrics in mm, per-patient aggregation, CIs, comparisons,
and the model-selection check from provenance.

Model folders are built with constant outputs (segmentation head weights 0, bias +-100), so
each fold's prediction is known exactly: all foreground or empty. That makes "fold k's weights
score fold k's test patients only" directly observable.
"""

from __future__ import annotations

import csv
import functools
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from segmentation import metrics
from segmentation.models.folder import ModelSpec, save_model_folder
from segmentation.models.zoo import build_model
from tavidata.format import Dataset, DatasetWriter
from tavidata.splits import SPLITS_FILENAME, load_splits, make_splits, save_splits
from taviseg.cli import main
from training.errors import EvaluationError
from training.evaluate import check_selection, evaluate, load_evaluate_config, splits_sha256

SIZE = 32
SPACING = (0.5, 0.8)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and one thread does not stall when the CI
    machine is busy (OpenMP spin-waits of 2 threads on 2 loaded cores cost seconds)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_data(root: Path) -> Path:
    """4 patients with 2-3 frames of 32 x 32 px, anisotropic spacing, 2 folds."""
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    with DatasetWriter(root, name="eval-test") as writer:
        for p in range(4):
            for f in range(2 + p % 2):  # 2 or 3 frames per patient
                cy, cx = rng.integers(10, 22, size=2)
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(16, 49)
                image = rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8)
                writer.add(f"P{p:03d}", "run01", f, image, mask, spacing_mm=SPACING)
    save_splits(make_splits(Dataset.load(root), k=2, seed=0), root / SPLITS_FILENAME)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("eval-data"))


@functools.cache
def constant_state(bias: float) -> dict[str, torch.Tensor]:
    """Weights of a LinkNet whose output is the constant logit ``bias`` (cached per bias)."""
    model = build_model("linknet", "resnet18")
    head = model.segmentation_head[0]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(bias)
    return model.state_dict()


def provenance(data_root: Path, *, sha: str | None = None, selection: str | None = None) -> dict:
    return {
        "splits": {"file": SPLITS_FILENAME, "sha256": sha or splits_sha256(data_root / SPLITS_FILENAME)},
        "selection": selection or "best epoch per fold by validation Dice (validation patients only)",
        "folds": {"0": {"best_epoch": 2, "best_val_dice": 0.5}, "1": {"best_epoch": 1, "best_val_dice": 0.4}},
    }


def model_folder(path: Path, data_root: Path, biases: dict[int, float], **prov) -> Path:
    spec = ModelSpec(architecture="linknet", encoder="resnet18", input_size=SIZE,
                     provenance=provenance(data_root, **prov))
    return save_model_folder(path, spec, {k: constant_state(b) for k, b in biases.items()})


def cfg(**overrides):
    return load_evaluate_config(overrides={"inference.device": "cpu", "inference.backend": "eager",
                                           "bootstrap_resamples": 500, **overrides})


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_fold_k_weights_score_fold_k_test_patients(tmp_path: Path, data_root: Path) -> None:
    folder = model_folder(tmp_path / "m", data_root, {0: 100.0, 1: -100.0})  # fold 0 full, fold 1 empty
    result = evaluate({"routed": folder}, data_root, tmp_path / "eval", cfg())
    dataset = Dataset.load(data_root)
    splits = load_splits(data_root)
    frames = read(tmp_path / "eval" / "per_frame.csv")
    assert len(frames) == len(dataset)  # the test sets partition the patients: every frame once
    records = {r.frame_id: r for r in dataset.records}
    for row in frames:
        fold = int(row["fold"])
        assert row["patient_id"] in splits.folds[fold].test
        gt = dataset.read_mask(records[row["frame_id"]])
        if fold == 0:
            full = np.ones_like(gt)
            assert int(row["pred_area_px"]) == SIZE * SIZE
            assert float(row["dice"]) == pytest.approx(2 * gt.sum() / (gt.sum() + gt.size), rel=1e-4)
            assert float(row["assd_mm"]) == pytest.approx(metrics.assd_mm(full, gt, SPACING), rel=1e-4)
            assert float(row["assd_mm"]) != pytest.approx(metrics.assd_mm(full, gt, (1.0, 1.0)), rel=1e-3)
            assert float(row["hd95_mm"]) == pytest.approx(metrics.hd95_mm(full, gt, SPACING), rel=1e-4)
        else:
            assert int(row["pred_area_px"]) == 0 and float(row["dice"]) == pytest.approx(0.0, abs=1e-6)
            assert row["assd_mm"] == ""  # undefined for an empty prediction (NaN)
    patients = read(tmp_path / "eval" / "per_patient.csv")
    assert sorted(p["patient_id"] for p in patients) == sorted(dataset.patients)
    for p in patients:
        dice = [float(r["dice"]) for r in frames if r["patient_id"] == p["patient_id"]]
        assert float(p["dice"]) == pytest.approx(np.mean(dice), rel=1e-4)
        assert float(p["dice_median"]) == pytest.approx(np.median(dice), rel=1e-4)
        assert int(p["n_frames"]) == len(dice)
        assert int(p["n_surface_undefined"]) == (len(dice) if p["fold"] == "1" else 0)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    model = summary["models"]["routed"]
    assert model["model_selection"]["verified"] is True
    assert "fold 0: epoch 2, fold 1: epoch 1" in model["model_selection"]["statement"]
    assert model["n_frames"] == len(dataset) and model["frames_surface_undefined"] > 0
    assert model["dice"]["low"] <= model["dice"]["estimate"] <= model["dice"]["high"]
    assert model["dice"]["estimate"] == pytest.approx(np.median([float(p["dice"]) for p in patients]), rel=1e-8)
    assert not (tmp_path / "eval" / "comparison.csv").exists() and result.comparisons == []
    examples = model["examples"]
    assert [e["kind"] for e in examples] == ["best"] * 3 + ["worst"] * 3
    assert examples[0]["dice"] >= examples[1]["dice"] and examples[-1]["dice"] >= examples[-2]["dice"]
    assert all((tmp_path / "eval" / e["prediction"]).is_file() for e in examples)


def test_several_models_compared_with_wilcoxon_holm_via_cli(tmp_path: Path, data_root: Path, capsys) -> None:
    full = model_folder(tmp_path / "full", data_root, {0: 100.0, 1: 100.0})
    empty = model_folder(tmp_path / "empty", data_root, {0: -100.0, 1: -100.0})
    mixed = model_folder(tmp_path / "mixed", data_root, {0: 100.0, 1: -100.0})
    rc = main(["evaluate", "--model", f"full={full}", "--model", f"empty={empty}", "--model", f"mixed={mixed}",
               "--data", str(data_root), "--out", str(tmp_path / "eval"), "--device", "cpu",
               "--backend", "eager", "--bootstrap", "300", "--set", "examples=1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "full vs empty" in out and "model selection verified" in out
    rows = read(tmp_path / "eval" / "comparison.csv")
    assert [(r["model_a"], r["model_b"]) for r in rows] == [("full", "empty"), ("full", "mixed"), ("empty", "mixed")]
    p = [float(r["p_value"]) for r in rows]
    p_holm = [float(r["p_holm"]) for r in rows]
    assert all(0.0 <= a <= b <= 1.0 for a, b in zip(p, p_holm))
    full_empty = rows[0]
    assert int(full_empty["n_patients"]) == 4 and float(full_empty["median_difference"]) > 0
    assert float(full_empty["p_value"]) == pytest.approx(2 / 2**4)  # exact: 4 positive differences
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["models"]["empty"]["assd_mm"]["estimate"] is None  # all NaN -> null, valid JSON
    assert summary["models"]["empty"]["dice"]["estimate"] == pytest.approx(0.0, abs=1e-6)
    for m in summary["models"].values():
        if m["dice"]["estimate"] is not None:
            assert m["dice"]["low"] <= m["dice"]["estimate"] <= m["dice"]["high"]
    assert len(summary["comparison"]) == 3


def test_selection_check_from_provenance(tmp_path: Path, data_root: Path) -> None:
    splits = load_splits(data_root)
    digest = splits_sha256(data_root / SPLITS_FILENAME)
    ok = check_selection(provenance(data_root), splits, digest, (0, 1))
    assert ok.verified and not ok.problems
    with pytest.raises(EvaluationError, match="other splits"):
        check_selection(provenance(data_root, sha="0" * 64), splits, digest, (0,))
    with pytest.raises(EvaluationError, match="test data"):
        check_selection(provenance(data_root, selection="best epoch by test Dice"), splits, digest, (0,))
    unknown = check_selection({}, splits, digest, (0,))
    assert not unknown.verified and "NOT verified" in unknown.statement and len(unknown.problems) == 3
    # a folder trained on other splits is refused by evaluate
    folder = model_folder(tmp_path / "other", data_root, {0: 1.0}, sha="f" * 64)
    with pytest.raises(EvaluationError, match="other splits"):
        evaluate({"other": folder}, data_root, tmp_path / "eval", cfg())
    with pytest.raises(EvaluationError, match="model name"):
        evaluate({"a b": folder}, data_root, tmp_path / "eval", cfg())


def test_patient_median_aggregate_option(tmp_path: Path, data_root: Path) -> None:
    folder = model_folder(tmp_path / "m", data_root, {0: 100.0})  # only fold 0 held
    evaluate({"m": folder}, data_root, tmp_path / "eval", cfg(patient_aggregate="median", hd95=False))
    patients = read(tmp_path / "eval" / "per_patient.csv")
    splits = load_splits(data_root)
    assert {p["patient_id"] for p in patients} == set(splits.folds[0].test)  # fold 1 not held -> not scored
    assert all(p["dice"] == p["dice_median"] and p["hd95_mm"] == "" for p in patients)
    assert not math.isnan(float(patients[0]["assd_mm"]))


def test_inference_section_is_the_shared_schema_and_reaches_the_engine(tmp_path: Path, data_root: Path) -> None:
    """evaluate.yaml's inference section is an InferenceConfig (as predict's and the node's) and
    its switches drive the engine: a constant probability of sigmoid(0.5) = 0.62 is foreground
    at the folder's threshold 0.5 and background at inference.postprocess.threshold 0.7."""
    from typing import get_type_hints

    from segmentation.inference.config import InferenceConfig
    from tavicore.config import ConfigError
    from training.evaluate import EvaluateConfig

    assert get_type_hints(EvaluateConfig)["inference"] is InferenceConfig
    shipped = load_evaluate_config()
    assert shipped.inference.postprocess.keep_largest_component is False  # the paper: threshold only
    assert shipped.inference.postprocess.fill_holes is False and shipped.confidence == 0.95
    with pytest.raises(ConfigError, match=r"device: inference settings belong in the inference section.*"
                                          r"device -> inference\.device"):
        load_evaluate_config(overrides={"device": "cpu"})
    with pytest.raises(ConfigError, match=r"inference\.bakend: unknown key \(did you mean 'backend'"):
        load_evaluate_config(overrides={"inference.bakend": "eager"})
    with pytest.raises(ConfigError, match=r"inference\.folds \[0\]: leave it null"):
        load_evaluate_config(overrides={"inference.folds": [0]})

    folder = model_folder(tmp_path / "m", data_root, {0: 0.5})
    areas = {}
    for threshold in (None, 0.7):
        out = tmp_path / f"eval{threshold}"
        evaluate({"m": folder}, data_root, out, cfg(**{"inference.postprocess.threshold": threshold, "examples": 0}))
        areas[threshold] = {int(r["pred_area_px"]) for r in read(out / "per_frame.csv")}
    assert areas == {None: {SIZE * SIZE}, 0.7: {0}}
