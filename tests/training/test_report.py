"""`taviseg report`: tables, FLOP counting, figures and the assembled report."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import matplotlib.image
import numpy as np
import optuna
import pytest
import torch

from taviseg.cli import main
from training.errors import ReportError
from training.report import figures, tables
from training.report.build import build_report
from training.report.flops import count_flops, count_parameters, measure
from training.search_space import PAPER_SEARCH_SPACE
from training.tune import export_study, load_tune_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and one thread does not stall when the CI
    machine is busy (OpenMP spin-waits of 2 threads on 2 loaded cores cost seconds)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_png(path: Path, min_bytes: int = 5000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) >= min_bytes, (path, len(data))
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 100
    assert image[..., :3].std() > 0.01  # not a blank canvas


def test_flop_counter_counts_two_flops_per_multiply_add() -> None:
    conv = torch.nn.Conv2d(1, 4, kernel_size=3, padding=1, bias=True)
    # 4 output channels x 1 input channel x 3 x 3 taps x 8 x 8 positions multiply-adds
    assert count_flops(conv, 8) == 2 * 4 * 1 * 9 * 64
    assert count_parameters(conv) == 4 * 9 + 4


def test_paper_model_costs_match_the_spec() -> None:
    manet = measure("manet", "efficientnet-b4", 512)
    assert manet.params_m == pytest.approx(25.63, abs=0.01)
    assert manet.gflops == pytest.approx(37.8, abs=0.1)  # docs/benchmark.md, FlopCounterMode at 512 px
    unetpp = measure("unetplusplus", "efficientnet-b0", 624, flops=False)
    assert unetpp.network_size == 640 and unetpp.flops is None and unetpp.gflops is None


def test_tables_markdown_and_csv(tmp_path: Path) -> None:
    t1 = tables.table1_search_space(PAPER_SEARCH_SPACE)
    md = t1.to_markdown().splitlines()
    assert md[0] == "### Table 1. Hyper-parameter search space"
    assert md[2] == "| hyperparameter | values (this study) | values (paper) |" and md[3].count("---") == 3
    assert len(t1.rows) == 5 and t1.rows[0][1] == t1.rows[0][2]  # default space == paper's
    assert "U-Net++, LinkNet, FPN, PSPNet, DeepLabV3+, MA-Net" in md[4]
    t3 = tables.table3_patient_level({"m": {
        "architecture": "manet", "n_patients": 3, "n_frames": 9,
        "dice": {"estimate": 0.9, "low": 0.85, "high": 0.95}, "assd_mm": {"estimate": None, "low": None, "high": None},
    }})
    row = t3.rows[0]
    assert row[:6] == ["m", "MA-Net", 3, 9, 0.9, "0.850-0.950"] and row[6] is None
    assert row[10:] == [0.942, "0.934-0.951", 4.067, "3.384-4.387"]  # the paper's MA-Net figures
    path = t3.write_csv(tmp_path / "t3.csv")
    with path.open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == t3.columns and rows[1][6] == ""
    assert "| – |" in t3.to_markdown()
    cmp = tables.table_comparison(
        [{"model_a": "a", "model_b": "b", "n_patients": "4", "median_a": "0.9", "median_b": "0.8",
          "median_difference": "0.1", "statistic": "0", "p_value": "0.125", "p_holm": "0.25",
          "significant": "False"}], {"a": "manet", "b": "unetplusplus"})
    assert cmp.rows[0][-2:] == ["no", "significant"]  # ours vs the paper's verdict


def test_mean_band_and_figures(tmp_path: Path) -> None:
    mean, low, high = figures.mean_band([[1.0, 2.0, 3.0], [3.0, 4.0]])
    np.testing.assert_allclose(mean, [2.0, 3.0, 3.0])
    np.testing.assert_allclose(low, [1.05, 2.05, 3.0])
    np.testing.assert_allclose(high, [2.95, 3.95, 3.0])
    rng = np.random.default_rng(0)
    hist = [[{"epoch": e, "train_loss": 1 - e / 10, "val_loss": 1 - e / 12, "train_dice": e / 10,
              "val_dice": e / 12 + rng.normal(0, 0.02)} for e in range(1, 6)] for _ in range(3)]
    assert_png(figures.plot_training_curves({"a": hist, "b": hist[:2]}, tmp_path / "curves.png"))
    assert_png(figures.plot_dice_boxplots({"a": rng.uniform(0.8, 1, 10)}, {"a": rng.uniform(0.7, 1, 40)},
                                          tmp_path / "box.png"))
    assert_png(figures.plot_dice_assd_scatter({"a": [(0.9, 3.0), (0.8, float("nan")), (0.95, 2.0)]},
                                              tmp_path / "scatter.png"))
    image = rng.integers(0, 255, (48, 48)).astype(np.uint8)
    truth = np.zeros((48, 48), bool)
    truth[10:30, 10:30] = True
    panel = {"title": "best", "image": image, "truth": truth, "prediction": np.roll(truth, 3, axis=1)}
    assert_png(figures.plot_overlays({"a": [panel, panel], "b": [panel]}, tmp_path / "overlays.png"))


def test_report_from_evaluation_and_tuning(tmp_path: Path, capsys) -> None:
    from tests.training.test_evaluate import cfg, make_data, model_folder
    from training.evaluate import evaluate

    data_root = make_data(tmp_path / "data")
    models = {}
    for name, biases in (("full", {0: 100.0, 1: 100.0}), ("mixed", {0: 100.0, 1: -100.0})):
        train_dir = tmp_path / f"train_{name}"
        models[name] = model_folder(train_dir / "model", data_root, biases)
        for k in (0, 1):
            (train_dir / f"fold_{k}").mkdir()
            (train_dir / f"fold_{k}" / "history.csv").write_text(
                "epoch,train_loss,train_dice,val_loss,val_dice,seconds,images_per_s\n"
                + "".join(f"{e},{1 - e / 5},{e / 5},{1 - e / 6},{e / 6 + k / 20},1.0,5.0\n" for e in (1, 2, 3))
            )
    evaluate(models, data_root, tmp_path / "eval", cfg(bootstrap_resamples=200))
    # a tuning folder as `taviseg tune` leaves it
    study = optuna.create_study(direction="maximize", study_name="t-linknet")
    dist = {n: optuna.distributions.CategoricalDistribution(list(v)) for n, v in PAPER_SEARCH_SPACE.items()}
    for value, arch in ((0.7, "linknet"), (0.8, "linknet"), (None, "fpn")):
        params = {"architecture": arch, "encoder": "resnet101", "input_size": 512, "optimizer": "adam", "lr": 1e-4}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dist, value=value,
            state=optuna.trial.TrialState.COMPLETE if value else optuna.trial.TrialState.FAIL))
    study.set_user_attr("search_space", {**PAPER_SEARCH_SPACE, "input_size": [32]})
    export_study(study, tmp_path / "tune", load_tune_config().base_train())

    rc = main(["report", "--evaluation", str(tmp_path / "eval"), "--tuning", str(tmp_path / "tune"),
               "--out", str(tmp_path / "report")])
    assert rc == 0 and "report.md" in capsys.readouterr().out
    report = (tmp_path / "report" / "report.md").read_text()
    for heading in ("Table 1.", "Table 2.", "Table 2b.", "Table 3.", "Model comparison"):
        assert f"### {heading}" in report
    assert "model selection verified" in report
    with (tmp_path / "report" / "table2_configurations.csv").open() as fh:
        t2 = list(csv.DictReader(fh))
    assert [r["model"] for r in t2] == ["full", "mixed"]
    assert float(t2[0]["params (M)"]) == pytest.approx(11.66, abs=0.01)  # LinkNet/ResNet-18, measured
    assert float(t2[0]["FLOPs (G)"]) > 0 and t2[0]["tuning DSC"] == "0.8"  # best COMPLETE linknet trial
    assert t2[0]["paper params (M)"] == "17.9"
    with (tmp_path / "report" / "table2b_tuning.csv").open() as fh:
        t2b = list(csv.DictReader(fh))
    assert t2b[0]["complete"] == "2" and t2b[0]["failed"] == "1" and t2b[0]["best val DSC"] == "0.8"
    with (tmp_path / "report" / "table1_search_space.csv").open() as fh:
        assert list(csv.DictReader(fh))[2]["values (this study)"] == "32"
    with (tmp_path / "report" / "table4_comparison.csv").open() as fh:
        cmp = list(csv.DictReader(fh))
    assert len(cmp) == 1 and 0.0 <= float(cmp[0]["p"]) <= float(cmp[0]["p (Holm)"]) <= 1.0
    for name in ("training_curves", "dice_boxplots", "dice_assd_scatter", "overlays"):
        assert_png(tmp_path / "report" / "figures" / f"{name}.png")
        assert f"figures/{name}.png" in report
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["models"]["full"]["examples"]


def test_report_errors(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="summary.json"):
        build_report(tmp_path, tmp_path / "out")
    (tmp_path / "t").mkdir()
    with pytest.raises(ReportError, match="best_params.json"):
        from training.report.build import read_tuning

        read_tuning(tmp_path / "t")
