"""``taviseg train`` on a tiny data set: history, TensorBoard, best epoch by validation Dice,
a model folder that inference loads, resuming after an interruption or ``kill -9`` (bitwise
equal to an uninterrupted run on CPU), and clear errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tavicore.config import CONF_DIR
from tavidata.errors import DatasetError, SplitError
from tavidata.format import Dataset, DatasetWriter
from tavidata.splits import SPLITS_FILENAME, load_splits, make_splits, save_splits
from training.config import load_train_config
from training.errors import TrainingError

TINY = CONF_DIR / "train" / "cpu_tiny.yaml"
EPOCHS = 4
DEADLINE_S = 240
REPO = Path(__file__).resolve().parents[2]


def write_synthetic_dataset(root: Path, *, patients: int = 4, frames: int = 4, size: int = 96, seed: int = 0) -> Path:
    """Noisy frames with one darker disc and its mask (4 patients), plus 4-fold splits."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    with DatasetWriter(root, name="synthetic-train-test") as writer:
        for p in range(patients):
            for f in range(frames):
                image = rng.normal(140, 18, (size, size))
                cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
                radius = rng.integers(size // 8, size // 4)
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
                image[mask] -= 45
                writer.add(f"P{p:03d}", "run01", f, np.clip(image, 0, 255).astype(np.uint8), mask, stage="overview")
    save_splits(make_splits(Dataset.load(root), k=4, seed=0), root / SPLITS_FILENAME)
    return root


def make_tiny_dataset(root: Path) -> Path:
    """The phantom "tiny" cohort if the phantom package is present, else a synthetic set; with splits."""
    try:
        from tavidata.phantom import generate_cohort, load_phantom_preset
    except ImportError:
        return write_synthetic_dataset(root)
    generate_cohort(root, load_phantom_preset("tiny"), progress=False)
    if not (root / SPLITS_FILENAME).exists():
        save_splits(make_splits(Dataset.load(root), k=4, seed=0), root / SPLITS_FILENAME)
    return root


def history_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("train-data") / "data")


@pytest.fixture(scope="module")
def tiny_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    """One uninterrupted run of fold 0 (in process)."""
    from training.train import train

    cfg = load_train_config(TINY, overrides={"epochs": EPOCHS})
    out = tmp_path_factory.mktemp("train-run")
    model_dir = train(cfg, tiny_dataset, out, folds=[0], progress=False)
    return cfg, out, model_dir


def test_run_writes_history_tensorboard_and_done(tiny_run):
    _cfg, out, _model = tiny_run
    fold_dir = out / "fold_0"
    rows = history_rows(fold_dir / "history.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    assert set(rows[0]) == {"epoch", "train_loss", "train_dice", "val_loss", "val_dice", "seconds", "images_per_s"}
    for row in rows:
        assert 0.0 <= float(row["train_loss"]) <= 1.0 and 0.0 <= float(row["val_dice"]) <= 1.0
        assert float(row["images_per_s"]) > 0
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])  # it learns
    assert list((fold_dir / "tb").glob("events.out.tfevents.*"))
    done = json.loads((fold_dir / "done.json").read_text())
    assert done["epochs"] == EPOCHS and done["fold"] == 0
    assert (fold_dir / "checkpoint_last.pt").is_file()


