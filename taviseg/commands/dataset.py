"""``taviseg dataset``: import, check, split and describe data sets.

Thin wrapper over :mod:`training.importers` (importers, :func:`~tavidata.check.check_dataset`,
:func:`~tavidata.splits.split_dataset`, :func:`~tavidata.info.describe_dataset`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = "import, check, split (patient-level folds) and describe data sets"
DESCRIPTION = """\
Data-set tools.
  import release|supervisely|dicom SRC --out DST   bring annotated frames into the project format
  check ROOT                                         list every problem (exit 1 when any)
  split ROOT [--k 5] [--seed 0] [--val-fraction 0.15] [--force]   write ROOT/splits.json once
  info ROOT                                          counts, stages, spacings, splits
Import options can also come from a YAML file (--config FILE, section named like the source
kind) and KEY=VALUE overrides (--set); flags win over both."""

_KINDS = {
    "release": "authors' release: SRC/images/<name> + SRC/masks/<name>, patient from the name",
    "supervisely": "Supervisely project: SRC/meta.json, SRC/<dataset>/img, SRC/<dataset>/ann",
    "dicom": "DICOM X-ray runs with DICOM SEG files under SRC (paired by the SEG's references)",
}


def _rgb(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected R,G,B integers") from exc
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three values R,G,B")
    return values


def _add_import_parser(sub: Any, kind: str) -> None:
    p = sub.add_parser(kind, help=_KINDS[kind], description=_KINDS[kind])
    p.add_argument("src", type=Path, help="source folder")
    p.add_argument("--out", type=Path, required=True, help="data-set folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data set at --out")
    p.add_argument("--config", type=Path, help=f"YAML file whose section '{kind}' holds the options")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="option override")
    p.add_argument("--name", help="data-set name (default: the source folder name)")
    p.add_argument("--skip-unmatched", action="store_true", default=None,
                   help="skip unmatched inputs with a warning instead of failing")
    p.add_argument("--spacing-mm", type=float, help="pixel spacing in mm")
    if kind in ("release", "supervisely"):
        p.add_argument("--pattern", help="regex on the file stem with groups patient, run?, frame?")
    if kind == "release":
        p.add_argument("--images-dir", help="frames folder under SRC (default images)")
        p.add_argument("--masks-dir", help="masks folder under SRC (default masks)")
        p.add_argument("--mask-color", type=_rgb, metavar="R,G,B", help="class colour in colour masks")
    if kind == "supervisely":
        p.add_argument("--class-name", action="append", dest="class_names", help="aortic class title (repeatable)")
        p.add_argument("--patient-from", choices=("name", "dataset"), help="patient id source")
    if kind == "dicom":
        p.add_argument("--segment-label", action="append", dest="segment_labels",
                       help="aortic segment label (repeatable)")
        p.add_argument("--frames", choices=("segmented", "all"), help="which source frames to import")
        p.add_argument("--patient-ids", choices=("pseudonym", "dicom"), help="patient ids in the data set")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``import``/``check``/``split``/``info`` actions."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    imp = sub.add_parser("import", help="import a data set from another layout")
    kinds = imp.add_subparsers(dest="source_kind", metavar="KIND", required=True)
    for kind in _KINDS:
        _add_import_parser(kinds, kind)
    check = sub.add_parser("check", help="check a data set; exit 1 when problems exist")
    check.add_argument("root", type=Path)
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    split = sub.add_parser("split", help="write patient-level folds to ROOT/splits.json")
    split.add_argument("root", type=Path)
    split.add_argument("--k", type=int, default=5, help="number of folds (default 5)")
    split.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    split.add_argument("--val-fraction", type=float, default=0.15,
                       help="share of non-test patients for validation (default 0.15, at least 1)")
    split.add_argument("--force", action="store_true", help="replace an existing splits.json")
    split.add_argument("--json", action="store_true", help="print the folds summary as JSON")
    info = sub.add_parser("info", help="describe a data set")
    info.add_argument("root", type=Path)
    info.add_argument("--json", action="store_true", help="print as JSON")


_FLAG_KEYS = ("name", "skip_unmatched", "spacing_mm", "pattern", "images_dir", "masks_dir",
              "mask_color", "class_names", "patient_from", "segment_labels", "frames", "patient_ids")


def _import(args: argparse.Namespace) -> int:
    from tavicore.config import apply_overrides, from_dict, load_config, parse_override
    from training import importers

    config_cls, run = {
        "release": (importers.ReleaseImportConfig, importers.import_release),
        "supervisely": (importers.SuperviselyImportConfig, importers.import_supervisely),
        "dicom": (importers.DicomImportConfig, importers.import_dicom),
    }[args.source_kind]
    overrides = dict(parse_override(text) for text in args.set)
    for key in _FLAG_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = value
    if args.config is not None:
        config = load_config(args.config, config_cls, section=args.source_kind, overrides=overrides)
    else:
        config = from_dict(config_cls, apply_overrides({}, overrides), source="command line")
    result = run(args.src, args.out, config, overwrite=args.overwrite, progress=sys.stderr.isatty())
    print(f"imported {result.frames} frames, {result.patients} patients, {result.runs} runs -> {result.root}")
    for path in result.skipped:
        print(f"  skipped: {path}")
    for note in result.notes:
        print(f"  note: {note}")
    print(f"next: taviseg dataset check {result.root}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from tavidata.check import check_dataset

    report = check_dataset(args.root, progress=sys.stderr.isatty())
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0 if report.ok else 1


def _split(args: argparse.Namespace) -> int:
    from tavidata.format import Dataset
    from tavidata.splits import fold_summary, split_dataset

    splits, path = split_dataset(args.root, k=args.k, seed=args.seed, val_fraction=args.val_fraction,
                                 force=args.force)
    rows = fold_summary(splits, Dataset.load(args.root))
    if args.json:
        print(json.dumps({"path": str(path), "k": splits.k, "seed": splits.seed, "folds": rows}, indent=2))
        return 0
    print(f"wrote {path}: {splits.k} folds, {len(splits.patients)} patients, seed {splits.seed}")
    print("fold  train(pat/frames)  val(pat/frames)  test(pat/frames)  test %")
    for r in rows:
        print(f"{r['fold']:>4}  {r['train_patients']:>5}/{r['train_frames']:<11} "
              f"{r['val_patients']:>4}/{r['val_frames']:<10} {r['test_patients']:>5}/{r['test_frames']:<10} "
              f"{r['test_frames_pct']:6.1f}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from tavidata.info import describe_dataset

    info = describe_dataset(args.root)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"data set: {info['root']} ({info['name'] or 'unnamed'})")
    print(f"frames: {info['frames']}   patients: {info['patients']}   runs: {info['runs']}")
    size = info["first_image_size"]
    print(f"image size (first frame): {size[0]}x{size[1]}" if size else "image size: unknown")
    print("stages: " + ", ".join(f"{k} {v}" for k, v in sorted(info["stages"].items())))
    print("pixel spacing (mm): " + ", ".join(f"{k} ({v} frames)" for k, v in info["spacings_mm"].items()))
    splits = info["splits"]
    if splits is None:
        print("splits: none (taviseg dataset split ROOT)")
    elif "error" in splits:
        print(f"splits: INVALID: {splits['error']}")
    else:
        print(f"splits: k={splits['k']} seed={splits['seed']} val_fraction={splits['val_fraction']}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen action; returns the exit code."""
    return {"import": _import, "check": _check, "split": _split, "info": _info}[args.dataset_command](args)
