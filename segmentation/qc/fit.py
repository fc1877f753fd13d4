"""Fitting the QC data of a model folder: :func:`fit_quality_model`.

1. **Training frames** (the training patients of the folder's folds, from the data set's
   ``splits.json``): the encoder features' mean and shrunk covariance (:mod:`.ood`), and the
   shape statistics of the ground-truth masks (:mod:`.shape`).
2. **Held-out frames** (validation and test patients of those folds, never trained on) and the
   **stress set(s)** (:mod:`.stress`): every frame is segmented and measured; its label is
   ``Dice >= 0.8`` against the ground truth (empty ground truth: the frame is right only when
   the model outlines nothing). The monotone calibrator (:mod:`.calibrator`) is fitted on the
   frames the model outlined something on (an empty mask is answered by the gate, "nothing
   segmented"; frames without a root, e.g. before the injection, are left out of the shape and
   contrast statistics of the training masks).
   The flip-TTA feature is left out for a model that is not flip-consistent
   (:func:`calibrator_features`).
3. ``flag_below`` is the quality below which at most ``target_false_alarm`` of the held-out
   in-distribution frames with Dice >= 0.7 fall, their quality predicted out of fold
   (:func:`cross_fitted_quality`); frames beyond 1.25 times the largest held-out
   encoder-feature distance (``ood_flag``) are flagged whatever their quality (the calibrator
   knows nothing of them); the "no root here" gate's limits come from the
   training masks (area, contrast), the held-out frames (distance, contrast) with wide margins, so that
   it fires only far outside what the model was trained on.

The result is written into the model folder (``qc.json`` + ``qc.npz``, :mod:`.store`).
"""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segmentation import metrics
from segmentation.qc.assess import QualityAssessor
from segmentation.qc.calibrator import FEATURES, Calibrator
from segmentation.qc.contrast import mask_contrast
from segmentation.qc.errors import QualityError
from segmentation.qc.ood import FeatureGaussian
from segmentation.qc.shape import ShapeStats, shape_features
from segmentation.qc.store import Gate, QualityModel, save_quality_model
from tavidata.format import Dataset, FrameRecord

if TYPE_CHECKING:
    from segmentation.models.folder import ModelFolder

logger = logging.getLogger(__name__)

#: Frames with at least this Dice count as good (the calibrator's label).
GOOD_DICE = 0.8
#: Frames below this Dice are failures (the bench's detection target; false alarms are flags on
#: in-distribution frames at or above it).
FAIL_DICE = 0.7


def runs_of(records: Iterable[FrameRecord]) -> list[list[FrameRecord]]:
    """Records grouped by (patient, run), frames in order; runs in sorted order."""
    groups: dict[tuple[str, str], list[FrameRecord]] = defaultdict(list)
    for rec in records:
        groups[(rec.patient_id, rec.run_id)].append(rec)
    return [sorted(groups[k], key=lambda r: r.frame_index) for k in sorted(groups)]


def cap_runs(runs: list[list[FrameRecord]], max_frames: int | None, seed: int) -> list[list[FrameRecord]]:
    """Whole runs in a seeded order until ``max_frames`` frames (None: all)."""
    if max_frames is None:
        return runs
    order = list(range(len(runs)))
    random.Random(seed).shuffle(order)
    out, n = [], 0
    for i in order:
        if n >= max_frames:
            break
        out.append(runs[i])
        n += len(runs[i])
    return sorted(out, key=lambda r: (r[0].patient_id, r[0].run_id))


def model_patients(dataset: Dataset, folds: Sequence[int]) -> tuple[list[str], list[str]]:
    """(training patients, held-out patients) of the model's folds, from ``splits.json``.

    Held-out: validation and test patients of those folds that no selected fold trained on.

    Raises:
        SplitError: no splits file or an unknown fold.
    """
    from tavidata.splits import SPLITS_FILENAME, load_splits

    splits = load_splits(Path(dataset.root) / SPLITS_FILENAME)
    train: set[str] = set()
    other: set[str] = set()
    for k in folds:
        fold = splits.fold(k)
        train.update(fold.train)
        other.update(fold.val)
        other.update(fold.test)
    return sorted(train), sorted(other - train)


