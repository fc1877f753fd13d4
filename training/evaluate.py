"""Patient-level evaluation of trained models (Table 3 of the paper) and their comparison.

For every model folder (``taviseg train`` output) and every fold k it holds, the weights of
fold k (its best epoch, chosen on fold k's VALIDATION patients) segment fold k's TEST patients
only; frames are scored with :mod:`segmentation.metrics` (Dice, IoU, ASSD and HD95 in mm with
the data set's pixel spacing). Per patient, the frame values are aggregated (mean by default);
per model, the median over patients with a seeded percentile-bootstrap 95 % CI; between every
pair of models, a paired Wilcoxon signed-rank test on per-patient Dice, Holm-corrected
(:mod:`training.stats`).

ASSD/HD95 of a frame are NaN when the prediction or the ground truth is empty (see
:mod:`segmentation.metrics`); such frames are left out of the patient's ASSD/HD95 aggregate and
counted in ``n_surface_undefined``.

Model selection check: the test patients of a fold must not have influenced that fold's
weights. :func:`check_selection` reads the folder's training provenance and verifies that it
was trained on the splits being scored (same hash), that its best epoch was selected on
validation patients, and that none of those are test patients of the fold; the verdict is
stated in ``summary.json``. A folder trained on other splits is refused.

Outputs (in ``out_dir``): ``per_frame.csv``, ``per_patient.csv``, ``summary.json`` and, with two
or more models, ``comparison.csv``; ``examples/<model>/`` holds the predicted masks of the best
and worst frames for the report's overlays.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from segmentation.inference.config import InferenceConfig, PostprocessConfig, check_inference_section
from tavicore.config import CONF_DIR, ConfigError, apply_overrides, from_dict, read_yaml, setting
from training.errors import EvaluationError
from training.stats import Comparison, ConfidenceInterval, bootstrap_ci, pairwise_comparisons

logger = logging.getLogger(__name__)

DEFAULT_EVALUATE_CONFIG = CONF_DIR / "evaluate.yaml"
FRAME_COLUMNS = (
    "model", "fold", "patient_id", "frame_id", "run_id", "frame_index", "stage", "dice", "iou",
    "assd_mm", "hd95_mm", "gt_area_px", "pred_area_px", "confidence", "spacing_row_mm",
    "spacing_col_mm",
)
METRICS = ("dice", "iou", "assd_mm", "hd95_mm")
PATIENT_COLUMNS = (
    "model", "fold", "patient_id", "n_frames", "dice", "iou", "assd_mm", "hd95_mm",
    *(f"{m}_{agg}" for m in METRICS for agg in ("mean", "median")), "n_surface_undefined",
)
COMPARISON_COLUMNS = (
    "model_a", "model_b", "n_patients", "median_a", "median_b", "median_difference",
    "statistic", "p_value", "p_holm", "significant",
)


def _paper_inference() -> InferenceConfig:
    """The paper's inference: probabilities thresholded, no other post-processing."""
    return InferenceConfig(postprocess=PostprocessConfig(keep_largest_component=False, fill_holes=False))


@dataclass(frozen=True)
class EvaluateConfig:
    """``conf/evaluate.yaml``: how models are run and how statistics are computed.

    ``inference`` is the one inference schema (:class:`InferenceConfig`, as ``conf/inference.yaml``
    for ``taviseg predict`` and ``processing.inference`` for the node); its ``folds`` must stay
    null: fold k's weights always score fold k's test patients.
    """

    inference: InferenceConfig = setting(
        default_factory=_paper_inference, doc="how the models run (paper: threshold only, no TTA)"
    )
    patient_aggregate: Literal["mean", "median"] = setting(
        "mean", doc="how a patient's frame values become the patient's value"
    )
    hd95: bool = setting(True, doc="also compute HD95 (mm)")
    bootstrap_resamples: int = setting(10_000, ge=100, le=1_000_000, doc="bootstrap resamples")
    confidence: float = setting(0.95, gt=0.5, lt=1.0, doc="confidence level of the intervals")
    seed: int = setting(0, ge=0, doc="bootstrap seed")
    alpha: float = setting(0.05, gt=0.0, lt=1.0, doc="family-wise level of the Holm-corrected tests")
    examples: int = setting(3, ge=0, le=50, doc="best and worst frames per model kept for the report")

    def __post_init__(self) -> None:
        if self.inference.folds is not None:
            raise ValueError(
                f"inference.folds {list(self.inference.folds)}: leave it null; evaluate scores each "
                "fold's weights on that fold's test patients"
            )


