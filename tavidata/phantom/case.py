"""What one patient and one cine run look like: every random choice of the phantom, drawn once.

:func:`sample_patient` draws what stays with a patient across runs (root dimensions, valve
design, sternal wires, calcification); :func:`sample_run` draws the run: difficulty, stage,
C-arm view and geometry, timing, contrast bolus, motion, noise and display settings, the body
and device options. Everything comes from the generators passed in, so a seed fixes the bytes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from tavidata.phantom.anatomy import RootSizes, sample_root_sizes
from tavidata.phantom.background import BodyOptions
from tavidata.phantom.config import STAGES, PhantomConfig
from tavidata.phantom.devices import DeviceOptions

logger = logging.getLogger(__name__)


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.asarray([weights[n] for n in names], np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


@dataclass(frozen=True)
class PatientProfile:
    """What a patient keeps across runs."""

    root: RootSizes
    valve: str
    sternal_wires: int
    calcium: float
    arch_side: float
    apex_side: float
    lung_level: float
    pacing_lead: bool


def sample_patient(rng: np.random.Generator, config: PhantomConfig) -> PatientProfile:
    """Draw a patient's lasting features."""
    arch = 1.0 if rng.random() < 0.75 else -1.0
    return PatientProfile(
        root=sample_root_sizes(rng),
        valve=_pick(rng, config.valves.weights()),
        sternal_wires=int(rng.integers(4, 8)) if rng.random() < 0.12 else 0,
        calcium=float(rng.uniform(0.0, 1.5)),
        arch_side=arch,
        apex_side=arch if rng.random() < 0.7 else -arch,
        lung_level=float(rng.uniform(165.0, 200.0)),
        pacing_lead=bool(rng.random() < 0.6),
    )


def stages_for_patient(rng: np.random.Generator, config: PhantomConfig, runs: int) -> list[str]:
    """Stages of a patient's runs, drawn from the mix and put in procedural order."""
    drawn = [_pick(rng, config.stages.weights()) for _ in range(runs)]
    return sorted(drawn, key=STAGES.index)


@dataclass(frozen=True)
class Timing:
    """Frame times and the contrast bolus (seconds; fills are fractions of the peak)."""

    frame_times: tuple[float, ...]
    frame_time_ms: float
    rise: float
    injection_end: float
    washout: float
    lag_ascending: float
    systolic_washout: float
    heart_rate_bpm: float
    cardiac_phase0: float
    resp_period: float
    resp_phase0: float

    def fill(self, t: np.ndarray | float) -> np.ndarray:
        """Root contrast fill (0..1) at time(s) ``t`` after the start of the injection."""
        t = np.asarray(t, np.float64)
        rise = 1.0 - np.exp(-np.maximum(t, 0.0) / self.rise)
        wash = np.exp(-np.maximum(t - self.injection_end, 0.0) / self.washout)
        return rise * wash

    def cardiac(self, t: np.ndarray | float) -> np.ndarray:
        """Cardiac cycle phase in [0, 1)."""
        return np.mod(np.asarray(t) * self.heart_rate_bpm / 60.0 + self.cardiac_phase0, 1.0)

    def systole(self, t: np.ndarray | float) -> np.ndarray:
        """Systolic activity (0..1): ejection in the first ~35 % of the cycle."""
        ph = self.cardiac(t)
        return np.where(ph < 0.35, np.sin(np.pi * ph / 0.35) ** 2, 0.0)

    def breathing(self, t: np.ndarray | float) -> np.ndarray:
        """Respiratory excursion (-1..1)."""
        return np.sin(2 * np.pi * (np.asarray(t) / self.resp_period + self.resp_phase0))


@dataclass(frozen=True)
class RunCase:
    """Every setting of one run (lengths in px of this run's frame, levels in grey)."""

    stage: str
    valve: str
    difficulty: str
    size: int
    ppm: float
    zoom: float
    lao_deg: float
    cranial_deg: float
    sid_mm: float
    sod_mm: float
    kvp: float
    timing: Timing
    contrast: float
    contrast_texture: float
    regurgitation: float
    coronary_gain: float
    heart_shadow: float
    calcium: float
    cardiac_mm: float
    cardiac_swing_mm: float
    contraction: float
    resp_mm: float
    resp_angle: float
    noise: float
    noise_dark_gain: float
    noise_corr_px: float
    blur_px: float
    unsharp: float
    unsharp_px: float
    jpeg_quality: int
    black: float
    white: float
    gamma: float
    body: BodyOptions
    devices: DeviceOptions

    def describe(self) -> dict:
        """JSON-able summary written into the run's meta."""
        out = {k: v for k, v in asdict(self).items() if k not in ("timing", "body", "devices")}
        out["frame_times_s"] = list(self.timing.frame_times)
        out["frame_time_ms"] = self.timing.frame_time_ms
        out["heart_rate_bpm"] = self.timing.heart_rate_bpm
        out["shutters"] = list(self.body.shutters)
        return out


