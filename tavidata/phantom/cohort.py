"""Runs and cohorts: :func:`generate_run` makes one cine run, :func:`generate_cohort` a data set.

A cohort folder is a data set in the project's format (:mod:`tavidata.format`) with
patients ``P001``..., runs ``run01``..., one PNG per frame and per mask, plus ``runs.json``
(every run's settings: stage, difficulty, valve, view, timing...), ``contact_sheet.png`` and,
with ``dicom=True``, one multi-frame X-Ray Angiographic Image per run under
``dicom/<patient>/<run>.dcm`` with its ground truth beside it (see
:mod:`tavidata.phantom.dicom_export`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from tavicore.config import to_dict
from tavidata.format import DatasetWriter
from tavidata.phantom.case import sample_patient, sample_run, stages_for_patient
from tavidata.phantom.config import PhantomConfig
from tavidata.phantom.contact_sheet import make_contact_sheet, make_tile
from tavidata.phantom.dicom_export import study_uid_for, write_run_with_ground_truth
from tavidata.phantom.imaging import build_scene
from tavidata.phantom.run import PhantomRun, bolus_shift_s, render_frames, run_rng
from tavidata.phantom.stats import REAL_TAVI_RANGES, describe, frame_stats, summarize

logger = logging.getLogger(__name__)

#: Tiles on the cohort's contact sheet (at most).
CONTACT_SHEET_TILES = 16


def patient_seed(config: PhantomConfig, index: int) -> int:
    """Seed of patient ``index`` (0-based) of a cohort: a function of the master seed only."""
    return int(np.random.SeedSequence([config.seed, index]).generate_state(1, dtype=np.uint32)[0])


def _patient(config: PhantomConfig, seed: int):
    return sample_patient(np.random.default_rng([seed, 1]), config)


def generate_run(config: PhantomConfig, patient_seed: int, run_index: int, *, n_frames: int | None = None,
                 stage: str | None = None) -> PhantomRun:
    """Generate one cine run of one patient.

    Args:
        config: Cohort settings (size, spacing, mixes...).
        patient_seed: The patient's seed (anatomy, valve design... come from it).
        run_index: Index of the run of this patient (0-based).
        n_frames: Frames of the run (drawn from ``config.frames_per_run`` when None).
        stage: Procedural stage (drawn from ``config.stages`` when None).

    Returns:
        The run; the same arguments give byte-identical frames and masks.

    Raises:
        ValueError: ``n_frames`` < 1, negative ``run_index`` or an unknown ``stage``.
    """
    if config.generator == "ct":
        from tavidata.phantom.ct.run import generate_ct_run

        return generate_ct_run(config, patient_seed, run_index, n_frames=n_frames, stage=stage)
    rng, n_frames = run_rng(config, patient_seed, run_index, n_frames)
    patient = _patient(config, patient_seed)
    case = sample_run(rng, config, patient, n_frames=n_frames, stage=stage)
    scene = build_scene(rng, case, patient)
    shift = bolus_shift_s(config, patient_seed, run_index, case.timing.frame_times)
    frames, masks = render_frames(scene, [t + shift for t in case.timing.frame_times], n_frames, scene.shape,
                                  np.random.default_rng([patient_seed, 3, run_index]))
    meta = case.describe()
    if shift:
        meta["bolus_shift_s"] = round(shift, 4)
    meta.update(scene.info)
    meta.update({
        "patient_seed": int(patient_seed), "run_index": int(run_index),
        "annulus_xy": [round(float(v), 2) for v in scene.root.annulus],
        "root_angle_deg": round(float(np.rad2deg(scene.root.angle)), 2),
        "ascending_diameter_mm": round(2 * scene.root.r_ascending * config.pixel_spacing_mm, 2),
        "magnification": round(case.sid_mm / case.sod_mm, 4),
    })
    spacing = float(config.pixel_spacing_mm)
    return PhantomRun(frames=frames, masks=masks, spacing_mm=(spacing, spacing), stage=case.stage, meta=meta)


def frame_plan(config: PhantomConfig) -> list[list[int]]:
    """Frames of every run of every patient: ``plan[p][r]``; sums to ``total_frames`` when set."""
    rng = np.random.default_rng([config.seed, 7])
    lo, hi = config.frames_per_run
    counts = rng.integers(lo, hi + 1, size=(config.patients, config.runs_per_patient))
    if config.total_frames is not None:
        flat = counts.reshape(-1)
        for _ in range(abs(int(flat.sum()) - config.total_frames) * 20 + 100):
            diff = config.total_frames - int(flat.sum())
            if diff == 0:
                break
            i = int(rng.integers(len(flat)))
            if diff > 0 and flat[i] < hi:
                flat[i] += 1
            elif diff < 0 and flat[i] > lo:
                flat[i] -= 1
        counts = flat.reshape(counts.shape)
        if int(counts.sum()) != config.total_frames:  # pragma: no cover - bounded by __post_init__
            raise ValueError(f"could not reach total_frames={config.total_frames}")
    return counts.tolist()


def patient_id(index: int, patients: int) -> str:
    """Identifier of patient ``index`` (0-based): P001, P002... (wider for > 999 patients)."""
    return f"P{index + 1:0{max(3, len(str(patients)))}d}"


def _clear_cohort(out: Path) -> None:
    """Remove what a previous cohort wrote in ``out`` (only the phantom's own files and folders)."""
    for name in ("images", "masks", "dicom"):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    for name in ("runs.json", "stats.json", "contact_sheet.png", "manifest.csv", "dataset.json", "splits.json"):
        (out / name).unlink(missing_ok=True)
    logger.info("cleared the previous cohort in %s", out)


def generate_cohort(out_dir: str | Path, config: PhantomConfig, *, progress: bool = False, dicom: bool = False,
                    contact_sheet: bool = True, overwrite: bool = False) -> Path:
    """Generate a cohort as a data set folder.

    Args:
        out_dir: Data-set root to create.
        config: Cohort settings.
        progress: Show a progress bar (tqdm, stderr).
        dicom: Also write every run as a multi-frame XA DICOM file with its ground truth under
            ``out_dir/dicom/<patient>/``.
        contact_sheet: Write ``contact_sheet.png``.
        overwrite: Replace a data set already in ``out_dir``.

    Returns:
        ``out_dir``.

    Raises:
        DatasetError: a data set exists there (without ``overwrite``) or a file cannot be written.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    if overwrite and (out / "manifest.csv").exists():
        _clear_cohort(out)
    plan = frame_plan(config)
    total = int(sum(sum(r) for r in plan))
    writer = DatasetWriter(out, name=f"phantom-{config.name}", overwrite=overwrite,
                           meta={"source": "taviseg phantom", "config": to_dict(config)})
    tiles: list[tuple[np.ndarray, None, str]] = []
    tile_every = max(1, (config.patients * config.runs_per_patient) // CONTACT_SHEET_TILES)
    runs_meta = []
    measured = []  # image statistics of each run's middle frame (stats.json)
    started = time.perf_counter()
    bar = tqdm(total=total, unit="frame", desc=f"phantom {config.name}", disable=not progress)
    try:
        run_counter = 0
        for p in range(config.patients):
            pid = patient_id(p, config.patients)
            seed = patient_seed(config, p)
            stages = stages_for_patient(np.random.default_rng([seed, 5]), config, config.runs_per_patient)
            for r in range(config.runs_per_patient):
                run = generate_run(config, seed, r, n_frames=plan[p][r], stage=stages[r])
                rid = f"run{r + 1:02d}"
                for i in range(len(run.frames)):
                    writer.add(pid, rid, i, run.frames[i], run.masks[i], spacing_mm=run.spacing_mm, stage=run.stage)
                if dicom:
                    write_run_with_ground_truth(out / "dicom" / pid / f"{rid}.dcm", run, patient_id=pid,
                                                study_uid=study_uid_for(config.seed, seed), series_number=r + 1)
                runs_meta.append({"patient_id": pid, "run_id": rid, "frames": len(run.frames),
                                  "spacing_mm": [float(v) for v in run.spacing_mm], **run.meta})
                mid = len(run.frames) // 2
                measured.append(frame_stats(run.frames[mid], run.masks[mid], float(run.spacing_mm[0])))
                if contact_sheet and run_counter % tile_every == 0 and len(tiles) < CONTACT_SHEET_TILES:
                    label = f"{pid} {rid} {run.stage[:4]} {run.meta['difficulty']}"
                    tiles.append((make_tile(run.frames[mid], run.masks[mid], label), None, ""))
                run_counter += 1
                bar.update(len(run.frames))
    finally:
        bar.close()
    writer.close()
    (out / "runs.json").write_text(json.dumps(runs_meta, indent=1) + "\n", encoding="utf-8")
    summary = summarize(measured)
    (out / "stats.json").write_text(json.dumps({
        "measured": f"the middle frame of each of the {len(measured)} runs",
        "summary": summary, "real_tavi_ranges": REAL_TAVI_RANGES,
    }, indent=1) + "\n", encoding="utf-8")
    logger.info("phantom image statistics: %s", describe(summary))
    if contact_sheet and tiles:
        make_contact_sheet(tiles, out / "contact_sheet.png")
    logger.info("phantom cohort %s: %d patients, %d runs, %d frames at %d px in %.1f s", out, config.patients,
                len(runs_meta), total, config.size, time.perf_counter() - started)
    return out