def evaluate_runs(assessor: QualityAssessor, runs: list[list[FrameRecord]]) -> list[dict]:
    """Segment, measure (and score, when the assessor has QC data) every frame of ``runs``.

    Returns one row per frame: ``frame_id``, ``stage``, ``dice`` (the model's mask before the
    gate), ``dice_final`` (after it), ``no_root`` (empty ground truth), the features, ``quality``
    (None without QC data), ``flagged``, ``reason`` and ``confidence`` (the old score).
    """
    rows: list[dict] = []
    for run in runs:
        images = [Dataset.read_image(r) for r in run]
        gts = [Dataset.read_mask(r) if r.mask is not None else np.zeros(images[i].shape, bool)
               for i, r in enumerate(run)]
        m = assessor.measure(images, spacing_mm=run[0].spacing_mm, sequence=True)
        pred = assessor.score(m) if assessor.available else None
        for i, rec in enumerate(run):
            row = {
                "frame_id": rec.frame_id, "stage": rec.stage, "patient_id": rec.patient_id,
                "dice": metrics.dice(m.masks[i], gts[i]), "no_root": not gts[i].any(),
                "confidence": float(m.confidence[i]), "features": m.features[i], "encoder": m.encoder[i],
                "quality": None, "flagged": False, "reason": None, "dice_final": None,
            }
            if pred is not None:
                row.update(quality=float(pred.quality[i]), flagged=bool(pred.flagged[i]), reason=pred.reasons[i],
                           dice_final=metrics.dice(pred.masks[i], gts[i]))
            rows.append(row)
    return rows


def _feature_matrix(rows: list[dict], features: Sequence[str] = FEATURES) -> np.ndarray:
    return np.array([[float(r["features"].get(f, math.nan)) for f in features] for r in rows],
                    np.float64).reshape(len(rows), len(features))


#: Patient-level folds of the held-out frames for the cross-fitted flag threshold.
THRESHOLD_FOLDS = 5


def cross_fitted_quality(calibrator: Calibrator, held_rows: Sequence[dict], stress_rows: Sequence[dict], *,
                         folds: int = THRESHOLD_FOLDS, seed: int = 0) -> np.ndarray:
    """The quality of every held-out frame as predicted by a calibrator that did not see its
    patient: the held-out patients are split into ``folds`` groups; each group is predicted by a
    calibrator fitted on the other groups plus the stress frames. ``flag_below`` is chosen on
    these out-of-fold qualities: chosen on the calibrator's own fitting frames it flags fewer
    good frames there than on unseen patients. A group whose training part holds a single label
    class is predicted by the calibrator fitted on every frame (``calibrator``)."""
    held_rows = list(held_rows)
    features = calibrator.features
    out = calibrator.predict(_feature_matrix(held_rows, features))
    patients = sorted({r["patient_id"] for r in held_rows})
    if len(patients) < 2:
        return out
    random.Random(seed).shuffle(patients)
    for k in range(min(folds, len(patients))):
        group = set(patients[k::folds])
        rest = [r for r in held_rows if r["patient_id"] not in group] + list(stress_rows)
        y = np.array([r["dice"] >= GOOD_DICE for r in rest], np.float64)
        if len(np.unique(y)) < 2:
            continue
        idx = [i for i, r in enumerate(held_rows) if r["patient_id"] in group]
        part = Calibrator.fit(_feature_matrix(rest, features), y, features=features)
        out[idx] = part.predict(_feature_matrix([held_rows[i] for i in idx], features))
    return out


#: Below this median flip-TTA Dice on the good held-out frames the model does not agree with its
#: mirrored self even where it is right, and the flip feature says nothing about failure.
MIN_FLIP_AGREEMENT = 0.5


