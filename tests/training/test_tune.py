"""`taviseg tune` in-process: search space, failure handling, pruning, resume, exports.

The training function is replaced by a fast stand-in that reports per-epoch results through
the real callback (the one that calls trial.report / should_prune), so these tests exercise the
study machinery in seconds; tests/training/test_tune_workers.py runs real training in worker
processes (PostgreSQL, kill -9 and resume).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from segmentation.errors import ModelError
from tavicore.config import ConfigError
from tavidata.format import Dataset, DatasetWriter
from tavidata.splits import SPLITS_FILENAME, make_splits, save_splits
from training.config import load_train_config
from training.errors import TrainingError
from training.search_space import PAPER_SEARCH_SPACE, SearchSpace, apply_params, suggest
from training.train import EpochResult, FoldResult
from training.tune import TuneConfig, load_tune_config, run_tune

EPOCHS = 4
SPACE = {
    "architecture": ["linknet", "fpn", "manet"],
    "encoder": ["resnet18", "resnet34"],
    "input_size": [64],
    "optimizer": ["adam", "rmsprop"],
    "lr": [1e-3, 1e-4],
}


def make_dataset(root: Path, patients: int = 4, frames: int = 2, size: int = 16) -> Path:
    """A tiny data set with its splits (2 folds)."""
    rng = np.random.default_rng(0)
    with DatasetWriter(root, name="tune-test") as writer:
        for p in range(patients):
            for f in range(frames):
                mask = np.zeros((size, size), bool)
                mask[4:12, 3 + f: 10 + f] = True
                image = rng.integers(0, 255, (size, size), dtype=np.uint8)
                writer.add(f"P{p:03d}", "run01", f, image, mask)
    save_splits(make_splits(Dataset.load(root), k=2, seed=0), root / SPLITS_FILENAME)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tune-data"))


class FakeTrainer:
    """Stands in for training.train.train_fold; its outcome depends on the trial's params.

    manet -> model build error; fpn + rmsprop -> NaN loss at epoch 2; encoder resnet34 with
    lr 1e-4 -> CUDA out of memory; otherwise val Dice rising to a params-dependent plateau.
    """

    def __init__(self, *, fail_all: BaseException | None = None) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.fail_all = fail_all

    def __call__(self, cfg, dataset, splits, fold, out_dir, *, epoch_callback=None, progress=True):
        m, o = cfg.model, cfg.optim
        self.calls.append((m.architecture, m.encoder, o.name, o.lr))
        assert fold == 0 and isinstance(dataset, Dataset) and out_dir.name.startswith("trial_")
        (out_dir / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        (out_dir / f"fold_{fold}" / "checkpoint_last.pt").write_bytes(b"x")
        if self.fail_all is not None:
            raise self.fail_all
        if m.architecture == "manet":
            raise ModelError(f"cannot build {m.architecture}/{m.encoder}")
        if m.encoder == "resnet34" and o.lr == 1e-4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        plateau = {"linknet": 0.8, "fpn": 0.7}[m.architecture] + (0.1 if o.lr == 1e-3 else -0.3)
        history = []
        for epoch in range(1, cfg.epochs + 1):
            loss = math.nan if (m.architecture == "fpn" and o.name == "rmsprop" and epoch == 2) else 0.5
            result = EpochResult(epoch, loss, 0.5, 0.4, plateau * epoch / cfg.epochs, 0.01, 100.0)
            history.append(result)
            if epoch_callback is not None:
                epoch_callback(result)
        best = max(history, key=lambda r: r.val_dice)
        return FoldResult(fold, best.epoch, best.val_dice, history, out_dir / "best.safetensors")


@pytest.fixture()
def storage() -> Iterator[str]:
    """A study database on tmpfs when there is one (SQLite commits are ~4x faster there)."""
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="taviseg-tune-", dir=shm if shm.is_dir() else None))
    try:
        yield f"sqlite:///{folder / 'study.db'}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def tune_config(storage: str, space: dict | None = None, **study) -> TuneConfig:
    overrides = {
        "train_overrides": {"epochs": EPOCHS, "device": "cpu"},
        "search_space": {**SPACE, **(space or {})},
        "sampler.n_startup_trials": 3,
        "pruner.kind": "none",
        **{f"study.{k}": v for k, v in {"name": "t", "n_trials": 4, "storage": storage, **study}.items()},
    }
    return load_tune_config(overrides=overrides)


def load_study(storage: str, name: str = "t") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def test_search_space_defaults_are_table1_and_validate() -> None:
    cfg = load_tune_config()
    assert cfg.search_space.as_dict() == {k: list(v) for k, v in PAPER_SEARCH_SPACE.items()}
    assert cfg.search_space.size() == 6 * 7 * 3 * 3 * 3
    assert cfg.base_train().epochs == 35  # the paper's protocol is the base
    tiny = load_tune_config(overrides={"base_train_config": "train/cpu_tiny.yaml",
                                       "train_overrides.augment.hflip_p": 0.1}).base_train()
    assert (tiny.epochs, tiny.model.input_size, tiny.augment.hflip_p, tiny.augment.noise_p) == (2, 64, 0.1, 0.2)
    with pytest.raises(ConfigError, match="did you mean 'n_trials'"):
        load_tune_config(overrides={"study.n_trial": 3})
    with pytest.raises(ConfigError, match="duplicate"):
        load_tune_config(overrides={"search_space.lr": [1e-3, 1e-3]})
    with pytest.raises(ConfigError, match="'sgd'"):
        load_tune_config(overrides={"search_space.optimizer": ["adam", "sgd"]})
    with pytest.raises(ConfigError, match="grace_period_s"):
        load_tune_config(overrides={"study.heartbeat_interval_s": 10, "study.grace_period_s": 10})
    with pytest.raises(ConfigError, match="valid: "):
        SearchSpace().restrict("unet3000")


def test_suggest_and_apply_params_use_replace() -> None:
    space = SearchSpace(architecture=("fpn",), encoder=("resnet18",), input_size=(624,),
                        optimizer=("rmsprop",), lr=(1e-4,))
    study = optuna.create_study(direction="maximize")
    params = suggest(study.ask(), space)
    assert params == {"architecture": "fpn", "encoder": "resnet18", "input_size": 624,
                      "optimizer": "rmsprop", "lr": 1e-4}
    base = load_train_config(Path("conf/train/cpu_tiny.yaml"))
    cfg = apply_params(base, params)
    assert (cfg.model.architecture, cfg.model.input_size, cfg.optim.name, cfg.optim.lr) == ("fpn", 624, "rmsprop", 1e-4)
    assert cfg.augment == base.augment and cfg.epochs == base.epochs and base.model.architecture == "linknet"
    with pytest.raises(ConfigError, match="batch"):
        apply_params(base, {"batch": 3})


def test_crashed_trials_fail_with_reason_and_study_goes_on(tmp_path: Path, data_root: Path, storage: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    study = optuna.create_study(study_name="t", storage=storage, direction="maximize")
    crashing = [
        {"architecture": "manet", "encoder": "resnet18", "input_size": 64, "optimizer": "adam", "lr": 1e-3},
        {"architecture": "linknet", "encoder": "resnet34", "input_size": 64, "optimizer": "adam", "lr": 1e-4},
        {"architecture": "fpn", "encoder": "resnet18", "input_size": 64, "optimizer": "rmsprop", "lr": 1e-3},
    ]
    for params in crashing:
        study.enqueue_trial(params)
    fake = FakeTrainer()
    result = run_tune(tune_config(storage, n_trials=3), data_root, out, train_fold=fake)
    trials = load_study(storage).trials
    states = [t.state.name for t in trials]
    assert states[:3] == ["FAIL", "FAIL", "FAIL"]
    assert states.count("COMPLETE") == 3 and result.counts["COMPLETE"] == 3
    reasons = [t.user_attrs["fail_reason"] for t in trials[:3]]
    assert reasons[0].startswith("model build error") and "manet" in reasons[0]
    assert reasons[1].startswith("out of memory") and "Tried to allocate" in reasons[1]
    assert reasons[2].startswith("non-finite loss at epoch 2")
    assert all(t.user_attrs["pid"] > 0 and ":" in t.user_attrs["worker"] for t in trials)
    # checkpoints of finished trials are dropped (keep_weights false), the folders stay
    assert not list((out / "trials").rglob("*.pt")) and len(list((out / "trials").iterdir())) == len(trials)
    rows = result.trials_csv.read_text().splitlines()
    assert rows[0].startswith("number,state,value,architecture,encoder,input_size,optimizer,lr")
    assert len(rows) == len(trials) + 1 and "model build error" in rows[1]
    assert sum(r.split(",")[1] == "FAIL" for r in rows[1:]) == result.counts["FAIL"] >= 3


def test_other_errors_stop_the_study(tmp_path: Path, data_root: Path, storage: str) -> None:
    with pytest.raises(ValueError, match="a bug"):
        run_tune(tune_config(storage), data_root, tmp_path / "out",
                 train_fold=FakeTrainer(fail_all=ValueError("a bug")))
    assert [t.state.name for t in load_study(storage).trials] == ["FAIL"]


def test_nan_from_trainer_and_failure_limit(tmp_path: Path, data_root: Path, storage: str) -> None:
    fake = FakeTrainer(fail_all=TrainingError("fold 0 epoch 3: training loss is nan; lower optim.lr"))
    result = run_tune(tune_config(storage, n_trials=5, max_failed_trials=3), data_root, tmp_path / "out",
                      train_fold=fake)
    assert len(fake.calls) == 3 and result.counts["FAIL"] == 3 and result.best_trial is None
    assert result.best_config_yaml is None
    assert all(t.user_attrs["fail_reason"].startswith("non-finite loss")
               for t in load_study(storage).trials)


def test_resume_continues_study_and_exports_best_config(tmp_path: Path, data_root: Path, storage: str) -> None:
    out = tmp_path / "out"
    fake = FakeTrainer()
    space = {"architecture": ["linknet", "fpn"], "encoder": ["resnet18"], "optimizer": ["adam"]}  # no crashes
    first = run_tune(tune_config(storage, space, n_trials=2), data_root, out, train_fold=fake)
    finished_first = [t for t in load_study(storage).trials if t.state.name == "COMPLETE"]
    assert len(finished_first) == 2
    again = run_tune(tune_config(storage, space, n_trials=2), data_root, out, train_fold=fake)
    assert again.counts == first.counts and len(fake.calls) == 2  # nothing left to do
    more = run_tune(tune_config(storage, space, n_trials=5), data_root, out, train_fold=fake)
    trials = load_study(storage).trials
    assert more.counts["COMPLETE"] == 5 and len(trials) == 5 and len(fake.calls) == 5
    kept = {t.number: (t.params, t.value) for t in trials}
    assert all(kept[t.number] == (t.params, t.value) for t in finished_first)
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert more.best_trial == best.number and more.best_value == pytest.approx(best.value)
    cfg = load_train_config(more.best_config_yaml)
    assert cfg == apply_params(tune_config(storage).base_train(), best.params)
    summary = (out / "best_params.json").read_text()
    assert '"best_params"' in summary and str(best.number) in summary


def test_hyperband_prunes_poor_trials(tmp_path: Path, data_root: Path, storage: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    study = optuna.create_study(study_name="t", storage=storage, direction="maximize")
    for lr in (1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-4, 1e-4, 1e-4):  # good ones first, then poor ones
        study.enqueue_trial({"architecture": "linknet", "encoder": "resnet18", "input_size": 64,
                             "optimizer": "adam", "lr": lr})
    cfg = tune_config(storage, n_trials=8)
    cfg = dataclasses.replace(cfg, pruner=dataclasses.replace(cfg.pruner, kind="hyperband", reduction_factor=2))
    result = run_tune(cfg, data_root, out, train_fold=FakeTrainer())
    trials = load_study(storage).trials
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned, [t.state.name for t in trials]
    assert all(t.params["lr"] == 1e-4 and max(t.intermediate_values) < EPOCHS for t in pruned)
    assert all(len(t.intermediate_values) == EPOCHS for t in trials if t.state.name == "COMPLETE")
    assert result.counts["COMPLETE"] + result.counts["PRUNED"] == 8
    assert result.best_params["lr"] == 1e-3  # the better learning rate wins
    rows = {int(r.split(",")[0]): r.split(",") for r in result.trials_csv.read_text().splitlines()[1:]}
    assert all(int(rows[t.number][9]) == max(t.intermediate_values) for t in pruned)  # last_epoch


def test_per_architecture_study(tmp_path: Path, data_root: Path, storage: str) -> None:
    result = run_tune(tune_config(storage, n_trials=2), data_root, tmp_path / "out",
                      architecture="fpn", train_fold=FakeTrainer())
    assert result.study_name == "t-fpn"
    assert {t.params["architecture"] for t in load_study(storage, "t-fpn").trials} == {"fpn"}
    with pytest.raises(ConfigError, match="not in the search space"):
        run_tune(tune_config(storage), data_root, tmp_path / "out", architecture="pspnet",
                 train_fold=FakeTrainer())
