"""Every random choice of a v2 (CT) run, drawn once: view, geometry, physics, contrast, devices.

:func:`sample_ct_run` draws a :class:`CTRunCase` from the run's generator. Two sets of ranges:
the realistic one (what TAVI aortography looks like: coplanar views LAO 0-35 and
cranial/caudal -20..20, SID 900-1200 mm, SOD 600-800 mm, 70-100 kVp, 9-16 mg/ml iodine...)
and, for the runs picked for domain randomisation (``PhantomConfig.domain_randomisation``), a
wide one that goes past it on purpose (any view LAO -30..60 / cranial -35..35, faint to dense
contrast, organ attenuation +-40 %, strong or no edge enhancement, heavy noise, odd tone
curves, more distractors), so that a model has to rely on the root's shape and context.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from tavidata.phantom.case import Timing, _pick, sample_timing
from tavidata.phantom.config import STAGES, PhantomConfig
from tavidata.phantom.ct.physics import ChainSettings
from tavidata.phantom.devices import DeviceOptions

logger = logging.getLogger(__name__)

#: Label groups whose attenuation is scaled per run (names of structures.csv, by prefix).
ORGAN_GROUPS = ("lung", "heart", "aorta", "vertebrae", "rib", "sternum", "liver", "scapula", "clavicula",
                "humerus", "autochthon", "esophagus", "trachea", "costal")


@dataclass(frozen=True)
class CTRunCase:
    """Settings of one v2 run (lengths in mm unless named ``_px``: pixels of the output frame)."""

    stage: str
    valve: str
    difficulty: str
    wide: bool
    size: int
    lao_deg: float
    cranial_deg: float
    sid_mm: float
    sod_mm: float
    detector_fov_mm: float
    annulus_col: float          # where the annulus lands in the frame (fractions of the width/height)
    annulus_row: float
    kvp: float
    bone_excess: float
    organ_scale: dict
    iodine_mg_ml: float
    texture: float              # mottling of the contrast filling
    regurgitation: float        # reflux into the left ventricle, fraction of the root's iodine
    rest_fraction: float        # iodine reaching the arch and descending aorta
    coronary: float             # iodine reaching the coronary arteries
    timing: Timing
    cardiac_mm: float
    cardiac_swing_mm: float
    resp_mm: float
    affine: tuple               # (sx, sy, sz) volume scaling about the annulus
    elastic_mm: float           # amplitude of the smooth elastic deformation
    elastic_cell_mm: float
    clutter_lung: float         # lung markings (line integral of the ridges)
    clutter_soft: float         # soft-tissue mottling (line integral)
    clutter_cell_mm: float      # spacing of the finest markings
    root_scale: float           # radial scaling of the root region about its centre line
    shutters: tuple             # left, right, top, bottom (fractions of the frame)
    wedge: float                # strength of a wedge filter (0 none)
    chain: ChainSettings
    devices: DeviceOptions

    def describe(self) -> dict:
        """JSON-able summary for the run's meta."""
        out = {k: v for k, v in asdict(self).items() if k not in ("timing", "chain", "devices")}
        out.update({f"chain_{k}": v for k, v in asdict(self.chain).items()})
        out["frame_times_s"] = list(self.timing.frame_times)
        out["frame_time_ms"] = self.timing.frame_time_ms
        out["heart_rate_bpm"] = self.timing.heart_rate_bpm
        out["affine"] = list(self.affine)
        out["shutters"] = list(self.shutters)
        out["jpeg_quality"] = self.chain.jpeg_quality
        return out


def _u(rng: np.random.Generator, wide: bool, real: tuple[float, float], far: tuple[float, float]) -> float:
    lo, hi = far if wide else real
    return float(rng.uniform(lo, hi))


