"""Trained models for the inference bench: a phantom cohort and a short CPU training per model.

The accuracy figures of ``bench/inference.py`` (int8 against fp32, Dice against the phantom's
ground truth) only mean something with trained weights. This module makes them once and caches
them under ``--workdir`` (default ``runs/bench-inference``):

* ``phantom/``: the ``demo`` phantom preset (12 patients x 2 runs x 6 frames, 512 px) split into
  4 patient-level folds (fold 0: 8 training, 1 validation, 3 test patients);
* ``train/<arch>-<encoder>/model``: fold 0 trained for a few epochs on a capped number of
  frames (:data:`BUDGETS`), the best epoch by validation Dice.

A second call reuses both (the training resumes or is skipped, see :func:`training.train.train`).

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

from tavidata.format import Dataset  # noqa: E402

logger = logging.getLogger("bench.inference_models")

DEFAULT_WORKDIR = REPO / "runs" / "bench-inference"
PHANTOM_PRESET = "demo"
K_FOLDS = 4
FOLD = 0
#: (epochs, max training frames, max validation frames, lr) per architecture: sized so each
#: training takes about 5-12 minutes on 2 busy CPU cores at 512 px.
BUDGETS: dict[str, tuple[int, int, int, float]] = {
    "manet": (3, 48, 12, 1e-3),
    "linknet": (6, 96, 12, 1e-3),
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


def ensure_trained(workdir: Path, arch: str, encoder: str, size: int = 512) -> Path:
    """Fold 0 of ``arch``/``encoder`` trained on the phantom with the small budget; the model folder."""
    from training.config import AugmentConfig, ModelConfig, OptimConfig, TrainConfig
    from training.train import train

    epochs, max_train, max_val, lr = BUDGETS.get(arch, BUDGETS["manet"])
    root = ensure_phantom(workdir)
    out = workdir / "train" / f"{arch}-{encoder}-{size}"
    if (out / "model" / "config.json").is_file() and (out / f"fold_{FOLD}" / "done.json").is_file():
        return out / "model"
    cfg = TrainConfig(
        model=ModelConfig(architecture=arch, encoder=encoder, input_size=size),
        optim=OptimConfig(name="adam", lr=lr),
        epochs=epochs, batch_size=4, amp=False, channels_last=False, seed=0, num_workers=0,
        device="cpu", deterministic=False, max_train_frames=max_train, max_val_frames=max_val,
        augment=AugmentConfig(enabled=True),
    )
    t0 = time.perf_counter()
    model = train(cfg, root, out, folds=[FOLD], progress=False)
    logger.info("trained %s/%s %d px in %.0f s -> %s", arch, encoder, size, time.perf_counter() - t0, model)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="manet")
    parser.add_argument("--encoder", default="efficientnet-b4")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    print(ensure_trained(args.workdir, args.arch, args.encoder, args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