def test_best_epoch_is_chosen_on_validation_patients(tiny_run, tiny_dataset):
    from segmentation.models.zoo import build_model
    from training.data import EvalFrameDataset, fold_records, make_loader
    from training.train import evaluate, read_history

    cfg, out, _model = tiny_run
    fold_dir = out / "fold_0"
    history = read_history(fold_dir / "history.csv")
    dices = [h.val_dice for h in history]
    done = json.loads((fold_dir / "done.json").read_text())
    assert done["best_epoch"] == int(np.argmax(dices)) + 1  # first maximum
    assert done["best_val_dice"] == max(dices)

    dataset = Dataset.load(tiny_dataset)
    splits = load_splits(tiny_dataset / SPLITS_FILENAME)
    fold = splits.fold(0)
    train_recs, val_recs = fold_records(dataset, splits, 0)
    assert {r.patient_id for r in val_recs} == set(fold.val)
    assert {r.patient_id for r in train_recs} == set(fold.train)
    assert not {r.patient_id for r in train_recs + val_recs} & set(fold.test)

    # The kept weights score the recorded best validation Dice again.
    from safetensors.torch import load_file

    model = build_model(cfg.model.architecture, cfg.model.encoder)
    model.load_state_dict(load_file(str(fold_dir / "best.safetensors")))
    loader = make_loader(EvalFrameDataset(val_recs, 64, 64), 4, shuffle=False, seed=0)
    val_loss, val_dice = evaluate(model, loader, device=torch.device("cpu"))
    best = history[done["best_epoch"] - 1]
    assert val_dice == pytest.approx(best.val_dice, abs=1e-6)
    assert val_loss == pytest.approx(best.val_loss, abs=1e-5)


def test_model_folder_loads_for_inference(tiny_run, tiny_dataset):
    from safetensors.torch import load_file

    from segmentation.inference.engine import InferenceEngine
    from segmentation.models.folder import load_model_folder

    cfg, out, model_dir = tiny_run
    assert model_dir == out / "model"
    folder = load_model_folder(model_dir)
    spec = folder.spec
    assert (spec.architecture, spec.encoder, spec.input_size) == ("linknet", "resnet18", 64)
    assert spec.folds == (0,) and spec.normalization == "unit"
    prov = spec.provenance
    assert prov["folds"]["0"]["best_epoch"] == json.loads((out / "fold_0" / "done.json").read_text())["best_epoch"]
    assert len(prov["splits"]["sha256"]) == 64 and prov["dataset"]["frames"] == len(Dataset.load(tiny_dataset))
    assert prov["config"]["epochs"] == EPOCHS and "torch" in prov["versions"]
    saved, best = load_file(str(model_dir / "fold_0.safetensors")), load_file(str(out / "fold_0" / "best.safetensors"))
    assert saved.keys() == best.keys() and all(torch.equal(saved[k], best[k]) for k in saved)

    record = Dataset.load(tiny_dataset).records[0]
    frame = Dataset.read_image(record)
    engine = InferenceEngine.from_folder(model_dir, device="cpu", backend="eager")
    prediction = engine.predict(frame[None])
    assert prediction.masks.shape == (1, *frame.shape) and prediction.masks.dtype == bool


def test_finished_fold_is_skipped(tiny_run, tiny_dataset):
    from training.train import train

    cfg, out, _model = tiny_run
    best = out / "fold_0" / "best.safetensors"
    stamp = best.stat().st_mtime_ns
    before = (out / "fold_0" / "history.csv").read_text()
    train(cfg, tiny_dataset, out, folds=[0], progress=False)
    assert best.stat().st_mtime_ns == stamp
    assert (out / "fold_0" / "history.csv").read_text() == before



class Stop(Exception):
    """Raised by :func:`stop_after_first` (as optuna.TrialPruned would be)."""


def stop_after_first(result):
    """Epoch callback that interrupts a run after its first epoch."""
    if result.epoch == 1:
        raise Stop

