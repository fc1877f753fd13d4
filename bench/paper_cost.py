"""What a full run of the paper's configurations costs, in arithmetic (no GPU needed to count it).

For every paper configuration in conf/train/ (the CPU presets are skipped): parameters, forward
GFLOPs per image at the configured input size (2 FLOPs per multiply-add, counted on the meta
device), and the training arithmetic of the paper's protocol: 5 folds x ``epochs`` x the training
frames of a fold, at about 3x the forward FLOPs per image (forward + backward), plus the
validation forward passes. The paper's cohort is 2,854 frames of 80 patients; with 5-fold
cross-validation and 20% of each fold's training patients kept for validation, a fold trains on
about 64% of the frames and validates on 16%.

Usage::

    .venv/bin/python bench/paper_cost.py

Prints one line per configuration and a summary line with the ratio of the most to the least
expensive configuration. Wall-clock time on a GPU is not derived from these counts: measure it
with ``taviseg train --config NAME --data DATA --out OUT --fold 0 --set epochs=1`` (see
bench/RESULTS.md, "GPU").
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import yaml

from tavicore.config import CONF_DIR
from training.report.flops import measure

PAPER_FRAMES = 2854
FOLDS = 5
TRAIN_FRACTION = 0.8 * 0.8  # 4 of 5 folds' patients, less 20% of them for validation
VAL_FRACTION = 0.8 * 0.2
BACKWARD_FACTOR = 3.0  # forward + backward ~ 3 forward passes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for path in sorted((CONF_DIR / "train").glob("*.yaml")):
        if path.stem.startswith("cpu_"):
            continue
        doc = yaml.safe_load(path.read_text())
        model, epochs = doc["model"], int(doc["epochs"])
        cost = measure(model["architecture"], model["encoder"], int(model["input_size"]))
        per_image = cost.flops or 0
        train_flops = FOLDS * epochs * PAPER_FRAMES * (TRAIN_FRACTION * BACKWARD_FACTOR + VAL_FRACTION) * per_image
        rows.append((path.stem, cost.params_m, per_image / 1e9, epochs, train_flops / 1e15))
        print(f"{path.stem:34s} {cost.params_m:7.2f} M params  {per_image / 1e9:8.1f} GFLOPs/img  "
              f"{epochs:3d} epochs  {train_flops / 1e15:8.1f} PFLOPs for 5 folds", flush=True)
    if not rows:
        print("paper_cost: no paper configuration found in conf/train", file=sys.stderr)
        return 1
    cheapest = min(rows, key=lambda r: r[4])
    dearest = max(rows, key=lambda r: r[4])
    total = sum(r[4] for r in rows)
    print(f"paper_cost: {len(rows)} configurations, {total:.0f} PFLOPs in all; most expensive {dearest[0]} "
          f"{dearest[4]:.0f} PFLOPs = {dearest[4] / cheapest[4]:.1f}x the cheapest ({cheapest[0]}, "
          f"{cheapest[4]:.1f} PFLOPs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
