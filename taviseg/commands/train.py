"""``taviseg train``: patient-level k-fold training of one configuration -> a model folder."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tavicore.config import parse_override

logger = logging.getLogger(__name__)

HELP = "train one configuration with patient-level k-fold cross-validation (resumable)"
DESCRIPTION = (
    "Trains the configuration of --config on the folds of DATA/splits.json (make them with "
    "`taviseg dataset split`): per fold, the best epoch by validation Dice is kept. Writes "
    "OUT/fold_<k>/{history.csv, tb/, best.safetensors, checkpoint_last.pt, done.json} and "
    "OUT/model, a model folder that `taviseg predict` and `taviseg serve` load. Re-running "
    "the same command after an interruption resumes after the last finished epoch; finished "
    "folds are skipped."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``taviseg train``."""
    parser.add_argument("--config", required=True, type=Path,
                        help="training configuration: a YAML file, or the name of one in conf/train/ "
                             "(e.g. cpu_demo, manet_effb4_896)")
    parser.add_argument("--data", required=True, type=Path, help="data-set folder (with splits.json)")
    parser.add_argument("--out", required=True, type=Path, help="run folder (created; resumed if present)")
    parser.add_argument("--fold", dest="folds", type=int, action="append", default=None, metavar="K",
                        help="train fold K only (repeatable; default: every fold)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set epochs=2 --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Train and print where the model folder is."""
    from training.config import load_train_config
    from training.train import train

    overrides = dict(parse_override(text) for text in args.overrides)
    cfg = load_train_config(args.config, overrides=overrides)
    progress = not args.no_progress and sys.stderr.isatty()
    model_dir = train(cfg, args.data, args.out, folds=args.folds, progress=progress)
    print(model_dir)
    return 0