def test_callback_interruption_then_resume_equals_uninterrupted_run(tiny_run, tiny_dataset, tmp_path):
    """An exception from the epoch callback (e.g. optuna.TrialPruned) propagates after the
    epoch's state is saved; the same call then resumes and ends bitwise like an uninterrupted run."""
    from safetensors.torch import load_file

    from training.train import train_fold

    cfg, ref_out, _model = tiny_run
    dataset = Dataset.load(tiny_dataset)
    splits = load_splits(tiny_dataset / SPLITS_FILENAME)
    with pytest.raises(Stop):
        train_fold(cfg, dataset, splits, 0, tmp_path, epoch_callback=stop_after_first, progress=False)
    checkpoint = torch.load(tmp_path / "fold_0" / "checkpoint_last.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and not (tmp_path / "fold_0" / "done.json").exists()

    seen = []
    result = train_fold(cfg, dataset, splits, 0, tmp_path, epoch_callback=seen.append, progress=False)
    assert [r.epoch for r in seen] == list(range(2, EPOCHS + 1))
    assert [r.epoch for r in result.history] == list(range(1, EPOCHS + 1))
    ref = history_rows(ref_out / "fold_0" / "history.csv")
    got = history_rows(tmp_path / "fold_0" / "history.csv")
    for a, b in zip(ref, got, strict=True):
        for key in ("epoch", "train_loss", "train_dice", "val_loss", "val_dice"):
            assert a[key] == b[key], key
    a, b = load_file(str(ref_out / "fold_0" / "best.safetensors")), load_file(str(result.best_weights))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mask_size_mismatch_names_the_file(tmp_path):
    from training.train import train

    root = write_synthetic_dataset(tmp_path / "data", size=48)
    dataset = Dataset.load(root)
    fold = load_splits(root / SPLITS_FILENAME).fold(0)
    bad = dataset.frames_of(fold.train)[0]
    cv2.imwrite(str(bad.mask), np.zeros((40, 48), np.uint8))
    cfg = load_train_config(TINY, overrides={"epochs": 1, "batch_size": 1})
    with pytest.raises(DatasetError) as info:
        train(cfg, root, tmp_path / "out", folds=[0], progress=False)
    assert str(bad.mask) in str(info.value) and "48x40" in str(info.value)


def test_missing_splits_and_unknown_fold(tmp_path):
    from training.train import train

    root = write_synthetic_dataset(tmp_path / "data", size=32)
    cfg = load_train_config(TINY)
    with pytest.raises(SplitError, match="fold 7 does not exist"):
        train(cfg, root, tmp_path / "out", folds=[7], progress=False)
    (root / SPLITS_FILENAME).unlink()
    with pytest.raises(SplitError, match="taviseg dataset split"):
        train(cfg, root, tmp_path / "out", folds=[0], progress=False)


def test_other_configuration_in_the_same_folder_is_refused(tiny_run, tiny_dataset):
    from training.train import train

    cfg, out, _model = tiny_run
    other = load_train_config(TINY, overrides={"epochs": EPOCHS, "optim.lr": 1e-4})
    with pytest.raises(TrainingError, match="another configuration"):
        train(other, tiny_dataset, out, folds=[0], progress=False)


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kill_9_then_same_command_equals_uninterrupted_run(tiny_run, tiny_dataset, tmp_path):
    """``taviseg train`` killed with SIGKILL once an epoch's checkpoint is on disk; re-running the
    same command resumes and ends with the uninterrupted run's history and weights, bitwise."""
    from safetensors.torch import load_file

    _cfg, reference, _model = tiny_run
    out = tmp_path / "resumed"
    command = [sys.executable, "-m", "taviseg", "train", "--config", str(TINY), "--data", str(tiny_dataset),
               "--out", str(out), "--fold", "0", "--set", f"epochs={EPOCHS}", "--no-progress"]
    checkpoint = out / "fold_0" / "checkpoint_last.pt"
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not checkpoint.exists():  # bounded poll for the first epoch's checkpoint
            assert proc.poll() is None, f"train exited early: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within the deadline"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        proc.stderr.close()
    killed_at = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= killed_at < EPOCHS and not (out / "fold_0" / "done.json").exists()

    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=DEADLINE_S)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming after epoch {killed_at}" in rerun.stderr

    columns = ("epoch", "train_loss", "train_dice", "val_loss", "val_dice")
    got = [tuple(r[c] for c in columns) for r in history_rows(out / "fold_0" / "history.csv")]
    want = [tuple(r[c] for c in columns) for r in history_rows(reference / "fold_0" / "history.csv")]
    assert got == want and len(got) == EPOCHS
    assert _same_tensors(load_file(str(out / "fold_0" / "best.safetensors")),
                         load_file(str(reference / "fold_0" / "best.safetensors")))
    assert _same_tensors(load_file(str(out / "model" / "fold_0.safetensors")),
                         load_file(str(reference / "model" / "fold_0.safetensors")))
    last_a = torch.load(reference / "fold_0" / "checkpoint_last.pt", weights_only=True)
    last_b = torch.load(checkpoint, weights_only=True)
    assert _same_tensors(last_a["model"], last_b["model"])  # the final weights, not only the best
    assert last_a["best_epoch"] == last_b["best_epoch"]


