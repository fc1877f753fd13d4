"""``taviseg report``: Markdown + CSV tables mirroring the paper's Tables 1-3, and figures."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

HELP = "write report.md, CSV tables (paper Tables 1-3, comparison) and PNG figures"
DESCRIPTION = (
    "Build the benchmark report from an evaluation folder (taviseg evaluate), optional tuning "
    "folders (taviseg tune) and training folders (taviseg train; default: the parent of each "
    "evaluated model folder). Table 2 measures parameters and FLOPs of each model "
    "(--skip-flops to skip the FLOP count)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``taviseg report``."""
    parser.add_argument("--evaluation", required=True, type=Path, help="taviseg evaluate output folder")
    parser.add_argument("--out", required=True, type=Path, help="report folder")
    parser.add_argument("--tuning", action="append", type=Path, default=[], metavar="DIR",
                        help="taviseg tune output folder (repeatable)")
    parser.add_argument("--training", action="append", default=[], metavar="NAME=DIR",
                        help="taviseg train output folder of model NAME (repeatable)")
    parser.add_argument("--data", type=Path, default=None, help="data set of the overlay frames")
    parser.add_argument("--skip-flops", action="store_true", help="do not count FLOPs")


def run(args: argparse.Namespace) -> int:
    """Build the report and print its path."""
    from training.errors import ReportError
    from training.report.build import build_report

    training = {}
    for text in args.training:
        if "=" not in text:
            raise ReportError(f"--training {text!r}: expected NAME=DIR")
        name, folder = text.split("=", 1)
        training[name.strip()] = Path(folder)
    result = build_report(args.evaluation, args.out, data_root=args.data, tuning=args.tuning,
                          training=training, skip_flops=args.skip_flops)
    print(f"report: {result.report_md} ({len(result.tables)} tables, {len(result.figures)} figures)")
    return 0