def _grey_targets(rng: np.random.Generator, wide: bool) -> tuple:
    """Grey levels of the 1st, 5th, 50th, 95th and 99th percentiles of a frame (real TAVI frames:
    about 52, 75, 131, 193, 226)."""
    if wide:
        t = (rng.uniform(0, 80), rng.uniform(20, 110), rng.uniform(95, 165), rng.uniform(160, 235),
             rng.uniform(190, 255))
    else:
        shift = rng.normal(0.0, 4.0)
        t = (rng.uniform(42, 62), rng.uniform(66, 84), rng.uniform(118, 134) + shift, rng.uniform(184, 202) + shift,
             rng.uniform(213, 232))
    return tuple(round(float(v), 2) for v in np.maximum.accumulate(np.asarray(t) + np.arange(5) * 1.0))


def sample_ct_run(rng: np.random.Generator, config: PhantomConfig, *, valve: str, n_frames: int,
                  stage: str | None = None, sternal_wires: int = 0) -> CTRunCase:
    """Draw the settings of one v2 run.

    Args:
        rng: The run's generator.
        config: Cohort settings (size, cine rate, stride, mixes, domain_randomisation).
        valve: The patient's valve design.
        n_frames: Frames of the run.
        stage: Procedural stage (drawn from the mix when None).
        sternal_wires: The patient's sternal wires (0: none).

    Raises:
        ValueError: unknown stage.
    """
    if stage is None:
        stage = _pick(rng, config.stages.weights())
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; valid stages: {', '.join(STAGES)}")
    difficulty = _pick(rng, config.difficulty.weights())
    hard, easy = difficulty == "hard", difficulty == "easy"
    wide = bool(rng.random() < config.domain_randomisation)
    k = config.size / 1000.0

    # --- view and geometry
    lao = _u(rng, wide, (0.0, 35.0), (-30.0, 60.0))
    cranial = _u(rng, wide, (-20.0, 20.0), (-35.0, 35.0))
    sid = float(rng.uniform(900.0, 1200.0))
    sod = float(min(rng.uniform(600.0, 800.0), sid - 150.0))
    fov_iso = _u(rng, wide, (120.0, 165.0), (100.0, 240.0))
    detector_fov = fov_iso * sid / sod

    # --- timing and contrast (v1's bolus model)
    timing = sample_timing(rng, config, n_frames, hard=hard)
    iodine = {"easy": (16.0, 26.0), "medium": (12.0, 20.0), "hard": (8.0, 14.0)}[difficulty]
    iodine_mg = _u(rng, wide, iodine, (2.0, 22.0))
    reflux_p = [0.25, 0.3, 0.3, 0.15] if hard else [0.45, 0.3, 0.18, 0.07]
    regurgitation = float(rng.choice([0.0, 0.1, 0.25, 0.45], p=reflux_p))

    # --- physics and the image chain
    kvp = float(rng.uniform(70.0, 100.0))
    photons = {"easy": (5000.0, 12000.0), "medium": (3000.0, 7000.0), "hard": (1500.0, 4000.0)}[difficulty]
    organ_scale = {g: round(_u(rng, wide, (0.9, 1.1), (0.6, 1.4)), 4) for g in ORGAN_GROUPS}
    chain = ChainSettings(
        photons=_u(rng, wide, photons, (200.0, 8000.0)),
        electronic=_u(rng, wide, (0.002, 0.006), (0.0, 0.02)),
        noise_corr_px=float(rng.uniform(0.3, 0.8) * k),
        scatter_fraction=_u(rng, wide, (0.2, 0.6), (0.0, 1.0)),
        scatter_sigma_px=float(rng.uniform(40.0, 90.0) * k),
        focal_blur_px=float(rng.uniform(0.3, 0.9) * k),
        detector_blur_px=float(rng.uniform(0.3, 0.7) * k),
        heel=float(rng.uniform(0.0, 0.15)),
        heel_angle=float(rng.uniform(0.0, 2 * np.pi)),
        drc=_u(rng, wide, (0.7, 0.95), (0.0, 0.98)),
        drc_sigma_px=float(rng.uniform(60.0, 160.0) * k),
        enhance_mid=_u(rng, wide, (2.8, 4.6), (0.0, 7.0)),
        display_noise=_u(rng, wide, (0.9, 1.6), (0.3, 5.0)),
        display_noise_px=float(rng.uniform(0.3, 0.7) * k),
        enhance_mid_px=float(rng.uniform(8.0, 24.0) * k),
        enhance_fine=_u(rng, wide, (0.3, 0.9), (0.0, 2.0)),
        enhance_fine_px=float(max(0.8, rng.uniform(1.5, 3.0) * k)),
        grey_targets=_grey_targets(rng, wide),
        jpeg_quality=int(rng.integers(75, 96)) if rng.random() < 0.25 else 0,
    )
    shutters = [float(rng.uniform(0.0, 0.08)) if rng.random() < (0.5 if wide else 0.12) else 0.0 for _ in range(4)]
    if not wide and rng.random() < 0.5:  # the upper collimator blade just inside the field
        shutters[2] = float(rng.uniform(0.003, 0.035))
    shutters = tuple(shutters)
    ecg = int(min(4, rng.poisson(1.6 if hard else 0.9)))
    devices = DeviceOptions(
        stage=stage, valve=valve, density=_u(rng, wide, (0.8, 1.2), (0.4, 1.8)),
        pigtail=bool(rng.random() < (1.0 if stage in ("overview", "control") else 0.9)),
        guide_wire=bool(rng.random() < {"overview": 0.35, "control": 0.6}.get(stage, 1.0)),
        delivery_in_control=bool(rng.random() < 0.3),
        pacing_lead=bool(rng.random() < 0.6),
        ecg_electrodes=ecg, sternal_wires=sternal_wires,
        deploy_fraction=float(rng.uniform(0.25, 0.8)),
        view_obliquity=0.0,
    )
    return CTRunCase(
        stage=stage, valve=valve, difficulty=difficulty, wide=wide, size=config.size,
        lao_deg=lao, cranial_deg=cranial, sid_mm=sid, sod_mm=sod, detector_fov_mm=float(detector_fov),
        annulus_col=_u(rng, wide, (0.28, 0.44), (0.22, 0.7)),
        annulus_row=_u(rng, wide, (0.44, 0.58), (0.35, 0.75)),
        kvp=kvp, bone_excess=float(rng.uniform(0.3, 0.8) * (100.0 - kvp + 40.0) / 55.0),
        organ_scale=organ_scale, iodine_mg_ml=iodine_mg,
        texture=_u(rng, wide, (0.3, 0.6) if not easy else (0.25, 0.45), (0.0, 0.8)),
        regurgitation=regurgitation,
        rest_fraction=float(rng.uniform(0.2, 0.9)) if rng.random() < 0.7 else 0.0,
        coronary=float(rng.uniform(0.4, 0.9)) if rng.random() < 0.6 else 0.0,
        timing=timing,
        cardiac_mm=float(rng.uniform(3.0, 9.0)), cardiac_swing_mm=float(rng.uniform(0.5, 3.0)),
        resp_mm=float(rng.uniform(0.0, 8.0 if hard else 5.0)),
        affine=tuple(round(_u(rng, wide, (0.92, 1.08), (0.8, 1.2)), 4) for _ in range(3)),
        elastic_mm=_u(rng, wide, (0.0, 6.0), (0.0, 12.0)),
        elastic_cell_mm=float(rng.uniform(50.0, 90.0)),
        clutter_lung=_u(rng, wide, (0.13, 0.28), (0.0, 0.5)),
        clutter_soft=_u(rng, wide, (0.06, 0.13), (0.0, 0.24)),
        clutter_cell_mm=float(rng.uniform(2.2, 3.6)),
        root_scale=_u(rng, wide, (0.78, 1.0), (0.7, 1.4)),
        shutters=shutters,
        wedge=float(rng.uniform(0.1, 0.3)) if rng.random() < 0.15 else 0.0,
        chain=chain, devices=devices,
    )


__all__ = ["ORGAN_GROUPS", "CTRunCase", "sample_ct_run"]
