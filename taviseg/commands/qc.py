"""``taviseg qc``: build the QC stress set, fit a model folder's QC data, show them.

Thin wrapper over :mod:`segmentation.qc.stress`, :mod:`segmentation.qc.fit` and
:mod:`segmentation.qc.store`; see docs/qc.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "per-frame quality control: build the stress set, fit a model folder's QC data, show them"
DESCRIPTION = """\
Quality control of the outlines (docs/qc.md).
  stress --out DIR [--seed 0] [--part all|fit|test]   corrupted phantom runs + real non-TAVI X-ray runs
  fit MODEL_FOLDER --data DATASET --stress DIR...     fit OOD statistics, shape statistics and the
                                                      calibrator; writes qc.json + qc.npz into the folder
  info MODEL_FOLDER                                   the folder's QC data (or "not available")
Real non-TAVI samples: --samples DIR, else $TAVISEG_DICOM_SAMPLES; without either, --no-samples is required."""

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``stress``/``fit``/``info`` actions."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="qc_command", metavar="ACTION", required=True)
    st = sub.add_parser("stress", help="build the stress set (a data set folder)")
    st.add_argument("--out", type=Path, required=True)
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--part", choices=("all", "fit", "test"), default="all",
                    help="disjoint halves for fitting and testing (default all)")
    st.add_argument("--size", type=int, default=256, help="phantom frame size (default 256)")
    st.add_argument("--preset", default="demo", help="phantom preset the runs are drawn from (default demo)")
    st.add_argument("--runs", type=int, default=3, help="runs per corruption (default 3)")
    st.add_argument("--frames", type=int, default=4, help="frames per run (default 4)")
    st.add_argument("--samples", type=Path, default=None, help="real DICOM samples folder")
    st.add_argument("--no-samples", action="store_true", help="phantom frames only")
    st.add_argument("--overwrite", action="store_true")
    fit = sub.add_parser("fit", help="fit the QC data of a model folder")
    fit.add_argument("folder", type=Path, metavar="MODEL_FOLDER")
    fit.add_argument("--data", type=Path, required=True, help="the model's training data set (with splits.json)")
    fit.add_argument("--stress", type=Path, nargs="+", required=True, help="stress set folder(s)")
    fit.add_argument("--device", default="auto")
    fit.add_argument("--max-train-frames", type=int, default=400)
    fit.add_argument("--max-heldout-frames", type=int, default=400)
    fit.add_argument("--false-alarm", type=float, default=0.04,
                     help="fraction of good held-out frames that may be flagged (default 0.04)")
    info = sub.add_parser("info", help="show a model folder's QC data")
    info.add_argument("folder", type=Path, metavar="MODEL_FOLDER")


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; returns the exit code."""
    from segmentation.qc.errors import QualityError

    if args.qc_command == "stress":
        from segmentation.qc.stress import SAMPLES_ENV, StressSpec, build_stress_set, default_samples_dir

        samples = None if args.no_samples else (args.samples or default_samples_dir())
        if samples is None and not args.no_samples:
            raise QualityError(f"qc stress: no real samples folder: pass --samples DIR, set ${SAMPLES_ENV}, "
                               "or build a phantom-only stress set with --no-samples")
        if samples is not None and not (samples / "MANIFEST.tsv").is_file():
            raise QualityError(f"qc stress: {samples} holds no MANIFEST.tsv (not a samples folder)")
        ds = build_stress_set(args.out, StressSpec(seed=args.seed, part=args.part, size=args.size, preset=args.preset,
                                                   runs_per_corruption=args.runs, frames_per_run=args.frames),
                              samples_dir=samples, overwrite=args.overwrite)
        print(f"stress set {args.out}: {len(ds.records)} frames {ds.meta['stress']['frames']}")
        return 0
    if args.qc_command == "fit":
        from segmentation.inference.engine import InferenceEngine
        from segmentation.qc.assess import QualityAssessor
        from segmentation.qc.fit import fit_quality_model

        engine = InferenceEngine.from_folder(args.folder, device=args.device, backend="eager", host_threads=0)
        qc = fit_quality_model(QualityAssessor(engine=engine, qc=None), args.data, args.stress,
                               max_train_frames=args.max_train_frames, max_heldout_frames=args.max_heldout_frames,
                               target_false_alarm=args.false_alarm)
        print(f"{args.folder}: QC data written (flag below {qc.flag_below:.3f}, "
              f"{qc.provenance['frames']}, gate {qc.gate})")
        return 0
    from segmentation.qc.store import NOT_AVAILABLE, QC_JSON, load_quality_model

    qc = load_quality_model(args.folder)
    if qc is None:
        print(f"{args.folder}: quality {NOT_AVAILABLE} (no {QC_JSON})")
        return 0
    print(json.dumps(qc.to_json_dict(), indent=2))
    return 0