def calibrator_features(held_good: Sequence[dict]) -> tuple[str, ...]:
    """The calibrator's features for this model: :data:`FEATURES`, without ``flip_dice`` when
    the model's good held-out outlines do not survive a horizontal flip (median flip Dice below
    :data:`MIN_FLIP_AGREEMENT`: a model trained without flips, for views where the root is
    always on one side, outlines the mirrored frame elsewhere; its flip Dice is about 0 on every
    frame, good or bad, and would only add noise). Without flip_dice the assessor also skips the
    flipped forward pass (half the QC inference)."""
    flips = [float(r["features"].get("flip_dice", math.nan)) for r in held_good]
    flips = [f for f in flips if math.isfinite(f)]
    if flips and float(np.median(flips)) < MIN_FLIP_AGREEMENT:
        logger.info("QC fit: flip_dice left out (median %.2f on good held-out frames < %.2f: the model is "
                    "not flip-consistent)", float(np.median(flips)), MIN_FLIP_AGREEMENT)
        return tuple(f for f in FEATURES if f != "flip_dice")
    return FEATURES


def fit_quality_model(
    assessor: QualityAssessor,
    dataset_root: str | Path,
    stress_roots: Sequence[str | Path],
    *,
    max_train_frames: int | None = 400,
    max_heldout_frames: int | None = 400,
    target_false_alarm: float = 0.04,
    seed: int = 0,
    save: bool = True,
    rows_out: list[dict] | None = None,
) -> QualityModel:
    """Fit the QC data of ``assessor``'s model folder (module docstring) and write them there.

    Args:
        assessor: The folder's assessor (its current QC data, if any, are ignored).
        dataset_root: The model's training data set (with ``splits.json``).
        stress_roots: Stress-set folders (:func:`segmentation.qc.stress.build_stress_set`).
        max_train_frames: Cap on training frames for the feature statistics (whole runs).
        max_heldout_frames: Cap on held-out in-distribution frames for the calibrator.
        target_false_alarm: Fraction of held-out frames with Dice >= 0.7 that may be flagged.
        seed: Seed of the frame caps.
        save: Write ``qc.json``/``qc.npz`` into the folder.
        rows_out: When given, the calibrator's frames are appended to it (rows of
            :func:`evaluate_runs`, with the OOD and shape features filled in).

    Returns:
        The fitted :class:`QualityModel` (the assessor uses it from now on).

    Raises:
        SplitError: no splits file. QualityError: too few frames, or a single label class.
    """
    fresh = QualityAssessor(engine=assessor.engine, qc=None, _encoder=assessor._encoder)
    dataset = Dataset.load(dataset_root)
    train_p, held_p = model_patients(dataset, assessor.engine.folder.folds)
    train_runs = cap_runs(runs_of(dataset.frames_of(train_p)), max_train_frames, seed)
    held_runs = cap_runs(runs_of(dataset.frames_of(held_p)), max_heldout_frames, seed + 1)
    logger.info("QC fit: %d training frames, %d held-out frames, %d stress set(s)",
                sum(map(len, train_runs)), sum(map(len, held_runs)), len(stress_roots))

    # Only the encoder features of the training frames are needed (not their segmentation).
    train_features = np.concatenate([fresh.encoder_features([Dataset.read_image(r) for r in run])
                                     for run in train_runs])
    ood = FeatureGaussian.fit(train_features)
    gt_shapes, gt_contrast, fovs = [], [], []
    for run in train_runs:
        for rec in run:
            gt = Dataset.read_mask(rec)
            fovs.append(max(gt.shape) * max(rec.spacing_mm))
            if not gt.any():  # a frame without a root (before the injection): no outline to describe
                continue
            gt_shapes.append(shape_features(gt, rec.spacing_mm))
            gt_contrast.append(mask_contrast(Dataset.read_image(rec), gt))
    shape = ShapeStats.fit(gt_shapes, fov_mm=float(np.median(fovs)))

    # Frames the model leaves empty are answered by the gate ("nothing segmented"), whatever the
    # calibrator says: they are left out of its fit and of the flag threshold (a correct empty
    # answer on a frame without a root would otherwise count as a good frame with degenerate features).
    held_rows = [r for r in evaluate_runs(fresh, held_runs) if r["features"]["area_frac"] > 0]
    stress_rows = [row for root in stress_roots for row in evaluate_runs(fresh, runs_of(Dataset.load(root).records))
                   if row["features"]["area_frac"] > 0]
    if not held_rows:
        raise QualityError(f"the model segments nothing on the held-out frames of {dataset_root}")
    fit_rows = held_rows + stress_rows
    for row in fit_rows:
        d = float(ood.distance(row["encoder"])[0])
        row["features"]["ood_distance"] = d
        row["features"]["ood_log_distance"] = math.log1p(d)
        row["features"]["shape_implausibility"] = shape.implausibility(row["features"])
    y = np.array([r["dice"] >= GOOD_DICE for r in fit_rows], np.float64)
    is_good = np.array([r["dice"] >= FAIL_DICE for r in held_rows], bool)
    held_good = [r for r, good in zip(held_rows, is_good) if good]
    features = calibrator_features(held_good)
    calibrator = Calibrator.fit(_feature_matrix(fit_rows, features), y, features=features)
    if rows_out is not None:
        rows_out.extend(fit_rows)

    q_held = cross_fitted_quality(calibrator, held_rows, stress_rows, seed=seed)
    q_good = q_held[is_good] if held_good else np.ones(1)
    flag_below = float(np.clip(np.quantile(q_good, target_false_alarm), 0.05, 0.95))
    held_d = np.array([r["features"]["ood_distance"] for r in held_rows]) if held_rows else ood.train_distances
    # The limit rests on every good outline seen: the model's on the good held-out frames and the
    # ground truth's on the training frames (hundreds of frames; the held-out ones alone missed the
    # tail: unseen v2 roots crossing the spine reached -0.07 where the held-out minimum was -0.01).
    good_contrast = np.array([r["features"]["mask_contrast"] for r in held_good] + gt_contrast)
    area = [f["area_frac"] for f in gt_shapes if f["area_frac"] > 0]
    gate = Gate(
        ood_max=float(2.0 * max(float(held_d.max()), ood.train_quantile(1.0))),
        area_frac_min=float(0.2 * min(area)),
        area_frac_max=float(min(0.9, 2.0 * max(area))),
        contrast_min=contrast_limit(good_contrast),
    )
    provenance = {
        "dataset": str(Path(dataset_root).resolve()),
        "stress_sets": [str(Path(s).resolve()) for s in stress_roots],
        "frames": {"train": len(train_features), "held_out": len(held_rows), "stress": len(stress_rows)},
        "labels_good": int(y.sum()), "labels_bad": int(len(y) - y.sum()),
        "features_left_out": [f for f in FEATURES if f not in features],
        "target_false_alarm": target_false_alarm, "seed": seed,
        "weights_sha256": {str(k): assessor.engine.folder.weights_hash(k) for k in assessor.engine.folder.folds},
    }
    qc = QualityModel(calibrator=calibrator, shape=shape, ood=ood, gate=gate, flag_below=flag_below,
                      provenance=provenance, ood_flag=float(1.25 * held_d.max()))
    gated_good = sum(gate.reason(r["features"]["ood_distance"], r["features"]["area_frac"],
                                 r["features"]["mask_contrast"], shape.implausibility(r["features"])) is not None
                     for r in held_good)
    logger.info("QC fit: flag below %.3f; gate %s; gate fires on %d of %d good held-out frames",
                flag_below, gate, gated_good, len(held_good))
    if save:
        save_quality_model(assessor.engine.folder.path, qc)
    assessor.qc = qc
    return qc


