"""Quality-control bench: does the per-frame quality estimate detect the frames the model gets wrong?

Within one run (reused from ``--workdir`` when already there):

1. a phantom cohort (``--preset``, default ``ct_demo``, the v2 phantom, at ``--size`` px), split
   by patient; a small model (LinkNet/ResNet-18, ``--train-config``, default
   ``conf/train/cpu_demo_ct.yaml``, with ``--input-size`` and ``--epochs``) trained on fold 0
   (the first figures in bench/RESULTS.md: ``--preset demo --train-config cpu_demo``, v1);
2. a second phantom cohort of unseen patients (another master seed): held-out
   in-distribution frames;
   With ``--model DIR --data DATASET`` (e.g. the CPU recipe's ``runs/ct/model`` and
   ``data/ct_train``) that trained model is assessed instead (a copy: its QC data are refitted
   in the work folder), and the unseen patients come from the data set's own configuration;
3. two stress sets (``segmentation.qc.stress``): part ``fit`` seed 0 and part ``test`` seed 1
   (other phantom patients, other real sample files);
4. the QC data fitted (``segmentation.qc.fit``) on the model's training frames, fold 0's
   validation and test patients and the ``fit`` stress set;
5. evaluation on the unseen cohort + the ``test`` stress set: AUROC of ``1 - quality`` for
   detecting frames with Dice < 0.7 (the model's mask before the "no root here" gate), the
   false-alarm rate (flagged frames among the unseen in-distribution frames with a root and
   Dice >= 0.7; a frame without a root, before the injection, is right when answered "no root
   here"), sensitivity (flagged among Dice < 0.7), the "no root here" answers (on the stress
   set's frames without a root and on the unseen cohort's pre-injection frames), the risk-coverage curve
   (PNG) and the same figures for the old confidence (``segmentation.inference.confidence``,
   flagged below 0.8) in the same run.

Prints ONE summary line on stdout::

    qc bench: AUROC quality 0.97 vs old confidence 0.55 (Dice < 0.7, n=...), false alarms ...

    nice -n 10 .venv/bin/python bench/qc.py [--workdir runs/bench-qc --size 256 --input-size 128
                                             --epochs 6 --patients 16 --json out.json]
    nice -n 10 .venv/bin/python bench/qc.py --model runs/ct/model --data data/ct_train \
        --workdir runs/bench-qc-recipe
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

import training  # noqa: F401 - sets NO_ALBUMENTATIONS_UPDATE (no network check)
from segmentation.inference.engine import InferenceEngine
from segmentation.qc.assess import QualityAssessor
from segmentation.qc.fit import FAIL_DICE, evaluate_runs, fit_quality_model, runs_of
from segmentation.qc.stress import StressSpec, build_stress_set
from tavidata.format import Dataset

REPO = Path(__file__).resolve().parent.parent

logger = logging.getLogger("bench.qc")


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (ties count half); NaN if one class."""
    from scipy.stats import rankdata

    pos = np.asarray(positive, bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def risk_coverage(score: np.ndarray, fail: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Coverage and risk (failure rate among kept frames) when keeping the highest-scored frames;
    and the area under the curve (AURC, lower is better)."""
    order = np.argsort(-score, kind="stable")
    f = np.asarray(fail, float)[order]
    k = np.arange(1, len(f) + 1)
    risk = np.cumsum(f) / k
    return k / len(f), risk, float(risk.mean())


def samples_dir() -> Path | None:
    env = os.environ.get("TAVISEG_DICOM_SAMPLES")
    path = Path(env) if env else REPO.parent / "shared" / "dicom-samples"
    return path if (path / "MANIFEST.tsv").is_file() else None


def prepare_trained(args: argparse.Namespace, work: Path) -> tuple[Path, Path, Path, Path, Path]:
    """``--model``/``--data``: a copy of the trained folder (its QC data are refitted there, the
    original is left alone), unseen patients of the data set's own phantom configuration (another
    master seed), and stress sets of its generator at its frame size."""
    import shutil

    from segmentation.qc.fit import stress_preset
    from tavicore.config import from_dict
    from tavidata.phantom import PhantomConfig, generate_cohort

    meta = Dataset.load(args.data).meta
    if not (meta.get("config") or {}).get("generator"):
        raise SystemExit(f"bench qc: {args.data} is not a phantom data set (no generator in dataset.json)")
    base = from_dict(PhantomConfig, meta["config"], source=f"{args.data}/dataset.json")
    model = work / "model"
    if not (model / "config.json").is_file():
        shutil.copytree(args.model, model, dirs_exist_ok=True)
    unseen = work / "unseen"
    if not (unseen / "manifest.csv").is_file():
        generate_cohort(unseen, dataclasses.replace(base, seed=base.seed + 1000, patients=args.unseen_patients,
                                                    total_frames=None),
                        contact_sheet=False, overwrite=True)
    stress = build_stress_sets(work, stress_preset(meta), base.size)
    return Path(args.data), unseen, model, stress["fit"], stress["test"]


def build_stress_sets(work: Path, preset: str, size: int) -> dict[str, Path]:
    """The ``fit`` (seed 0) and ``test`` (seed 1) stress sets, each reused when present."""
    samples = samples_dir()
    stress = {}
    for part, seed in (("fit", 0), ("test", 1)):
        stress[part] = work / f"stress-{part}"
        if not (stress[part] / "manifest.csv").is_file():
            build_stress_set(stress[part], StressSpec(seed=seed, part=part, size=size, preset=preset),
                             samples_dir=samples, overwrite=True)
    return stress


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, Path, Path, Path, Path]:
    """Cohorts, model, stress sets (each reused when present)."""
    from tavidata.phantom import generate_cohort, load_phantom_preset
    from tavidata.splits import SPLITS_FILENAME, split_dataset
    from training.config import load_train_config
    from training.train import load_dataset_splits, train_fold, write_model_folder

    if args.model is not None:
        return prepare_trained(args, work)
    base = dataclasses.replace(load_phantom_preset(args.preset), size=args.size, spacing_mm=None,
                               patients=args.patients)
    cohort, unseen = work / "cohort", work / "unseen"
    if not (cohort / "manifest.csv").is_file():
        generate_cohort(cohort, base, contact_sheet=False, overwrite=True)
    if not (cohort / SPLITS_FILENAME).is_file():
        split_dataset(cohort, k=4, seed=0, val_fraction=0.2)
    if not (unseen / "manifest.csv").is_file():
        generate_cohort(unseen, dataclasses.replace(base, seed=base.seed + 1000, patients=args.unseen_patients),
                        contact_sheet=False, overwrite=True)
    cfg = load_train_config(args.train_config, overrides={
        "model": {"architecture": "linknet", "encoder": "resnet18", "input_size": args.input_size},
        "epochs": args.epochs, "device": "cpu", "max_train_frames": None, "max_val_frames": 32,
        "cpu_threads": args.threads,
    })
    model = work / "train" / "model"
    if not (model / "config.json").is_file():
        t0 = time.perf_counter()
        dataset = Dataset.load(cohort)
        splits, sha = load_dataset_splits(dataset)
        train_fold(cfg, dataset, splits, 0, work / "train", progress=False)  # no QC hook: fitted below
        model = write_model_folder(cfg, dataset, splits, sha, work / "train")
        logger.info("trained in %.0f s", time.perf_counter() - t0)
    stress = build_stress_sets(work, args.preset, args.size)
    return cohort, unseen, model, stress["fit"], stress["test"]


def plot(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray, float]], base_rate: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for name, (cov, risk, aurc) in curves.items():
        ax.plot(cov, risk, label=f"{name} (AURC {aurc:.3f})")
    ax.axhline(base_rate, color="grey", lw=0.8, ls=":", label=f"all frames ({base_rate:.2f})")
    ax.set_xlabel("coverage (fraction of frames kept, most trusted first)")
    ax.set_ylabel(f"risk (fraction of kept frames with Dice < {FAIL_DICE})")
    ax.set_title("QC bench: risk-coverage, unseen phantom + stress (test part)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench-qc")
    parser.add_argument("--preset", default="ct_demo",
                        help="phantom preset of the cohorts and stress sets (ct_demo: v2; demo: v1, the first figures)")
    parser.add_argument("--train-config", default="cpu_demo_ct",
                        help="base training configuration (cpu_demo with demo)")
    parser.add_argument("--size", type=int, default=256, help="phantom frame size")
    parser.add_argument("--input-size", type=int, default=128, help="model input size")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--patients", type=int, default=16, help="patients of the training cohort")
    parser.add_argument("--unseen-patients", type=int, default=6, help="patients of the unseen cohort")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine 2 threads ran 14x slower)")
    parser.add_argument("--model", type=Path, default=None,
                        help="a trained model folder to assess instead of the bench's small model (with --data)")
    parser.add_argument("--data", type=Path, default=None,
                        help="--model's phantom data set (with splits.json): QC fitted on its held-out patients")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--png", type=Path, default=None, help="risk-coverage PNG (default: workdir/risk_coverage.png)")
    args = parser.parse_args(argv)
    if (args.model is None) != (args.data is None):
        parser.error("--model and --data go together")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    cohort, unseen, model, stress_fit, stress_test = prepare(args, work)
    engine = InferenceEngine.from_folder(model, device="cpu", backend="eager", batch_size=8, host_threads=0)
    assessor = QualityAssessor(engine=engine, qc=None)
    fit_rows: list[dict] = []
    qc = fit_quality_model(assessor, cohort, [stress_fit], seed=0, save=True, rows_out=fit_rows)

    id_rows = evaluate_runs(assessor, runs_of(Dataset.load(unseen).records))
    stress_rows = evaluate_runs(assessor, runs_of(Dataset.load(stress_test).records))
    rows = id_rows + stress_rows
    dice = np.array([r["dice"] for r in rows])
    fail = dice < FAIL_DICE
    quality = np.array([r["quality"] for r in rows])
    conf = np.array([r["confidence"] for r in rows])
    flagged = np.array([r["flagged"] for r in rows])
    old_flag = conf < 0.8
    n_id = len(id_rows)
    no_root = np.array([r["no_root"] for r in rows])
    gated = np.array([r["reason"] is not None for r in rows])
    # false alarms: flags on unseen in-distribution frames with a root that the model outlined well;
    # a frame without a root (before the injection) answered "no root here" is right, not a false alarm
    id_ok = ~fail[:n_id] & ~no_root[:n_id]
    far = float(flagged[:n_id][id_ok].mean()) if id_ok.any() else float("nan")
    far_old = float(old_flag[:n_id][id_ok].mean()) if id_ok.any() else float("nan")
    sens = float(flagged[fail].mean()) if fail.any() else float("nan")
    sens_old = float(old_flag[fail].mean()) if fail.any() else float("nan")
    curves = {"quality (QC)": risk_coverage(quality, fail), "old confidence": risk_coverage(conf, fail),
              "oracle (Dice)": risk_coverage(dice, fail)}
    png = args.png or work / "risk_coverage.png"
    plot(png, curves, float(fail.mean()))
    per_stage = {}
    for stage in sorted({r["stage"] for r in rows}):
        idx = np.array([r["stage"] == stage for r in rows])
        per_stage[stage or "in-distribution"] = {
            "frames": int(idx.sum()), "fail": int(fail[idx].sum()),
            "flagged_of_fail": int((flagged & fail & idx).sum()),
            "flagged": int((flagged & idx).sum()), "old_flagged": int((old_flag & idx).sum()),
            "no_root_answers": int((gated & idx).sum()),
            "median_quality": float(np.median(quality[idx])), "median_old_confidence": float(np.median(conf[idx])),
            "median_dice": float(np.median(dice[idx])),
        }
    result = {
        "frames": len(rows), "in_distribution_frames": n_id, "stress_frames": len(stress_rows),
        "fail_frames": int(fail.sum()),
        "auroc_quality": auroc(-quality, fail), "auroc_old_confidence": auroc(-conf, fail),
        "false_alarm_rate": far, "false_alarm_rate_old": far_old,
        "sensitivity": sens, "sensitivity_old": sens_old,
        "missed_failures": int((fail & ~flagged).sum()),
        "aurc_quality": curves["quality (QC)"][2], "aurc_old_confidence": curves["old confidence"][2],
        "aurc_oracle": curves["oracle (Dice)"][2],
        "no_root_frames": int(no_root.sum()), "no_root_answered_empty": int((gated & no_root).sum()),
        "no_root_left_outlined_after_gate": int(sum(1 for r in rows if r["no_root"] and r["dice_final"] < 0.5)),
        "in_distribution_gated": int((gated[:n_id] & ~no_root[:n_id]).sum()),
        "in_distribution_no_root_frames": int(no_root[:n_id].sum()),
        "in_distribution_no_root_answered_empty": int((gated[:n_id] & no_root[:n_id]).sum()),
        "flag_below": qc.flag_below, "per_stage": per_stage, "seconds": time.perf_counter() - t0,
        "model": str(model), "png": str(png),
    }
    if args.json:
        def frame(r: dict) -> dict:
            return {k: v for k, v in r.items() if k != "encoder"}

        result["frames_evaluated"] = [frame(r) for r in rows]
        result["frames_fit"] = [frame(r) for r in fit_rows]
        args.json.write_text(json.dumps(result, indent=1, default=float) + "\n", encoding="utf-8")
    print(
        f"qc bench: AUROC (Dice < {FAIL_DICE}) quality {result['auroc_quality']:.3f} vs old confidence "
        f"{result['auroc_old_confidence']:.3f} (n={len(rows)}, {int(fail.sum())} failures); "
        f"false alarms on unseen in-distribution frames {100 * far:.1f}% (old {100 * far_old:.1f}%); "
        f"failures flagged {100 * sens:.1f}% (old {100 * sens_old:.1f}%), missed {result['missed_failures']}; "
        f"no-root frames answered empty {result['no_root_answered_empty']}/{result['no_root_frames']}; "
        f"in-distribution frames with a root gated {result['in_distribution_gated']}/"
        f"{n_id - result['in_distribution_no_root_frames']}; "
        f"AURC {result['aurc_quality']:.3f} vs {result['aurc_old_confidence']:.3f} "
        f"(oracle {result['aurc_oracle']:.3f}); "
        f"{result['seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