def sample_timing(rng: np.random.Generator, config: PhantomConfig, n_frames: int, *, hard: bool) -> Timing:
    """Frame times and the contrast bolus of one run (shared by the v1 and the CT generator;
    the draws and their order are part of the seeded output)."""
    stride = int(rng.integers(config.frame_stride[0], config.frame_stride[1] + 1))
    frame_dt = stride / config.cine_rate
    rise = float(rng.uniform(0.2, 0.5))
    lag = float(rng.uniform(0.05, 0.2))
    t0 = lag + rise * float(rng.uniform(0.8, 2.0) if hard else rng.uniform(1.2, 2.5))
    times = t0 + frame_dt * np.arange(n_frames)
    washout = float(rng.uniform(0.6, 1.4))
    injection_end = float(max(times[-1] - washout * (rng.uniform(0.0, 1.0) if hard else rng.uniform(0.0, 0.55)),
                              t0 + rng.uniform(0.8, 2.0)))
    return Timing(
        frame_times=tuple(float(t) for t in times), frame_time_ms=1000.0 / config.cine_rate * stride,
        rise=rise, injection_end=injection_end, washout=washout, lag_ascending=lag,
        systolic_washout=float(rng.uniform(0.03, 0.2)), heart_rate_bpm=float(rng.uniform(55.0, 100.0)),
        cardiac_phase0=float(rng.random()), resp_period=float(rng.uniform(3.0, 5.5)), resp_phase0=float(rng.random()),
    )


