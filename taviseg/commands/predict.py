"""``taviseg predict``: segment image files, data-set folders or DICOM runs with a model folder.

Thin wrapper over :func:`segmentation.predict.predict_paths`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

from segmentation.inference.config import Backend

HELP = "segment images, data sets or DICOM runs: mask/overlay PNGs, predictions.csv, DICOM SEG"
DESCRIPTION = """\
Segment the aortic root on every frame of the inputs with a trained model folder.
Writes OUT/masks/*.png, OUT/overlays/*.png, OUT/predictions.csv (area in mm^2, confidence,
and Dice/IoU/ASSD/HD95 when ground truth exists), OUT/summary.json and, for DICOM runs,
OUT/seg/<SOPInstanceUID>.seg.dcm. Settings come from conf/inference.yaml (--config) with
KEY=VALUE overrides (--set backend=eager); flags win over both."""


def _spacing(text: str) -> tuple[float, float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ROW[,COL] in mm") from exc
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one or two positive numbers")
    return values[0], values[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the predict options."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("inputs", nargs="+", type=Path, help="image files/folders, data-set folders, DICOM files")
    parser.add_argument("--model", type=Path, required=True, help="trained model folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--config", type=Path, help="inference YAML (default conf/inference.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--backend", choices=get_args(Backend), help="execution backend")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, help="frames per forward pass")
    parser.add_argument("--tta", action="store_true", default=None, help="horizontal-flip test-time augmentation")
    parser.add_argument("--folds", type=lambda s: [int(v) for v in s.split(",")], metavar="K,K,...",
                        help="folds to ensemble (default: all)")
    parser.add_argument("--spacing-mm", type=_spacing, metavar="ROW[,COL]",
                        help="pixel spacing of image files (and DICOM default when the header has none)")
    parser.add_argument("--gt-dir", type=Path, help="ground-truth masks named like the image files")
    parser.add_argument("--no-seg", action="store_true", help="do not write DICOM SEG for DICOM inputs")
    parser.add_argument("--seg-series-number", type=int, default=9001, help="Series Number of the SEG objects")


def run(args: argparse.Namespace) -> int:
    """Run the prediction; returns the exit code."""
    import sys

    from segmentation.inference.config import load_inference_config
    from segmentation.predict import predict_paths
    from tavicore.config import parse_override

    overrides = dict(parse_override(o) for o in args.set)
    flags = {"backend": args.backend, "device": args.device, "batch_size": args.batch_size,
             "tta": args.tta, "folds": args.folds}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    config = load_inference_config(args.config, overrides=overrides)
    summary = predict_paths(
        args.inputs, args.model, args.out, config, spacing_mm=args.spacing_mm, gt_dir=args.gt_dir,
        write_seg=not args.no_seg, seg_series_number=args.seg_series_number, progress=sys.stderr.isatty(),
    )
    line = f"{summary.frames} frames from {summary.sources} sources -> {summary.out_dir} ({summary.backend})"
    if summary.mean_dice is not None:
        line += f"; Dice mean {summary.mean_dice:.4f} median {summary.median_dice:.4f}"
    if summary.median_assd_mm is not None:
        line += f"; ASSD median {summary.median_assd_mm:.2f} mm"
    if summary.low_confidence:
        line += f"; {summary.low_confidence} low-confidence frames"
    if summary.skipped:
        line += f"; {len(summary.skipped)} inputs skipped"
    print(line)
    return 0