def test_augmentation_draws_depend_only_on_seed_epoch_and_index(tiny_dataset):
    from training.augment import build_train_transform
    from training.config import AugmentConfig
    from training.data import FrameDataset, make_loader

    records = Dataset.load(tiny_dataset).records[:4]
    ds = FrameDataset(records, build_train_transform(64, AugmentConfig()), seed=5)
    ds.set_epoch(1)
    first = [ds[i] for i in range(4)]
    image, mask = first[2]
    assert image.shape == mask.shape == (1, 64, 64) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and set(mask.unique().tolist()) <= {0.0, 1.0}
    again = ds[2]  # after other draws, the same sample of the same epoch is the same
    assert torch.equal(again[0], image) and torch.equal(again[1], mask)
    x, _y = next(iter(make_loader(ds, 4, shuffle=False, seed=0)))
    assert all(torch.equal(x[i], first[i][0]) for i in range(4))
    ds.set_epoch(2)
    assert not all(torch.equal(ds[i][0], first[i][0]) for i in range(4))


#: How much a short CPU run must raise validation Dice above its first epoch (stated margin).
LEARNING_MARGIN = 0.25


def test_a_short_run_learns(tmp_path):
    """Eight epochs on a task a network can learn (dark discs in noise) raise validation Dice
    by at least LEARNING_MARGIN over the first epoch and past 0.7: the loop really trains."""
    from training.train import read_history, train

    data = write_synthetic_dataset(tmp_path / "data", patients=4, frames=8, size=64, seed=3)
    cfg = load_train_config(TINY, overrides={"epochs": 8, "optim.lr": 3e-3})
    train(cfg, data, tmp_path / "run", folds=[0], progress=False)
    history = read_history(tmp_path / "run" / "fold_0" / "history.csv")
    dices = [h.val_dice for h in history]
    assert len(dices) == 8
    assert max(dices) >= dices[0] + LEARNING_MARGIN, dices
    assert max(dices) >= 0.7, dices


def test_cosine_schedule_falls_from_lr_to_its_final_fraction():
    from training.config import OptimConfig
    from training.optim import epoch_lr

    cosine = OptimConfig(lr=1e-3, schedule="cosine", final_lr_fraction=0.01)
    lrs = [epoch_lr(cosine, e, 8) for e in range(1, 9)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[3] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + np.cos(np.pi * 3 / 7)))
    assert {epoch_lr(OptimConfig(lr=1e-3), e, 8) for e in range(1, 9)} == {1e-3}
    assert epoch_lr(cosine, 1, 1) == 1e-3  # a one-epoch run trains at lr


