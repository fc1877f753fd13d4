"""Trained models for the inference bench: a phantom cohort and a short CPU training per model.

The accuracy figures of ``bench/inference.py`` (int8 against fp32, Dice against the phantom's
ground truth) only mean something with trained weights. This module makes them once and caches
them under ``--workdir`` (default ``runs/bench-inference``):

* ``phantom/``: the ``demo`` phantom preset (12 patients x 2 runs x 6 frames, 512 px) split into
  4 patient-level folds (fold 0: 8 training, 1 validation, 3 test patients);
* ``train/<arch>-<encoder>-<size>/model``: fold 0 trained for a few epochs on a capped number
  of frames (:data:`BUDGETS`) within a wall-time budget (``--budget-s``), the best epoch by
  validation Dice.

A second call reuses both (an unfinished training resumes from its last epoch).

    nice -n 10 .venv/bin/python bench/inference_models.py --arch manet --encoder efficientnet-b4
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tavidata.format import Dataset

logger = logging.getLogger("bench.inference_models")

DEFAULT_WORKDIR = REPO / "runs" / "bench-inference"
PHANTOM_PRESET = "demo"
K_FOLDS = 4
FOLD = 0
#: (epochs, max training frames, max validation frames, batch size, lr) per architecture; the wall-time
#: budget of :func:`ensure_trained` may stop it earlier. One torch thread: on a shared 2-core
#: machine two threads mostly wait for each other.
BUDGETS: dict[str, tuple[int, int, int, int, float]] = {
    "manet": (3, 32, 8, 2, 1e-3),
    "linknet": (4, 64, 8, 4, 1e-3),
}


def ensure_phantom(workdir: Path) -> Path:
    """The phantom cohort with its splits (generated on first use); returns its folder."""
    from tavidata.phantom import generate_cohort, load_phantom_preset
    from tavidata.splits import split_dataset

    root = workdir / "phantom"
    if not (root / "dataset.json").is_file():
        t0 = time.perf_counter()
        generate_cohort(root, load_phantom_preset(PHANTOM_PRESET), contact_sheet=False)
        logger.info("generated the %s phantom in %s (%.0f s)", PHANTOM_PRESET, root, time.perf_counter() - t0)
    if not (root / "splits.json").is_file():
        split_dataset(root, k=K_FOLDS, seed=0)
    return root


def test_records(root: Path):
    """The held-out test patients' frames of fold :data:`FOLD` (never seen in training)."""
    from tavidata.splits import load_splits

    dataset = Dataset.load(root)
    splits = load_splits(root / "splits.json")
    fold = next(f for f in splits.folds if f.index == FOLD)
    return dataset, dataset.frames_of(fold.test)


def calibration_records(root: Path):
    """The training patients' frames of fold :data:`FOLD` (what the model was trained on)."""
    from tavidata.splits import load_splits

    dataset = Dataset.load(root)
    splits = load_splits(root / "splits.json")
    fold = next(f for f in splits.folds if f.index == FOLD)
    return dataset, dataset.frames_of(fold.train)


class _TimeBudgetSpent(Exception):
    """Raised by the epoch callback once the training's wall-time budget is spent."""


def _model_folder_from_best(cfg, root: Path, out: Path, stopped: str) -> Path:
    """``out/model`` from fold :data:`FOLD`'s best epoch so far (finished or stopped early)."""
    from segmentation.models.folder import ModelSpec, save_model_folder
    from training.checkpoint import load_weights
    from training.train import read_history

    fold_dir = out / f"fold_{FOLD}"
    history = read_history(fold_dir / "history.csv")
    best = max(history, key=lambda h: h.val_dice)
    dataset = Dataset.load(root)
    spec = ModelSpec(
        architecture=cfg.model.architecture, encoder=cfg.model.encoder, input_size=cfg.model.input_size,
        threshold=cfg.threshold,
        provenance={
            "source": "bench/inference_models.py: short phantom training for the inference bench",
            "dataset": {"name": dataset.meta.get("name", ""), "path": str(root.resolve()),
                        "frames": len(dataset.records)},
            "fold": FOLD, "epochs_run": len(history), "epochs_planned": cfg.epochs, "stopped": stopped,
            "best_epoch": best.epoch, "best_val_dice": best.val_dice,
            "max_train_frames": cfg.max_train_frames, "batch_size": cfg.batch_size, "lr": cfg.optim.lr,
        },
    )
    return save_model_folder(out / "model", spec, {FOLD: load_weights(fold_dir / "best.safetensors")},
                             overwrite=True)


def ensure_trained(workdir: Path, arch: str, encoder: str, size: int = 512, *, budget_s: float = 720.0) -> Path:
    """Fold 0 of ``arch``/``encoder`` trained on the phantom with the small budget; the model folder.

    Training stops after the epoch during which ``budget_s`` seconds of wall time were spent
    (a later call resumes from the last epoch's checkpoint); the folder then holds the best
    epoch by validation Dice so far, and its provenance says how many epochs ran. With
    ``budget_s <= 0`` and at least one epoch already run, nothing is trained.
    """
    from training.config import AugmentConfig, ModelConfig, OptimConfig, TrainConfig
    from training.train import load_dataset_splits, train_fold

    epochs, max_train, max_val, batch, lr = BUDGETS.get(arch, BUDGETS["manet"])
    root = ensure_phantom(workdir)
    out = workdir / "train" / f"{arch}-{encoder}-{size}"
    if (out / "model" / "config.json").is_file():
        return out / "model"
    cfg = TrainConfig(
        model=ModelConfig(architecture=arch, encoder=encoder, input_size=size),
        optim=OptimConfig(name="adam", lr=lr),
        epochs=epochs, batch_size=batch, amp=False, channels_last=False, seed=0, num_workers=0,
        device="cpu", deterministic=False, max_train_frames=max_train, max_val_frames=max_val,
        augment=AugmentConfig(enabled=True), cpu_threads=1,
    )
    dataset = Dataset.load(root)
    splits, _ = load_dataset_splits(dataset)
    t0 = time.perf_counter()

    def stop_when_spent(result) -> None:
        if time.perf_counter() - t0 > budget_s:
            raise _TimeBudgetSpent(f"stopped after epoch {result.epoch}: {budget_s:.0f} s budget spent")

    stopped = "no: all planned epochs ran"
    if budget_s <= 0 and (out / f"fold_{FOLD}" / "history.csv").is_file():
        stopped = "stopped: no training budget given, the epochs already run are used"
    else:
        try:
            train_fold(cfg, dataset, splits, FOLD, out, epoch_callback=stop_when_spent, progress=False)
        except _TimeBudgetSpent as exc:
            stopped = str(exc)
    model = _model_folder_from_best(cfg, root, out, stopped)
    logger.info("trained %s/%s %d px in %.0f s (%s) -> %s", arch, encoder, size, time.perf_counter() - t0,
                stopped, model)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="manet")
    parser.add_argument("--encoder", default="efficientnet-b4")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--budget-s", type=float, default=720.0,
                        help="stop after the epoch that ends past this many seconds (default 720)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    print(ensure_trained(args.workdir, args.arch, args.encoder, args.size, budget_s=args.budget_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
