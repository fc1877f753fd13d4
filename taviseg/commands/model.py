"""``taviseg model``: import the authors' checkpoints, describe a model folder, create one,
quantise one to int8.

Thin wrapper over :mod:`segmentation.models.checkpoint_import`,
:mod:`segmentation.models.folder` and :mod:`segmentation.inference.quantize`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "import released checkpoints into a model folder, show a model folder, create a random one, quantise one"
DESCRIPTION = """\
Model folders (config.json + fold_<k>.safetensors).
  import CKPT... --out DIR [--input-size 512]   convert torch.save'd smp models (one per fold)
  info DIR [--json]                             architecture, encoder, sizes, folds, provenance
  init --arch A --encoder E --size N --out DIR  randomly initialised model folder (demos, benchmarks)
  quantize DIR --calibration DATA               int8 variant for CPU inference, written only when
                                                it passes the accuracy check against fp32
Import reads pickles with a restricted loader that runs no code from the file; --trust-pickle
uses torch.load(weights_only=False) instead, which executes code: only for files you trust."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``import``/``info``/``init``/``quantize`` actions."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    imp = sub.add_parser("import", help="convert whole-model checkpoints (torch.save(model)) into a model folder")
    imp.add_argument("checkpoints", nargs="+", type=Path, metavar="CKPT", help="one checkpoint per fold, in fold order")
    imp.add_argument("--out", type=Path, required=True, help="model folder to write")
    imp.add_argument("--input-size", type=int, default=512, help="input size the models were trained at (default 512)")
    imp.add_argument("--arch", help="architecture (default: from the checkpoint's class)")
    imp.add_argument("--encoder", help="encoder (default: from the checkpoint's smp name)")
    imp.add_argument("--normalization", choices=("imagenet", "unit"), default="imagenet",
                     help="input normalisation the models were trained with (authors: imagenet)")
    imp.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    imp.add_argument("--folds", type=lambda s: [int(v) for v in s.split(",")], metavar="K,K,...",
                     help="fold number of each checkpoint (default 0,1,...)")
    imp.add_argument("--trust-pickle", action="store_true",
                     help="load with torch.load(weights_only=False): RUNS CODE from the files")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    info = sub.add_parser("info", help="describe a model folder")
    info.add_argument("folder", type=Path)
    info.add_argument("--json", action="store_true", help="print config.json plus weight hashes as JSON")
    init = sub.add_parser("init", help="write a randomly initialised model folder")
    init.add_argument("--arch", required=True)
    init.add_argument("--encoder", required=True)
    init.add_argument("--size", type=int, required=True, help="input size")
    init.add_argument("--folds", type=int, default=1, help="number of folds (default 1)")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--out", type=Path, required=True)
    init.add_argument("--overwrite", action="store_true")
    q = sub.add_parser(
        "quantize", help="write the int8 variant (ONNX Runtime, static QDQ) after an accuracy check",
        description="Calibrate on frames of DATA (ideally the data set the model was trained on), "
        "quantise each fold to int8 and check it on held-out frames against eager fp32 (mask Dice) "
        "and the ground truth; the variant is written into the model folder only when every fold "
        "passes. On a CPU the engine then runs it by default (backend auto; backend onnx keeps fp32).",
    )
    q.add_argument("folder", type=Path, metavar="MODEL", help="model folder")
    q.add_argument("--calibration", type=Path, required=True, metavar="DATA",
                   help="data-set folder (taviseg format) of real-looking frames")
    q.add_argument("--frames", type=int, default=32, help="calibration frames per fold (default 32)")
    q.add_argument("--check-frames", type=int, default=24, help="held-out frames checked per fold (default 24)")
    q.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax",
                   help="calibration method (default minmax)")
    q.add_argument("--min-median-dice", type=float, default=0.99,
                   help="required median mask Dice, int8 vs fp32 (default 0.99)")
    q.add_argument("--max-dice-change", type=float, default=0.005,
                   help="allowed change of the mean Dice against ground truth (default 0.005)")
    q.add_argument("--folds", type=lambda s: [int(v) for v in s.split(",")], metavar="K,K,...",
                   help="folds to quantise (default: all)")
    q.add_argument("--op-types", type=lambda s: tuple(v for v in s.split(",") if v), metavar="OP,...",
                   help="ONNX operator types to quantise, e.g. Conv (default: all ONNX Runtime can)")
    q.add_argument("--weights", choices=("int8", "int7", "uint8"), default=None,
                   help="weight type (default by this CPU: int8 with VNNI/AMX-INT8, else int7, i.e. 7-bit "
                        "weights, which ONNX Runtime's AVX2 kernels do not saturate)")
    q.add_argument("--onnx-cache-dir", type=Path, help="fp32 ONNX export cache (default: the user cache dir)")


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; returns the exit code."""
    if args.model_command == "import":
        from segmentation.models.checkpoint_import import import_checkpoints

        folder = import_checkpoints(
            args.checkpoints, args.out, input_size=args.input_size, architecture=args.arch,
            encoder=args.encoder, normalization=args.normalization, threshold=args.threshold,
            folds=args.folds, trust_pickle=args.trust_pickle, overwrite=args.overwrite,
        )
        print(f"wrote model folder {folder}")
        return 0
    if args.model_command == "quantize":
        return _quantize(args)
    if args.model_command == "init":
        import torch

        from segmentation.models.folder import ModelSpec, save_model_folder
        from segmentation.models.zoo import build_model

        torch.manual_seed(args.seed)
        spec = ModelSpec(architecture=args.arch, encoder=args.encoder, input_size=args.size,
                         provenance={"source": "random initialisation", "seed": args.seed})
        states = {k: build_model(spec.architecture, spec.encoder).state_dict() for k in range(args.folds)}
        print(f"wrote model folder {save_model_folder(args.out, spec, states, overwrite=args.overwrite)}")
        return 0
    from segmentation.models.folder import load_model_folder
    from segmentation.models.zoo import build_model, count_parameters

    mf = load_model_folder(args.folder)
    spec = mf.spec
    if args.json:
        data = spec.to_json_dict()
        data["weights_sha256"] = {str(f): mf.weights_hash(f) for f in mf.folds}
        if mf.variants:
            data["variants"] = {name: v.to_json_dict() for name, v in mf.variants.items()}
        json.dump(data, sys.stdout, indent=2, default=str)
        print()
        return 0
    params = count_parameters(build_model(spec.architecture, spec.encoder, in_channels=spec.in_channels))
    lines = [
        f"model folder   {mf.path}",
        f"architecture   {spec.architecture}",
        f"encoder        {spec.encoder}",
        f"parameters     {params / 1e6:.2f} M",
        f"input size     {spec.input_size} (network {spec.padded_size})",
        f"channels       {spec.in_channels}, normalisation {spec.normalization}",
        f"threshold      {spec.threshold}",
        f"segment        {spec.segment.label} ({spec.segment.type.scheme} {spec.segment.type.value}), "
        f"category {spec.segment.category.meaning}",
        f"folds          {', '.join(str(f) for f in mf.folds)}",
        f"format version {spec.format_version}",
    ]
    for key, value in spec.provenance.items():
        lines.append(f"provenance     {key}: {json.dumps(value, default=str)[:200]}")
    for name, variant in mf.variants.items():
        valid = [f for f in variant.files if mf.variant_file(name, f) is not None]
        lines.append(f"variant        {name}: folds {', '.join(map(str, sorted(variant.files)))} "
                     f"(valid: {', '.join(map(str, valid)) or 'none'})")
    print("\n".join(lines))
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from segmentation.inference.quantize import QuantizeSettings, quantize_model_folder

    settings = QuantizeSettings(
        calibration_frames=args.frames, check_frames=args.check_frames, calibrate_method=args.method,
        min_median_dice=args.min_median_dice, max_dice_change=args.max_dice_change, op_types=args.op_types,
        weight_type=args.weights,
    )
    report = quantize_model_folder(args.folder, args.calibration, settings=settings, folds=args.folds,
                                   onnx_cache_dir=args.onnx_cache_dir)
    for check in report.checks:
        print(check.describe())
    for fold, path in sorted(report.files.items()):
        print(f"wrote {path} (fold {fold}, {path.stat().st_size / 1e6:.1f} MB)")
    print(f"variant {report.variant} of {report.folder} written in {report.seconds:.0f} s")
    return 0