def test_cosine_run_trains_at_the_schedule_and_resumes_on_it(tiny_dataset, tmp_path):
    """The optimizer holds each epoch's scheduled rate; an interrupted cosine run resumes on the same
    curve and ends bitwise like an uninterrupted one; a longer cosine run is another run."""
    from training.optim import epoch_lr
    from training.train import config_fingerprint, train_fold

    cfg = load_train_config(TINY, overrides={"epochs": 3, "optim.schedule": "cosine"})
    dataset = Dataset.load(tiny_dataset)
    splits = load_splits(tiny_dataset / SPLITS_FILENAME)
    with pytest.raises(Stop):
        train_fold(cfg, dataset, splits, 0, tmp_path / "a", epoch_callback=stop_after_first, progress=False)
    ckpt = torch.load(tmp_path / "a" / "fold_0" / "checkpoint_last.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(cfg.optim.lr)
    resumed = train_fold(cfg, dataset, splits, 0, tmp_path / "a", progress=False)
    ckpt = torch.load(tmp_path / "a" / "fold_0" / "checkpoint_last.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(epoch_lr(cfg.optim, 3, 3))
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(cfg.optim.lr * 0.01)
    straight = train_fold(cfg, dataset, splits, 0, tmp_path / "b", progress=False)
    assert [h.val_dice for h in resumed.history] == [h.val_dice for h in straight.history]

    longer = load_train_config(TINY, overrides={"epochs": 5, "optim.schedule": "cosine"})
    assert config_fingerprint(longer) != config_fingerprint(cfg)
    with pytest.raises(TrainingError, match="another configuration"):
        train_fold(longer, dataset, splits, 0, tmp_path / "a", progress=False)
    constant = load_train_config(TINY, overrides={"epochs": 3})
    assert config_fingerprint(constant) == config_fingerprint(
        load_train_config(TINY, overrides={"epochs": 5, "optim.final_lr_fraction": 0.5}))


def test_channels_last_on_the_cpu_is_deterministic_and_the_same_model(tiny_run, tiny_dataset, tmp_path):
    """channels_last now applies on the CPU too (faster convolutions there): two runs give the
    same weights, and they match the contiguous run's up to float rounding (relative norm)."""
    from safetensors.torch import load_file

    from training.train import train

    cfg, out, _model = tiny_run
    last = load_train_config(TINY, overrides={"epochs": EPOCHS, "channels_last": True})
    for name in ("a", "b"):
        train(last, tiny_dataset, tmp_path / name, folds=[0], progress=False)
    mine, again = (load_file(str(tmp_path / n / "fold_0" / "best.safetensors")) for n in ("a", "b"))
    assert mine.keys() == again.keys() and all(torch.equal(mine[k], again[k]) for k in mine)
    theirs = load_file(str(out / "fold_0" / "best.safetensors"))
    assert cfg.channels_last is False and mine.keys() == theirs.keys()
    floats = [k for k in mine if mine[k].is_floating_point()]
    diff = sum(float((mine[k] - theirs[k]).float().pow(2).sum()) for k in floats) ** 0.5
    norm = sum(float(theirs[k].float().pow(2).sum()) for k in floats) ** 0.5
    # 0.006 on the AVX2 VM after 4 epochs (rounding differences grow with training); two
    # independently initialised networks differ by the order of their own norm
    assert diff / norm < 5e-2, diff / norm


def test_the_loss_is_part_of_the_fingerprint_and_the_default_keeps_old_runs_valid():
    """``loss: dice_bce`` trains another model than the paper's loss (another fingerprint: a
    finished fold is not reused for it); the default leaves the fingerprint of runs written
    before the loss was a setting as it was (the configuration without the key)."""
    import hashlib
    import json

    from tavicore.config import to_dict
    from training.train import _VOLATILE_KEYS, config_fingerprint

    cfg = load_train_config(TINY)
    assert config_fingerprint(load_train_config(TINY, overrides={"loss": "dice_bce"})) != config_fingerprint(cfg)
    legacy = to_dict(cfg)
    legacy.pop("loss")
    for key in _VOLATILE_KEYS:
        legacy.pop(key, None)
    assert cfg.optim.schedule == "constant"
    legacy["optim"].pop("schedule", None)
    legacy["optim"].pop("final_lr_fraction", None)
    assert config_fingerprint(cfg) == hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()
