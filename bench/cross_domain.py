"""Cross-domain bench: a model trained on one phantom generator, scored on the other's patients.

Issue 16 asks that a model trained on the v2 (CT) phantom hold up on v1 frames, not only the
reverse. Within one run (each step reused from ``--workdir`` when already there):

1. two cohorts of the same make-up at the same size: preset ``--preset`` (default ``ct_train``,
   the CPU recipe's cohort) with the CT generator (v2), and the same preset with the parametric
   generator (v1); each split like the README's ``taviseg dataset split DATA --k 5``;
2. the CPU recipe (``--config``, default ``cpu_phantom``) trained on fold 0 of each;
3. each model scored on fold 0's held-out test patients of both cohorts (eager fp32, the
   engine's defaults; Dice per frame, median over frames).

Prints ONE summary line on stdout; the ratio compares each model on the other domain with the
model trained there (the in-domain baseline of the same run)::

    cross-domain: v2 model on v1 0.81 (v1 model on v1 0.90, ratio 0.90); v1 model on v2 0.40 ...

    nice -n 10 .venv/bin/python bench/cross_domain.py [--workdir runs/bench-cross]
        [--v2-data data/ct_train --v2-run runs/ct]   # reuse the README recipe's cohort and run
        [--epochs 8 --max-train-frames 480 --patients 100 --json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

GENERATORS = ("v1", "ct")
LABEL = {"v1": "v1", "ct": "v2"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("runs/bench-cross"))
    p.add_argument("--preset", default="ct_train", help="phantom preset of both cohorts (generator switched)")
    p.add_argument("--patients", type=int, default=None, help="patients per cohort (default: the preset's)")
    p.add_argument("--config", default="cpu_phantom", help="training configuration (conf/train)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the configuration's)")
    p.add_argument("--max-train-frames", type=int, default=None, help="cap (default: the configuration's)")
    p.add_argument("--v2-data", type=Path, default=None, help="reuse this v2 cohort (with splits.json)")
    p.add_argument("--v2-run", type=Path, default=None, help="reuse this run folder trained on --v2-data")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    return p.parse_args(argv)


def cohort(args: argparse.Namespace, generator: str) -> Path:
    """The cohort of ``generator`` (made and split once; reused afterwards)."""
    from tavidata.phantom import generate_cohort, load_phantom_preset
    from tavidata.splits import SPLITS_FILENAME, split_dataset

    if generator == "ct" and args.v2_data is not None:
        return args.v2_data
    root = args.workdir / f"cohort_{LABEL[generator]}"
    if not (root / SPLITS_FILENAME).exists():
        cfg = load_phantom_preset(args.preset)
        cfg = dataclasses.replace(cfg, generator=generator, name=f"{cfg.name}-{LABEL[generator]}",
                                  patients=args.patients or cfg.patients)
        generate_cohort(root, cfg, progress=False, overwrite=True)
        split_dataset(root, k=5, seed=0, force=True)
    return root


def trained(args: argparse.Namespace, generator: str, data: Path) -> tuple[Path, float]:
    """The fold-0 model folder trained on ``data`` and the training time (0 when reused)."""
    from training.config import load_train_config
    from training.train import train

    if generator == "ct" and args.v2_run is not None:
        return args.v2_run / "model", 0.0
    overrides = {k: v for k, v in (("epochs", args.epochs), ("max_train_frames", args.max_train_frames))
                 if v is not None}
    cfg = load_train_config(args.config, overrides=overrides)
    began = time.perf_counter()
    folder = train(cfg, data, args.workdir / f"run_{LABEL[generator]}", folds=[0], progress=False)
    return folder, time.perf_counter() - began


def score(folder: Path, data: Path) -> list[float]:
    """Per-frame Dice of fold 0's weights on fold 0's test patients of ``data``."""
    from segmentation import metrics
    from segmentation.inference.engine import InferenceEngine
    from tavidata.format import Dataset
    from tavidata.splits import load_splits

    dataset = Dataset.load(data)
    engine = InferenceEngine.from_folder(folder, device="cpu", backend="eager")
    dice: list[float] = []
    for pid in load_splits(data).fold(0).test:
        records = dataset.frames_of([pid])
        pred = engine.predict([dataset.read_image(r) for r in records])
        dice += [metrics.dice(np.asarray(m, bool), dataset.read_mask(r)) for m, r in zip(pred.masks, records)]
    return dice


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        stream=sys.stderr)
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = {g: cohort(args, g) for g in GENERATORS}
    models, seconds = {}, {}
    for g in GENERATORS:
        models[g], seconds[g] = trained(args, g, data[g])
    table = {(m, d): score(models[m], data[d]) for m in GENERATORS for d in GENERATORS}
    med = {k: float(np.median(v)) for k, v in table.items()}
    for (m, d), values in table.items():
        print(f"{LABEL[m]} model on {LABEL[d]} test frames: median Dice {med[m, d]:.3f} "
              f"(p10 {np.percentile(values, 10):.3f}, min {min(values):.3f}, n={len(values)})", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({
            "preset": args.preset, "config": args.config, "train_seconds": {LABEL[g]: s for g, s in seconds.items()},
            "median_dice": {f"{LABEL[m]}_on_{LABEL[d]}": v for (m, d), v in med.items()},
            "frames": {f"{LABEL[m]}_on_{LABEL[d]}": len(v) for (m, d), v in table.items()},
        }, indent=1))
    print(f"cross-domain: v2 model on v1 {med['ct', 'v1']:.3f} (v1 model on v1 {med['v1', 'v1']:.3f}, ratio "
          f"{med['ct', 'v1'] / max(med['v1', 'v1'], 1e-9):.2f}); v1 model on v2 {med['v1', 'ct']:.3f} (v2 model on "
          f"v2 {med['ct', 'ct']:.3f}, ratio {med['v1', 'ct'] / max(med['ct', 'ct'], 1e-9):.2f}); median Dice, fold 0 "
          f"test patients, {args.config} on {args.preset}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
