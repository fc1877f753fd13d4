"""The QC stress set: frames on which the model should fail, and frames without a root at all.

:func:`build_stress_set` writes a data set (the project's format, :mod:`tavidata.format`) of

* **phantom runs under corruptions**: held-out phantom patients (their own master seed, so no
  patient of any training cohort) of the preset's generator (v1 parametric or v2 CT),
  ``frames_per_run`` consecutive frames per run, the same corruption on every frame of a run
  with a severity drawn per run from mild to heavy (:data:`CORRUPTIONS`): ``clean``, ``blur``,
  ``noise``, ``low_contrast``, ``no_contrast`` (the same scene rendered before the injection:
  ground truth EMPTY, there is no root to see), ``wrong_window`` (a narrow window that saturates
  the frame), ``inverted`` (MONOCHROME1 read as MONOCHROME2), ``rotated`` (90/180/270 degrees),
  ``flipped`` (upside down), ``cropped`` (a zoomed-in sub-window, mask cropped with it);
* **real non-TAVI X-ray runs** from the DICOM samples folder (coronary XA, cerebral XA, RF):
  ground truth EMPTY, any outline there is a failure; each frame also horizontally flipped,
  rotated by 90 degrees and contrast-stretched (other views of the same non-root anatomy).

Patients are named ``S<corruption>-<k>`` (phantom) and ``R<sample-stem>`` (real); the manifest's
``stage`` column holds the corruption (``real`` for the samples). ``part`` selects disjoint
halves for fitting and testing the calibrator: other phantom seeds and other real sample
files (``fit``: the coronary cine rubo_0002 and the RF image orthanc_KarstenHilbertRF;
``test``: the cerebral XA1 and the RF image rubo_0015; ``all``: every file). The same
arguments give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from segmentation.qc.errors import QualityError
from tavidata.format import Dataset, DatasetWriter

logger = logging.getLogger(__name__)

CORRUPTIONS = (
    "clean", "blur", "noise", "low_contrast", "no_contrast", "wrong_window",
    "inverted", "rotated", "flipped", "cropped",
)
#: Corruptions whose ground truth is empty (no root visible).
NO_ROOT = frozenset({"no_contrast", "real"})
#: Real sample files (stem of the file name; the wg04 files are one image in eight encodings,
#: so only the uncompressed one is used) and the part they belong to.
REAL_SAMPLES: dict[str, str] = {
    "rubo_0002_XA_jpegbaseline_96f": "fit",
    "orthanc_KarstenHilbertRF": "fit",
    "wg04_XA1_UNC": "test",
    "rubo_0015_RF_GE_DRS_uncompressed": "test",
}
PARTS = ("all", "fit", "test")
#: Frames taken from a real multi-frame run (evenly spaced).
REAL_FRAMES_PER_RUN = 12
#: Environment variable naming the folder of real DICOM samples (with MANIFEST.tsv).
SAMPLES_ENV = "TAVISEG_DICOM_SAMPLES"


def default_samples_dir() -> Path | None:
    """``$TAVISEG_DICOM_SAMPLES`` when set (the folder of real samples with MANIFEST.tsv), else None."""
    env = os.environ.get(SAMPLES_ENV)
    return Path(env) if env else None


def missing_real_samples(samples_dir: str | Path, part: str = "all") -> list[Path]:
    """The files of :data:`REAL_SAMPLES` (of ``part``) that ``samples_dir`` lacks."""
    return [Path(samples_dir) / f"{stem}.dcm" for stem, p in REAL_SAMPLES.items()
            if part in ("all", p) and not (Path(samples_dir) / f"{stem}.dcm").is_file()]


@dataclass(frozen=True)
class StressSpec:
    """What to build: seed, part, phantom size and preset, runs per corruption, frames per run."""

    seed: int = 0
    part: str = "all"
    size: int = 256
    preset: str = "demo"
    runs_per_corruption: int = 3
    frames_per_run: int = 4

    def __post_init__(self) -> None:
        if self.part not in PARTS:
            raise QualityError(f"part must be one of {', '.join(PARTS)}, got {self.part!r}")
        if self.runs_per_corruption < 1 or self.frames_per_run < 1:
            raise QualityError("runs_per_corruption and frames_per_run must be >= 1")


def _phantom_run(spec: StressSpec, corruption_index: int, run: int, *, no_contrast: bool):
    """Frames, masks and spacing of one held-out phantom run."""
    from tavidata.phantom import load_phantom_preset
    from tavidata.phantom.case import sample_patient, sample_run
    from tavidata.phantom.imaging import build_scene
    from tavidata.phantom.run import render_frames

    # pre_injection 0: the corruptions act on frames with a contrast-filled root ("no_contrast" is the
    # stage without it)
    config = dataclasses.replace(load_phantom_preset(spec.preset), size=spec.size, spacing_mm=None,
                                 pre_injection=0.0)
    part_salt = PARTS.index(spec.part)
    seed = int(np.random.SeedSequence([0x57E55, spec.seed, part_salt, corruption_index, run])
               .generate_state(1, dtype=np.uint32)[0])
    if config.generator == "ct":  # the CT generator's own run, rendered a minute early for "no contrast"
        from tavidata.phantom.ct.run import generate_ct_run

        ct_run = generate_ct_run(config, seed, 0, n_frames=spec.frames_per_run,
                                 time_shift_s=-60.0 if no_contrast else 0.0)
        return list(ct_run.frames), list(ct_run.masks), float(ct_run.spacing_mm[0])
    patient = sample_patient(np.random.default_rng([seed, 1]), config)
    rng = np.random.default_rng([seed, 2, 0])
    case = sample_run(rng, config, patient, n_frames=spec.frames_per_run)
    if no_contrast:  # the same scene before the injection: no contrast anywhere
        timing = dataclasses.replace(case.timing, frame_times=tuple(t - 60.0 for t in case.timing.frame_times))
        case = dataclasses.replace(case, timing=timing)
    scene = build_scene(rng, case, patient)
    # render_frames empties the masks of frames without a contrast-filled root ("no_contrast")
    frames, masks = render_frames(scene, case.timing.frame_times, len(case.timing.frame_times), scene.shape,
                                  np.random.default_rng([seed, 3, 0]))
    return list(frames), list(masks), config.pixel_spacing_mm


def corrupt(image: np.ndarray, mask: np.ndarray, kind: str, severity: float,
            rng: np.random.Generator, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """Apply corruption ``kind`` at ``severity`` (0 mild .. 1 heavy) to a uint8 frame and its mask.

    ``params`` carries the per-run choices (rotation, crop window), drawn once per run.

    Raises:
        QualityError: unknown ``kind``.
    """
    img = image.astype(np.float32)
    h, w = img.shape
    if kind in ("clean", "no_contrast"):
        out = img
    elif kind == "blur":
        out = cv2.GaussianBlur(img, (0, 0), (0.006 + 0.03 * severity) * min(h, w))
    elif kind == "noise":
        out = img + rng.normal(0.0, 12.0 + 50.0 * severity, img.shape)
    elif kind == "low_contrast":
        k = 0.5 - 0.42 * severity
        out = img.mean() + k * (img - img.mean())
    elif kind == "wrong_window":
        lo = np.percentile(img, 40 + 45 * severity)
        out = (img - lo) / max(1.0, 255.0 - lo) * 255.0
    elif kind == "inverted":
        out = 255.0 - img
    elif kind == "rotated":
        k = params["quarter_turns"]
        return np.ascontiguousarray(np.rot90(image, k)), np.ascontiguousarray(np.rot90(mask, k))
    elif kind == "flipped":
        return np.ascontiguousarray(image[::-1]), np.ascontiguousarray(mask[::-1])
    elif kind == "cropped":
        y0, x0, side = params["crop"]
        sub = image[y0:y0 + side, x0:x0 + side]
        msub = mask[y0:y0 + side, x0:x0 + side].astype(np.uint8)
        return (cv2.resize(sub, (w, h), interpolation=cv2.INTER_LINEAR),
                cv2.resize(msub, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool))
    else:
        raise QualityError(f"unknown corruption {kind!r}; valid: {', '.join(CORRUPTIONS)}")
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), mask


def _real_frames(samples_dir: Path, stem: str) -> list[np.ndarray]:
    """Evenly spaced frames of one real sample, as uint8 (windowed from its bit depth)."""
    from segmentation.dicom.reader import open_run
    from segmentation.inference.preprocess import normalize_frames

    run = open_run(samples_dir / f"{stem}.dcm")
    n = run.number_of_frames
    picks = sorted(set(np.linspace(0, n - 1, min(n, REAL_FRAMES_PER_RUN)).round().astype(int).tolist()))
    out = []
    for index, frame in run.iter_frames():
        if index in picks:
            out.append((normalize_frames(frame, bits_stored=run.bits_stored) * 255.0 + 0.5).astype(np.uint8))
    return out


def _real_views(frame: np.ndarray) -> list[tuple[str, np.ndarray]]:
    lo, hi = np.percentile(frame, [2, 98])
    stretched = np.clip((frame.astype(np.float32) - lo) / max(1.0, hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return [("as-is", frame), ("hflip", np.ascontiguousarray(frame[:, ::-1])),
            ("rot90", np.ascontiguousarray(np.rot90(frame))), ("stretched", stretched)]


def build_stress_set(out_dir: str | Path, spec: StressSpec, *, samples_dir: str | Path | None,
                     overwrite: bool = False) -> Dataset:
    """Write the stress set (module docstring) into ``out_dir``.

    Args:
        out_dir: New data-set folder.
        spec: Seed, part and sizes.
        samples_dir: Folder of the real DICOM samples (with MANIFEST.tsv); None: phantom only
            (logged).
        overwrite: Replace a data set already there.

    Returns:
        The written data set.

    Raises:
        DatasetError: a data set exists there and ``overwrite`` is false.
        QualityError: a real sample of the selected part is missing from ``samples_dir``.
    """
    out = Path(out_dir)
    counts: dict[str, int] = {}
    meta = {"stress": {**dataclasses.asdict(spec), "corruptions": list(CORRUPTIONS),
                       "no_root": sorted(NO_ROOT), "real_samples": {}}}
    with DatasetWriter(out, name=f"qc-stress-{spec.part}-seed{spec.seed}", meta=meta, overwrite=overwrite) as writer:
        for ci, kind in enumerate(CORRUPTIONS):
            for r in range(spec.runs_per_corruption):
                frames, masks, spacing = _phantom_run(spec, ci, r, no_contrast=kind == "no_contrast")
                rng = np.random.default_rng([spec.seed, PARTS.index(spec.part), ci, r, 99])
                severity = float(rng.uniform(0.0, 1.0))
                side = int(spec.size * rng.uniform(0.35, 0.6))
                params = {"quarter_turns": int(rng.integers(1, 4)),
                          "crop": (int(rng.integers(0, spec.size - side)),
                                   int(rng.integers(0, spec.size - side)), side)}
                for i, (f, m) in enumerate(zip(frames, masks)):
                    img, msk = corrupt(f, m, kind, severity, rng, params)
                    sp = spacing * side / spec.size if kind == "cropped" else spacing
                    writer.add(f"S{kind.replace('_', '')}-{r}", f"sev{round(100 * severity):03d}", i, img, msk,
                               spacing_mm=(sp, sp), stage=kind)
                counts[kind] = counts.get(kind, 0) + len(frames)
        if samples_dir is None:
            logger.warning("no DICOM samples folder ($%s unset): the stress set holds phantom frames only", SAMPLES_ENV)
        else:
            missing = missing_real_samples(samples_dir, spec.part)
            if missing:
                raise QualityError(f"{missing[0]}: real sample missing from the samples folder")
            for stem, part in REAL_SAMPLES.items():
                if spec.part not in ("all", part):
                    continue
                frames = _real_frames(Path(samples_dir), stem)
                n = 0
                for i, frame in enumerate(frames):
                    for view, image in _real_views(frame):
                        # spacing unknown for these samples: the writer needs one; 0.39 mm is nominal
                        writer.add(f"R{stem.replace('_', '')}", view, i, image, np.zeros(image.shape, bool),
                                   stage="real")
                        n += 1
                meta["stress"]["real_samples"][stem] = n
                counts["real"] = counts.get("real", 0) + n
        writer.meta["stress"]["frames"] = counts
    logger.info("stress set %s (%s, seed %d): %s", out, spec.part, spec.seed, counts)
    return Dataset.load(out)