def sample_run(rng: np.random.Generator, config: PhantomConfig, patient: PatientProfile, *, n_frames: int,
               stage: str | None = None) -> RunCase:
    """Draw the settings of one run of ``patient``.

    Args:
        rng: The run's random generator.
        config: Cohort settings (size, spacing, cine rate, stride, mixes).
        patient: The patient's lasting features.
        n_frames: Frames of the run.
        stage: Procedural stage (drawn from the mix when None).

    Raises:
        ValueError: unknown stage (the message lists the valid ones).
    """
    if stage is None:
        stage = _pick(rng, config.stages.weights())
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; valid stages: {', '.join(STAGES)}")
    difficulty = _pick(rng, config.difficulty.weights())
    hard = difficulty == "hard"
    size = config.size
    zoom = float(rng.uniform(0.88, 1.15))
    ppm = zoom / config.pixel_spacing_mm
    k = size / 1000.0

    # --- timing and contrast bolus
    timing = sample_timing(rng, config, n_frames, hard=hard)
    contrast = {"easy": rng.uniform(38.0, 52.0), "medium": rng.uniform(30.0, 43.0),
                "hard": rng.uniform(24.0, 35.0)}[difficulty]
    regurgitation = float(rng.choice([0.0, 0.1, 0.25, 0.45],
                                     p=[0.25, 0.3, 0.3, 0.15] if hard else [0.45, 0.3, 0.18, 0.07]))
    noise = {"easy": rng.uniform(1.8, 3.2), "medium": rng.uniform(2.8, 4.6), "hard": rng.uniform(4.0, 7.0)}[difficulty]

    lao = float(rng.uniform(-15.0, 35.0))
    cranial = float(rng.uniform(-25.0, 20.0))
    sid = float(rng.uniform(980.0, 1200.0))
    magnification = float(rng.uniform(1.25, 1.5))

    # --- body
    spine_x = 0.5 + lao / 110.0 * rng.uniform(0.5, 1.0) + rng.normal(0.0, 0.06)
    if hard and rng.random() < 0.6:
        spine_x = 0.5 + rng.normal(0.0, 0.05)  # spine behind the root (annulus x is 0.36-0.64 of the width)
    spine_density = {"easy": rng.uniform(6.0, 12.0), "medium": rng.uniform(8.0, 16.0),
                     "hard": rng.uniform(10.0, 18.0)}[difficulty]
    shutters = (
        float(rng.uniform(0.0, 0.1)) if rng.random() < 0.7 else 0.0,
        float(rng.uniform(0.0, 0.1)) if rng.random() < 0.7 else 0.0,
        float(rng.uniform(0.0, 0.04)) if rng.random() < 0.1 else 0.0,
        float(rng.uniform(0.0, 0.08)) if rng.random() < 0.5 else 0.0,
    )
    body = BodyOptions(
        lung_level=patient.lung_level + float(rng.normal(0.0, 5.0)),
        mediastinum=float(rng.uniform(15.0, 35.0)),
        spine_x=float(np.clip(spine_x, 0.18, 0.82)),
        spine_tilt=float(rng.normal(0.0, 0.05)),
        spine_density=float(spine_density),
        rib_density=float(rng.uniform(4.0, 10.0)),
        rib_tilt=float(np.deg2rad(cranial * 0.5) + rng.normal(0.0, 0.05)),
        diaphragm_y=float(rng.uniform(0.78, 1.2)),
        trachea=bool(rng.random() < 0.5),
        shutters=shutters,
        round_shutter=float(rng.uniform(0.95, 1.25)) if rng.random() < 0.15 else 0.0,
        wedge=float(rng.uniform(0.12, 0.3)) if rng.random() < 0.15 else 0.0,
        vignetting=float(rng.uniform(0.0, 0.2)),
        floor=float(rng.uniform(10.0, 50.0)),
    )
    ecg = int(min(4, rng.poisson(1.6 if hard else 0.9)))
    devices = DeviceOptions(
        stage=stage,
        valve=patient.valve,
        density=float(rng.uniform(0.8, 1.2)),
        pigtail=bool(rng.random() < (1.0 if stage in ("overview", "control") else 0.9)),
        guide_wire=bool(rng.random() < {"overview": 0.35, "control": 0.6}.get(stage, 1.0)),
        delivery_in_control=bool(rng.random() < 0.3),
        pacing_lead=patient.pacing_lead or bool(rng.random() < 0.2),
        ecg_electrodes=ecg,
        sternal_wires=patient.sternal_wires,
        deploy_fraction=float(rng.uniform(0.25, 0.8)),
        view_obliquity=float(rng.uniform(0.0, 0.25)),
    )
    return RunCase(
        stage=stage, valve=patient.valve, difficulty=difficulty, size=size, ppm=float(ppm), zoom=zoom,
        lao_deg=lao, cranial_deg=cranial, sid_mm=sid, sod_mm=sid / magnification,
        kvp=float(rng.uniform(70.0, 100.0)), timing=timing,
        contrast=float(contrast), contrast_texture=float(rng.uniform(0.05, 0.2 if hard else 0.12)),
        regurgitation=regurgitation, coronary_gain=float(rng.uniform(0.6, 1.0)),
        heart_shadow=float(rng.uniform(15.0, 35.0)), calcium=patient.calcium,
        cardiac_mm=float(rng.uniform(3.0, 9.0)), cardiac_swing_mm=float(rng.uniform(0.5, 3.0)),
        contraction=float(rng.uniform(0.01, 0.04)),
        resp_mm=float(rng.uniform(0.0, 8.0 if hard else 5.0)), resp_angle=float(rng.normal(np.pi / 2, 0.3)),
        noise=float(noise), noise_dark_gain=float(rng.uniform(0.4, 1.0)),
        noise_corr_px=float(max(0.35, rng.uniform(0.5, 1.1) * k)),
        blur_px=float(max(0.3, rng.uniform(0.6, 2.0) * k)),
        unsharp=float(rng.uniform(0.0, 0.7)), unsharp_px=float(rng.uniform(6.0, 16.0) * k + 1.0),
        jpeg_quality=int(rng.integers(75, 96)) if rng.random() < 0.25 else 0,
        black=float(rng.uniform(-10.0, 20.0)), white=float(rng.uniform(240.0, 280.0)),
        gamma=float(rng.uniform(0.8, 1.2)),
        body=body, devices=devices,
    )


__all__ = ["PatientProfile", "RunCase", "Timing", "sample_patient", "sample_run", "stages_for_patient"]
