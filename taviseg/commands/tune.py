"""``taviseg tune``: Optuna hyper-parameter study (TPE + Hyperband) over the paper's search space."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tavicore.config import parse_override

logger = logging.getLogger(__name__)

HELP = "tune hyper-parameters with Optuna (TPE + Hyperband); resumable, many workers"
DESCRIPTION = (
    "Run (or resume) an Optuna study over the search space of conf/tune.yaml (the paper's "
    "Table 1). Each trial trains one fold and reports validation Dice per epoch; Hyperband "
    "prunes; crashed trials (out of memory, NaN loss, model errors) are recorded as FAIL and "
    "the study goes on. Run the same command on several machines with one --storage "
    "(PostgreSQL URL) to share the study. Writes trials.csv, best_params.json and "
    "best_config.yaml (a conf/train-style file) into --out."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``taviseg tune``."""
    parser.add_argument("--data", required=True, type=Path, help="data-set folder (with splits.json)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--config", type=Path, default=None, help="tuning config (default conf/tune.yaml)")
    parser.add_argument("--train-config", type=Path, default=None,
                        help="base training config held constant (default: tune.yaml's)")
    parser.add_argument("--architecture", default=None,
                        help="tune one architecture only (study <name>-<architecture>)")
    parser.add_argument("--n-trials", type=int, default=None, help="finished trials to reach")
    parser.add_argument("--timeout", type=float, default=None, help="stop this worker after SECONDS")
    parser.add_argument("--storage", default=None,
                        help="SQLAlchemy URL (default sqlite:///OUT/study.db); postgresql+psycopg2://...")
    parser.add_argument("--study-name", default=None, help="study name (default from the config)")
    parser.add_argument("--fold", type=int, default=None, help="fold trained by each trial")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a tuning config key (repeatable), e.g. pruner.kind=none")
    parser.add_argument("--train-set", dest="train_overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a base training config key, e.g. epochs=2")


def run(args: argparse.Namespace) -> int:
    """Run or resume the study and print where the results are."""
    import optuna

    from training.tune import DEFAULT_TUNE_CONFIG, load_tune_config, run_tune

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(logging.getLogger().getEffectiveLevel())
    overrides = dict(parse_override(o) for o in args.overrides)
    for key, value in (
        ("study.n_trials", args.n_trials), ("study.timeout_s", args.timeout),
        ("study.storage", args.storage), ("study.name", args.study_name), ("study.fold", args.fold),
        ("base_train_config", str(args.train_config.resolve()) if args.train_config else None),
    ):
        if value is not None:
            overrides[key] = value
    for text in args.train_overrides:
        key, value = parse_override(text)
        overrides[f"train_overrides.{key}"] = value
    cfg = load_tune_config(args.config or DEFAULT_TUNE_CONFIG, overrides=overrides)
    result = run_tune(cfg, args.data, args.out, architecture=args.architecture)
    counts = ", ".join(f"{k.lower()} {v}" for k, v in result.counts.items() if v)
    print(f"study {result.study_name}: {counts or 'no trials'}")
    if result.best_trial is not None:
        print(f"best trial {result.best_trial}: val Dice {result.best_value:.4f} {result.best_params}")
        print(f"best configuration: {result.best_config_yaml}")
    print(f"trials: {result.trials_csv}")
    return 0