def load_evaluate_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> EvaluateConfig:
    """Load ``conf/evaluate.yaml`` (or ``path``); a missing default file means all defaults.

    Raises:
        ConfigError: unknown key (inference settings outside the ``inference`` section
            included), wrong type, out-of-range value, missing explicit file.
    """
    source = path or DEFAULT_EVALUATE_CONFIG
    data = {} if path is None and not DEFAULT_EVALUATE_CONFIG.is_file() else read_yaml(source)
    if overrides:
        data = apply_overrides(data, overrides)
    own = {f.name for f in fields(EvaluateConfig)}
    try:
        check_inference_section(data, "", own_keys=own)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return from_dict(EvaluateConfig, data, source=str(source))


# --------------------------------------------------------------------------- model selection


@dataclass(frozen=True)
class SelectionCheck:
    """Whether a model folder's weights were selected without the scored test patients."""

    verified: bool
    statement: str
    problems: tuple[str, ...] = ()


def splits_sha256(path: Path) -> str:
    """SHA-256 (hex) of a splits file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_selection(provenance: Mapping[str, Any], splits: Any, splits_hash: str,
                    folds: tuple[int, ...]) -> SelectionCheck:
    """Check from a model folder's provenance that fold k's weights never saw fold k's test set.

    ``taviseg train`` records ``provenance["splits"]["sha256"]`` (the splits file it trained
    from), ``provenance["selection"]`` (how the best epoch was chosen) and
    ``provenance["folds"][k]["best_epoch"]``. Verified when the hash equals ``splits_hash``
    (so fold k's train/val patients are exactly the ones in the scored splits, which
    :func:`tavidata.splits.check_splits` proved disjoint from its test patients), the
    selection names validation data, and every evaluated fold has a recorded best epoch.

    Returns:
        The verdict; ``verified`` False (with the reasons) when the provenance lacks a record.

    Raises:
        EvaluationError: the provenance names other splits than the scored ones (the folder's
            "test" patients may be in its training data), or a selection on test data.
    """
    problems: list[str] = []
    splits_info = provenance.get("splits")
    recorded = splits_info.get("sha256") if isinstance(splits_info, Mapping) else None
    if recorded is None:
        problems.append("provenance does not record the splits file hash")
    elif str(recorded) != splits_hash:
        raise EvaluationError(
            f"model was trained on other splits (provenance splits sha256 {recorded}, scored "
            f"splits {splits_hash}): its fold test patients may be in its training data"
        )
    selection = str(provenance.get("selection", ""))
    if not selection:
        problems.append("provenance does not say how the best epoch was selected")
    elif "test" in selection.lower().replace("validation", ""):
        raise EvaluationError(f"best epoch selection {selection!r} mentions test data")
    elif "valid" not in selection.lower():
        problems.append(f"selection {selection!r} does not name validation data")
    per_fold = provenance.get("folds")
    for k in folds:
        fold = splits.folds[k]
        if set(fold.val) & set(fold.test) or set(fold.train) & set(fold.test):
            raise EvaluationError(f"fold {k}: the splits leak test patients into train/val")
        info = per_fold.get(str(k)) if isinstance(per_fold, Mapping) else None
        if not isinstance(info, Mapping) or info.get("best_epoch") is None:
            problems.append(f"fold {k}: no best epoch recorded")
    if problems:
        return SelectionCheck(False, "model selection NOT verified: " + "; ".join(problems), tuple(problems))
    epochs = ", ".join(f"fold {k}: epoch {per_fold[str(k)]['best_epoch']}" for k in folds)
    statement = (
        f"model selection verified from provenance: {selection} ({epochs}); trained on the "
        "scored splits (same sha256), so no fold's test patients were used for training or for "
        "choosing that fold's weights"
    )
    return SelectionCheck(True, statement)


# --------------------------------------------------------------------------- scoring


@dataclass
class ModelEvaluation:
    """Scores of one model: rows of per_frame.csv / per_patient.csv and the selection check."""

    name: str
    folder: Path
    spec: Any
    frames: list[dict[str, Any]] = field(default_factory=list)
    patients: list[dict[str, Any]] = field(default_factory=list)
    selection: SelectionCheck | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)

    def patient_values(self, metric: str) -> dict[str, float]:
        """``{patient_id: value}`` of a per-patient column."""
        return {row["patient_id"]: float(row[metric]) for row in self.patients}


def evaluate_model(
    name: str,
    folder: str | Path,
    dataset: Any,
    splits: Any,
    cfg: EvaluateConfig,
    *,
    splits_hash: str,
    examples_dir: Path | None = None,
    progress: bool = False,
) -> ModelEvaluation:
    """Score one model folder: fold k's weights on fold k's test patients, for each fold held.

    Raises:
        ModelError: unreadable model folder.
        EvaluationError: the folder holds a fold the splits do not have, or was trained on
            other splits.
    """
    from segmentation import metrics
    from segmentation.inference.engine import InferenceEngine
    from segmentation.models.folder import load_model_folder

    model = load_model_folder(folder)
    spec = model.spec
    bad = [k for k in spec.folds if k >= len(splits.folds)]
    if bad:
        raise EvaluationError(
            f"{folder}: folds {bad} do not exist in the splits (folds 0..{len(splits.folds) - 1})"
        )
    missing = [f.index for f in splits.folds if f.index not in spec.folds]
    if missing:
        logger.warning("%s: no weights for folds %s; their test patients are not scored", name, missing)
    result = ModelEvaluation(name=name, folder=Path(folder), spec=spec)
    result.selection = check_selection(spec.provenance, splits, splits_hash, spec.folds)
    if not result.selection.verified:
        logger.warning("%s: %s", name, result.selection.statement)
    best: list[tuple[float, int, dict, np.ndarray]] = []
    worst: list[tuple[float, int, dict, np.ndarray]] = []
    counter = 0
    for k in spec.folds:
        engine = InferenceEngine.from_config(model, replace(cfg.inference, folds=(k,)))
        test = splits.folds[k].test
        for pid in _progress(test, f"{name} fold {k}", progress):
            records = dataset.frames_of([pid])
            if not records:
                raise EvaluationError(f"fold {k}: a test patient of the splits has no frames in the data set")
            images = [dataset.read_image(r) for r in records]
            pred = engine.predict(images)
            rows = []
            for i, rec in enumerate(records):
                gt = dataset.read_mask(rec)
                mask = np.asarray(pred.masks[i], dtype=bool)
                if mask.shape != gt.shape:
                    raise EvaluationError(
                        f"{rec.frame_id}: prediction {mask.shape} vs ground truth {gt.shape}"
                    )
                surface = metrics.surface_metrics(mask, gt, spacing_mm=rec.spacing_mm)
                row = {
                    "model": name, "fold": k, "patient_id": pid, "frame_id": rec.frame_id,
                    "run_id": rec.run_id, "frame_index": rec.frame_index, "stage": rec.stage,
                    "dice": metrics.dice(mask, gt), "iou": metrics.iou(mask, gt),
                    "assd_mm": surface.assd_mm,
                    "hd95_mm": surface.hd95_mm if cfg.hd95 else math.nan,
                    "gt_area_px": int(gt.sum()), "pred_area_px": int(mask.sum()),
                    "confidence": float(pred.confidence[i]),
                    "spacing_row_mm": rec.spacing_mm[0], "spacing_col_mm": rec.spacing_mm[1],
                }
                rows.append(row)
                if cfg.examples:
                    counter += 1
                    _keep(best, cfg.examples, (row["dice"], -counter, row, mask))
                    _keep(worst, cfg.examples, (-row["dice"], -counter, row, mask))
            result.frames.extend(rows)
            result.patients.append(_patient_row(name, k, pid, rows, cfg.patient_aggregate))
    if examples_dir is not None and cfg.examples:
        result.examples = _save_examples(examples_dir, name, best, worst)
    logger.info("%s: scored %d frames of %d patients", name, len(result.frames), len(result.patients))
    return result


def _progress(items: Any, desc: str, enabled: bool) -> Any:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="patient", leave=False)


def _keep(heap: list, n: int, item: tuple) -> None:
    """Keep the ``n`` largest items (by their first two fields) in a min-heap."""
    key = item[:2]
    if len(heap) < n:
        heapq.heappush(heap, (key, item))
    elif key > heap[0][0]:
        heapq.heapreplace(heap, (key, item))


def _patient_row(name: str, fold: int, pid: str, rows: list[dict], aggregate: str) -> dict[str, Any]:
    out: dict[str, Any] = {"model": name, "fold": fold, "patient_id": pid, "n_frames": len(rows)}
    for metric in METRICS:
        values = np.array([r[metric] for r in rows], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[f"{metric}_mean"] = float(finite.mean()) if finite.size else math.nan
        out[f"{metric}_median"] = float(np.median(finite)) if finite.size else math.nan
        out[metric] = out[f"{metric}_{aggregate}"]
    assd = np.array([r["assd_mm"] for r in rows], dtype=np.float64)
    out["n_surface_undefined"] = int((~np.isfinite(assd)).sum())
    return out


def _save_examples(root: Path, name: str, best: list, worst: list) -> list[dict[str, Any]]:
    from tavidata.format import write_png

    folder = root / _safe(name)
    out = []
    for kind, heap in (("best", best), ("worst", worst)):
        for _, (_, _, row, mask) in sorted(heap, reverse=True):
            path = folder / f"{kind}_{_safe(row['frame_id'])}.png"
            write_png(path, mask.astype(np.uint8) * 255)
            out.append({"kind": kind, "frame_id": row["frame_id"], "patient_id": row["patient_id"],
                        "fold": row["fold"], "dice": row["dice"],
                        "prediction": path.relative_to(root.parent).as_posix()})
    return out


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


# --------------------------------------------------------------------------- driver


@dataclass(frozen=True)
class EvaluationSummary:
    """What :func:`evaluate` wrote, and the headline numbers."""

    out_dir: Path
    summary: dict[str, Any]
    comparisons: list[Comparison]


def evaluate(
    models: Mapping[str, str | Path],
    data_root: str | Path,
    out_dir: str | Path,
    cfg: EvaluateConfig | None = None,
    *,
    splits_path: str | Path | None = None,
    progress: bool = False,
) -> EvaluationSummary:
    """Evaluate one or more model folders on the data set's folds and write the outputs.

    Args:
        models: ``{name: model folder}`` (names label rows and tables).
        data_root: Data-set folder.
        out_dir: Output folder (created).
        cfg: Evaluation settings (default: ``conf/evaluate.yaml``).
        splits_path: Splits file (default ``<data_root>/splits.json``: the ones training used).
        progress: Show a progress bar per fold.

    Returns:
        The summary written to ``summary.json`` and the comparisons.

    Raises:
        EvaluationError: no models, bad names, a folder trained on other splits.
        DatasetError / SplitError / ModelError: unreadable inputs.
    """
    from tavidata.format import Dataset
    from tavidata.splits import SPLITS_FILENAME, check_splits, load_splits

    cfg = cfg or load_evaluate_config()
    if not models:
        raise EvaluationError("no model to evaluate (give --model NAME=FOLDER)")
    for name in models:
        if not name or _safe(name) != name:
            raise EvaluationError(f"model name {name!r}: use letters, digits, '.', '_' or '-'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = Dataset.load(data_root)
    splits_path = Path(splits_path) if splits_path else Path(data_root) / SPLITS_FILENAME
    splits = load_splits(splits_path)
    check_splits(splits, dataset)
    digest = splits_sha256(splits_path)
    evaluations = [
        evaluate_model(name, folder, dataset, splits, cfg, splits_hash=digest,
                       examples_dir=out_dir / "examples", progress=progress)
        for name, folder in models.items()
    ]
    _write_csv(out_dir / "per_frame.csv", FRAME_COLUMNS, [r for e in evaluations for r in e.frames])
    _write_csv(out_dir / "per_patient.csv", PATIENT_COLUMNS, [r for e in evaluations for r in e.patients])
    comparisons = pairwise_comparisons(
        {e.name: e.patient_values("dice") for e in evaluations}, alpha=cfg.alpha
    ) if len(evaluations) > 1 else []
    if comparisons:
        _write_csv(out_dir / "comparison.csv", COMPARISON_COLUMNS, [asdict(c) for c in comparisons])
    summary = {
        "data": {"root": str(Path(data_root).resolve()), "name": dataset.meta.get("name"),
                 "frames": len(dataset), "patients": len(dataset.patients)},
        "splits": {"path": str(splits_path.resolve()), "sha256": digest, "k": splits.k},
        "config": _jsonable(asdict(cfg)),
        "protocol": (
            f"fold k weights (best epoch on fold k's validation patients) scored on fold k's test "
            f"patients; per-patient {cfg.patient_aggregate} of frame metrics; median over patients "
            f"with {cfg.confidence:.0%} percentile bootstrap CI ({cfg.bootstrap_resamples} resamples, "
            f"seed {cfg.seed}); paired Wilcoxon signed-rank on per-patient Dice, Holm-corrected"
        ),
        "models": {e.name: _model_summary(e, cfg) for e in evaluations},
        "comparison": [asdict(c) for c in comparisons],
    }
    (out_dir / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2) + "\n", encoding="utf-8")
    logger.info("evaluation of %d model(s) written to %s", len(evaluations), out_dir)
    return EvaluationSummary(out_dir=out_dir, summary=summary, comparisons=comparisons)


def _model_summary(e: ModelEvaluation, cfg: EvaluateConfig) -> dict[str, Any]:
    def ci(metric: str) -> dict[str, Any]:
        values = [row[metric] for row in e.patients]
        interval: ConfidenceInterval = bootstrap_ci(
            values, confidence=cfg.confidence, resamples=cfg.bootstrap_resamples, seed=cfg.seed
        )
        return interval.as_dict()

    frame_dice = np.array([r["dice"] for r in e.frames], dtype=np.float64)
    return {
        "folder": str(e.folder.resolve()),
        "architecture": e.spec.architecture, "encoder": e.spec.encoder,
        "input_size": e.spec.input_size, "folds": list(e.spec.folds),
        "n_patients": len(e.patients), "n_frames": len(e.frames),
        "dice": ci("dice"), "iou": ci("iou"), "assd_mm": ci("assd_mm"), "hd95_mm": ci("hd95_mm"),
        "frame_dice_median": float(np.median(frame_dice)) if frame_dice.size else math.nan,
        "frames_surface_undefined": int(sum(r["n_surface_undefined"] for r in e.patients)),
        "model_selection": asdict(e.selection) if e.selection else None,
        "examples": e.examples,
    }


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.10g}"
    return value


def _jsonable(value: Any) -> Any:
    """Replace NaN/inf by None and Paths/tuples by str/list so that json.dumps writes valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value
