"""``taviseg evaluate``: patient-level evaluation of model folders, with model comparison."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tavicore.config import parse_override

logger = logging.getLogger(__name__)

HELP = "score model folders on each fold's test patients (Dice, ASSD, HD95; CIs; Wilcoxon-Holm)"
DESCRIPTION = (
    "For each model folder and each fold k it holds, fold k's weights segment fold k's TEST "
    "patients (splits.json of the data set). Writes per_frame.csv, per_patient.csv, "
    "summary.json (median over patients with 95% bootstrap CI, model-selection check) and, "
    "with several models, comparison.csv (paired Wilcoxon on per-patient Dice, Holm-corrected)."
)


def parse_model(text: str) -> tuple[str, Path]:
    """``NAME=FOLDER`` -> (name, folder); a bare FOLDER is named after its parent folder."""
    if "=" in text:
        name, folder = text.split("=", 1)
        return name.strip(), Path(folder)
    folder = Path(text)
    name = folder.parent.name if folder.name == "model" else folder.name
    return name, folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``taviseg evaluate``."""
    parser.add_argument("--model", dest="models", action="append", required=True,
                        metavar="NAME=FOLDER", help="model folder to score (repeatable)")
    parser.add_argument("--data", required=True, type=Path, help="data-set folder")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--splits", type=Path, default=None, help="splits file (default DATA/splits.json)")
    parser.add_argument("--config", type=Path, default=None, help="config (default conf/evaluate.yaml)")
    parser.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=None, help="bootstrap seed")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--backend", default=None, help="auto, eager, onnx, onnx-int8, openvino-bf16, bf16")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override an evaluate config key (repeatable)")


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the headline table."""
    from training.errors import EvaluationError
    from training.evaluate import evaluate, load_evaluate_config

    overrides = dict(parse_override(o) for o in args.overrides)
    for key, value in (("bootstrap_resamples", args.bootstrap), ("seed", args.seed),
                       ("inference.device", args.device), ("inference.backend", args.backend)):
        if value is not None:
            overrides[key] = value
    cfg = load_evaluate_config(args.config, overrides=overrides)
    models: dict[str, Path] = {}
    for text in args.models:
        name, folder = parse_model(text)
        if name in models:
            raise EvaluationError(f"model name {name!r} given twice")
        models[name] = folder
    result = evaluate(models, args.data, args.out, cfg, splits_path=args.splits,
                      progress=sys.stderr.isatty())
    pct = f"{cfg.confidence:.0%}"
    for name, m in result.summary["models"].items():
        d, a = m["dice"], m["assd_mm"]
        print(f"{name}: DSC {_num(d['estimate'])} ({pct} CI {_num(d['low'])}-{_num(d['high'])}), "
              f"ASSD {_num(a['estimate'], 3)} mm ({_num(a['low'], 3)}-{_num(a['high'], 3)}), "
              f"{m['n_patients']} patients, {m['n_frames']} frames")
        print(f"  {m['model_selection']['statement']}")
    for c in result.comparisons:
        flag = "significant" if c.significant else "n.s."
        print(f"{c.model_a} vs {c.model_b}: p = {c.p_value:.4g}, Holm p = {c.p_holm:.4g} ({flag})")
    print(f"results: {result.out_dir}")
    return 0


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
