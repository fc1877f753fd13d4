"""The benchmark pipeline end to end on a tiny phantom cohort, through the `taviseg` CLI:
phantom -> dataset split -> train (two models) -> tune -> evaluate -> report.

Small on purpose (64 px frames, 2 folds, 2 epochs, LinkNet/ResNet-18 and FPN/ResNet-18): the
models learn little; the test checks that every stage reads what the previous one wrote and
that the outputs have the right shape and values in range.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

import matplotlib.image
import pytest
import torch
import yaml

from tavidata.format import Dataset
from tavidata.splits import load_splits
from taviseg.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODELS = {"linknet": "linknet", "fpn": "fpn"}
TRAIN_SETTINGS = ["model.input_size=64", "epochs=2", "batch_size=4", "device=cpu", "num_workers=0"]


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and one thread does not stall when the CI
    machine is busy (OpenMP spin-waits of 2 threads on 2 loaded cores cost seconds)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_train_tune_evaluate_report_on_phantom(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tavidata.phantom import generate_cohort, load_phantom_preset

    preset = load_phantom_preset("tiny")
    data = generate_cohort(tmp_path / "data", dataclasses.replace(preset, size=64))
    assert main(["dataset", "split", str(data), "--k", "2", "--seed", "0"]) == 0
    dataset = Dataset.load(data)
    splits = load_splits(data)
    assert len(dataset.patients) >= 4 and splits.k == 2

    # train: two "models" (fold 0 and fold 1 each)
    for name, arch in MODELS.items():
        args = ["train", "--config", "conf/train/cpu_tiny.yaml", "--data", str(data),
                "--out", str(tmp_path / f"train_{name}"), "--no-progress", "--set", f"model.architecture={arch}"]
        for setting in TRAIN_SETTINGS:
            args += ["--set", setting]
        assert main(args) == 0
        assert (tmp_path / f"train_{name}" / "model" / "config.json").is_file()

    # tune: two trials over a small space, the paper's sampler/pruner
    tune_cfg = tmp_path / "tune.yaml"
    tune_cfg.write_text(yaml.safe_dump({
        "train_overrides": {"epochs": 2, "batch_size": 4, "amp": False, "channels_last": False,
                            "device": "cpu", "num_workers": 0},
        "study": {"name": "e2e", "n_trials": 2},
        "sampler": {"n_startup_trials": 1},
        "search_space": {"architecture": ["linknet", "fpn"], "encoder": ["resnet18"], "input_size": [64],
                         "optimizer": ["adam", "rmsprop"], "lr": [1e-3, 1e-4]},
    }))
    assert main(["tune", "--config", str(tune_cfg), "--data", str(data), "--out", str(tmp_path / "tune")]) == 0
    trials = read(tmp_path / "tune" / "trials.csv")
    finished = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]
    assert len(finished) == 2
    assert all(0.0 <= float(t["value"]) <= 1.0 for t in trials if t["state"] == "COMPLETE")
    best = yaml.safe_load((tmp_path / "tune" / "best_config.yaml").read_text())
    assert best["model"]["input_size"] == 64 and best["model"]["architecture"] in MODELS

    # evaluate both models; compare them
    args = ["evaluate", "--data", str(data), "--out", str(tmp_path / "eval"), "--device", "cpu",
            "--backend", "eager", "--bootstrap", "1000"]
    for name in MODELS:
        args += ["--model", f"{name}={tmp_path / f'train_{name}' / 'model'}"]
    assert main(args) == 0
    frames = read(tmp_path / "eval" / "per_frame.csv")
    patients = read(tmp_path / "eval" / "per_patient.csv")
    assert len(frames) == 2 * len(dataset)  # every frame scored once per model
    assert len(patients) == 2 * len(dataset.patients)
    for row in frames:
        assert row["patient_id"] in splits.folds[int(row["fold"])].test
        assert 0.0 <= float(row["dice"]) <= 1.0 and 0.0 <= float(row["iou"]) <= 1.0
        assert row["assd_mm"] == "" or float(row["assd_mm"]) >= 0.0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    for name in MODELS:
        m = summary["models"][name]
        assert m["model_selection"]["verified"] is True
        assert m["n_patients"] == len(dataset.patients)
        for metric in ("dice", "assd_mm"):
            ci = m[metric]
            if ci["estimate"] is not None:
                assert ci["low"] <= ci["estimate"] <= ci["high"]
        assert 0.0 <= m["dice"]["estimate"] <= 1.0
    comparison = read(tmp_path / "eval" / "comparison.csv")
    assert len(comparison) == 1 and {comparison[0]["model_a"], comparison[0]["model_b"]} == set(MODELS)
    p, p_holm = float(comparison[0]["p_value"]), float(comparison[0]["p_holm"])
    assert 0.0 <= p <= 1.0 and 0.0 <= p_holm <= 1.0

    # report
    assert main(["report", "--evaluation", str(tmp_path / "eval"), "--tuning", str(tmp_path / "tune"),
                 "--out", str(tmp_path / "report")]) == 0
    report = tmp_path / "report"
    text = (report / "report.md").read_text()
    for heading in ("Table 1.", "Table 2.", "Table 2b.", "Table 3.", "Model comparison"):
        assert f"### {heading}" in text
    t2 = read(report / "table2_configurations.csv")
    assert [r["model"] for r in t2] == list(MODELS) and all(float(r["params (M)"]) > 1 for r in t2)
    assert all(float(r["FLOPs (G)"]) > 0 for r in t2)
    t3 = read(report / "table3_patient_level.csv")
    assert [r["model"] for r in t3] == list(MODELS)
    for r in t3:
        dsc = float(r["DSC median"])
        low, high = (float(v) for v in r["DSC 95% CI"].split("-"))
        assert 0.0 <= low <= dsc <= high <= 1.0
        assert r["paper DSC"]  # the paper's figure quoted beside ours
    t4 = read(report / "table4_comparison.csv")
    assert len(t4) == 1 and 0.0 <= float(t4[0]["p (Holm)"]) <= 1.0
    for name in ("training_curves", "dice_boxplots", "dice_assd_scatter", "overlays"):
        png = report / "figures" / f"{name}.png"
        data_bytes = png.read_bytes()
        assert data_bytes[:8] == PNG_MAGIC and len(data_bytes) > 10_000, name
        image = matplotlib.image.imread(png)
        assert min(image.shape[:2]) > 200 and image[..., :3].std() > 0.01
        assert f"figures/{name}.png" in text
    assert not math.isnan(float(t3[0]["DSC median"]))
    capsys.readouterr()