def contrast_limit(good_contrast: Sequence[float] | np.ndarray) -> float:
    """The "no contrast" gate's limit: below every good held-out frame's outline contrast, with a
    margin of half its magnitude plus 0.02 (a root may be barely darker, or even lighter, than a
    ring that crosses the heart shadow or the spine; such frames must keep their outline)."""
    lowest = min(0.0, float(np.min(good_contrast))) if len(good_contrast) else 0.0
    return 1.5 * lowest - 0.02


#: The training hook fits QC data only when the data set has at least this many frames in
#: each part (tiny test cohorts are skipped: their calibrator would mean nothing).
MIN_TRAIN_FRAMES = 48
MIN_HELDOUT_FRAMES = 24


def stress_preset(dataset_meta: dict) -> str:
    """The phantom preset of the training hook's stress set: the generator the model was trained
    on (a v2 data set gets v2 frames, ``ct_demo``; any other data set the v1 ``demo`` frames)."""
    generator = ((dataset_meta or {}).get("config") or {}).get("generator")
    return "ct_demo" if generator == "ct" else "demo"


def qc_still_valid(folder: ModelFolder, dataset_root: str | Path) -> QualityModel | None:
    """The folder's QC data when they were fitted for its current weights (every fold) on
    ``dataset_root``, else None (none, invalid, other weights or another data set). A training
    command run again over finished folds rewrites the model folder with the same weights; its
    QC data then stay as they are instead of being fitted again."""
    from segmentation.errors import ModelError
    from segmentation.qc.store import load_quality_model

    try:
        qc = load_quality_model(folder.path)
    except ModelError:
        return None
    if qc is None:
        return None
    fitted = qc.provenance.get("weights_sha256") or {}
    current = {str(k): folder.weights_hash(k) for k in folder.folds}
    same_data = qc.provenance.get("dataset") == str(Path(dataset_root).resolve())
    return qc if fitted == current and same_data else None


