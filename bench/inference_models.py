"""Trained models for the inference bench: a phantom cohort and a short CPU training per model.

The accuracy figures of ``bench/inference.py`` (int8 against fp32, Dice against the phantom's
ground truth) only mean something with trained weights. This module makes them once and caches
them under ``--workdir`` (default ``runs/bench-inference``):

* ``phantom/``: the ``demo`` phantom preset (12 patients x 2 runs x 6 frames, 512 px) split into
  4 patient-level folds (fold 0: 8 training, 1 validation, 3 test patients);
* ``train/<arch>-<encoder>-<size>/model``: fold 0 trained for a few epochs on a capped number
  of frames (:data:`BUDGETS`) within a wall-time budget (``--budget-s``), the last epoch with
  BatchNorm statistics re-estimated on training frames.

A second call reuses both (an unfinished training resumes from its last epoch).

    nice -n 10 .venv/bin/python bench/inference_models.py --arch manet --encoder efficientnet-b4
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tavidata.format import Dataset  # noqa: E402 - after the sys.path line above (bench/ is not installed)

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


def recalibrate_batchnorm(model, batches) -> int:
    """Re-estimate every BatchNorm layer's running mean/variance from ``batches`` (train-mode
    forward passes without gradients, cumulative average). Returns the number of layers.

    After a few dozen steps the running statistics still mostly hold their initial values,
    the more so with EfficientNet's momentum of 0.01 (1 - 0.99), so the model in eval mode
    segments nothing although it learnt in train mode; re-estimating them fixes that.
    """
    import torch

    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches below
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(torch.from_numpy(batch))
    for m, momentum in zip(layers, saved):
        m.momentum = momentum
    model.eval()
    return len(layers)


def _model_folder_from_last(cfg, root: Path, out: Path, stopped: str, bn_frames: int = 16) -> Path:
    """``out/model`` from fold :data:`FOLD`'s last epoch, BatchNorm statistics re-estimated on
    ``bn_frames`` training frames; the validation Dice of the result goes into the provenance."""
    import numpy as np

    from segmentation.inference.engine import InferenceEngine
    from segmentation.inference.quantize import model_batches
    from segmentation.metrics import dice
    from segmentation.models.folder import ModelSpec, save_model_folder
    from segmentation.models.zoo import build_model
    from tavidata.splits import load_splits
    from training.checkpoint import load_checkpoint
    from training.train import read_history

    fold_dir = out / f"fold_{FOLD}"
    history = read_history(fold_dir / "history.csv")
    state = load_checkpoint(fold_dir / "checkpoint_last.pt")["model"]
    dataset = Dataset.load(root)
    split = load_splits(root / "splits.json").fold(FOLD)
    spec = ModelSpec(architecture=cfg.model.architecture, encoder=cfg.model.encoder,
                     input_size=cfg.model.input_size, threshold=cfg.threshold)
    model = build_model(spec.architecture, spec.encoder)
    model.load_state_dict(state)
    train = dataset.frames_of(split.train)
    step = max(1, len(train) // bn_frames)
    images = [dataset.read_image(r) for r in train[::step][:bn_frames]]
    layers = recalibrate_batchnorm(model, model_batches(_Spec(spec), images, 2))
    provenance = {
        "source": "bench/inference_models.py: short phantom training for the inference bench",
        "dataset": {"name": dataset.meta.get("name", ""), "path": str(root.resolve()), "frames": len(dataset.records)},
        "fold": FOLD, "epochs_run": len(history), "epochs_planned": cfg.epochs, "stopped": stopped,
        "weights": f"last epoch ({len(history)}); BatchNorm statistics of {layers} layers re-estimated on "
                   f"{len(images)} training frames",
        "history_val_dice": [h.val_dice for h in history],
        "max_train_frames": cfg.max_train_frames, "batch_size": cfg.batch_size, "lr": cfg.optim.lr,
    }
    folder = save_model_folder(out / "model", dataclasses.replace(spec, provenance=provenance),
                               {FOLD: model.state_dict()}, overwrite=True)
    val = dataset.frames_of(split.val)
    engine = InferenceEngine.from_folder(folder, device="cpu", backend="eager", batch_size=2)
    pred = engine.predict([dataset.read_image(r) for r in val]).masks
    val_dice = float(np.mean([dice(m, dataset.read_mask(r)) for m, r in zip(pred, val)]))
    provenance["val_dice_after_recalibration"] = val_dice
    folder = save_model_folder(out / "model", dataclasses.replace(spec, provenance=provenance),
                               {FOLD: model.state_dict()}, overwrite=True)
    logger.info("%s/%s: validation Dice %.4f after BatchNorm re-estimation (per epoch before: %s)",
                spec.architecture, spec.encoder, val_dice, [round(h.val_dice, 4) for h in history])
    return folder


class _Spec:
    """What :func:`segmentation.inference.quantize.model_batches` reads of a model folder."""

    def __init__(self, spec) -> None:
        self.spec = spec


def ensure_trained(workdir: Path, arch: str, encoder: str, size: int = 512, *, budget_s: float = 720.0) -> Path:
    """Fold 0 of ``arch``/``encoder`` trained on the phantom with the small budget; the model folder.

    Training stops after the epoch during which ``budget_s`` seconds of wall time were spent
    (a later call resumes from the last epoch's checkpoint); the folder then holds the last
    epoch's weights with re-estimated BatchNorm statistics (:func:`recalibrate_batchnorm`),
    and its provenance says how many epochs ran and the validation Dice. With
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
    model = _model_folder_from_last(cfg, root, out, stopped)
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