def fit_after_training(
    model_folder: str | Path,
    dataset_root: str | Path,
    stress_dir: str | Path,
    *,
    device: str = "auto",
    samples_dir: str | Path | None = None,
) -> QualityModel | None:
    """The end-of-training hook: build a stress set and fit the folder's QC data, fail-soft.

    The stress set holds the real non-TAVI samples of ``samples_dir`` (default
    ``$TAVISEG_DICOM_SAMPLES`` when set; a folder without them is named in a warning). Skipped
    (logged) when the data set is too small (:data:`MIN_TRAIN_FRAMES`, :data:`MIN_HELDOUT_FRAMES`);
    a fit that cannot be made (one label class...) is logged as a warning and leaves the folder
    without QC data ("quality not available"): training itself never fails because of QC.
    QC data already fitted for the folder's current weights on this data set are kept
    (:func:`qc_still_valid`). Refit with ``taviseg qc fit`` (and a stress set holding the real
    samples) at any time.

    Returns:
        The fitted QC data, or None when skipped or failed.
    """
    from segmentation.errors import SegmentationError
    from segmentation.inference.engine import InferenceEngine
    from segmentation.qc.stress import StressSpec, build_stress_set, default_samples_dir, missing_real_samples
    from tavidata.errors import DatasetError, SplitError

    try:
        from segmentation.models.folder import load_model_folder

        dataset = Dataset.load(dataset_root)
        folder = load_model_folder(model_folder)
        kept = qc_still_valid(folder, dataset_root)
        if kept is not None:
            logger.info("QC data of %s were fitted for these weights on this data set: kept (refit with "
                        "`taviseg qc fit`)", model_folder)
            return kept
        train_p, held_p = model_patients(dataset, folder.folds)
        n_train, n_held = len(dataset.frames_of(train_p)), len(dataset.frames_of(held_p))
        if n_train < MIN_TRAIN_FRAMES or n_held < MIN_HELDOUT_FRAMES:
            logger.info("QC data not fitted: %d training / %d held-out frames (need %d / %d); "
                        "quality is not available for %s", n_train, n_held, MIN_TRAIN_FRAMES,
                        MIN_HELDOUT_FRAMES, model_folder)
            return None
        engine = InferenceEngine.from_folder(model_folder, device=device, backend="eager", host_threads=0)
        spec = StressSpec(seed=0, part="all", runs_per_corruption=2, preset=stress_preset(dataset.meta))
        samples = samples_dir if samples_dir is not None else default_samples_dir()
        missing = [] if samples is None else missing_real_samples(samples)
        if missing:
            logger.warning("QC stress set without real samples: %s lacks %s", samples,
                           ", ".join(p.name for p in missing))
            samples = None
        stress = build_stress_set(stress_dir, spec, samples_dir=samples, overwrite=True)
        return fit_quality_model(QualityAssessor(engine=engine, qc=None), dataset_root, [stress.root],
                                 max_train_frames=200, max_heldout_frames=200)
    except (SegmentationError, DatasetError, SplitError) as exc:
        logger.warning("QC data not fitted for %s: %s; quality is not available until `taviseg qc fit`",
                       model_folder, exc)
        return None
