"""Typed settings of the phantom and its presets (``conf/phantom.yaml``).

A preset is one top-level section of ``conf/phantom.yaml`` loaded into :class:`PhantomConfig`
by the project's one loader (:func:`tavicore.config.load_config`), so an unknown or mistyped key
is an error that names it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tavicore.config import CONF_DIR, ConfigError, load_config, read_yaml, setting
from tavidata.format import PAPER_PIXEL_SPACING_MM

logger = logging.getLogger(__name__)

#: The presets file.
PRESETS_FILE = CONF_DIR / "phantom.yaml"
#: Procedural stages, in the order they happen during an implantation.
STAGES = ("overview", "positioning", "deployment", "control")
#: Self-expanding valve designs drawn by the phantom.
VALVES = ("evolut", "acurate")
#: Difficulty classes of a run.
DIFFICULTIES = ("easy", "medium", "hard")
#: Phantom generators: the parametric 2D phantom (v1) and the CT-based DRR phantom (v2).
GENERATORS = ("v1", "ct")
#: Width of the field of view in mm at the paper's calibration (1000 px x 0.390625 mm).
FIELD_OF_VIEW_MM = 1000 * PAPER_PIXEL_SPACING_MM


def _check_weights(owner: str, weights: dict[str, float]) -> None:
    if sum(weights.values()) <= 0:
        raise ValueError(f"{owner}: the weights {weights} must not all be zero")


@dataclass(frozen=True)
class DifficultyMix:
    """Relative frequency of easy / medium / hard runs (weights, normalised when drawn).

    Easy runs have strong contrast, little noise and few devices; hard runs have faint or partial
    contrast, more noise, more clutter over the root and the spine behind it.
    """

    easy: float = setting(0.3, ge=0.0, doc="weight of easy runs")
    medium: float = setting(0.45, ge=0.0, doc="weight of medium runs")
    hard: float = setting(0.25, ge=0.0, doc="weight of hard runs")

    def __post_init__(self) -> None:
        _check_weights("difficulty", self.weights())

    def weights(self) -> dict[str, float]:
        """Name -> weight."""
        return {"easy": self.easy, "medium": self.medium, "hard": self.hard}


@dataclass(frozen=True)
class StageMix:
    """Relative frequency of the procedural stages of a run (weights)."""

    overview: float = setting(0.3, ge=0.0, doc="aortography before the valve is brought in")
    positioning: float = setting(0.25, ge=0.0, doc="delivery system with the loaded capsule at the annulus")
    deployment: float = setting(0.2, ge=0.0, doc="valve frame partly released from the capsule")
    control: float = setting(0.25, ge=0.0, doc="control aortography after implantation")

    def __post_init__(self) -> None:
        _check_weights("stages", self.weights())

    def weights(self) -> dict[str, float]:
        """Stage -> weight."""
        return {s: getattr(self, s) for s in STAGES}


@dataclass(frozen=True)
class ValveMix:
    """Relative frequency of the valve designs (per patient)."""

    evolut: float = setting(0.5, ge=0.0, doc="CoreValve Evolut R look: tall frame, flared outflow")
    acurate: float = setting(0.5, ge=0.0, doc="ACURATE neo look: crowns and stabilisation arches")

    def __post_init__(self) -> None:
        _check_weights("valves", self.weights())

    def weights(self) -> dict[str, float]:
        """Valve -> weight."""
        return {v: getattr(self, v) for v in VALVES}


@dataclass(frozen=True)
class PhantomConfig:
    """What cohort to generate: how many patients, runs and frames, at what size, how hard.

    ``frames_per_run`` is an inclusive (min, max) range drawn per run; with ``total_frames`` the
    per-run counts are adjusted (within the range) so that the cohort has exactly that many.
    ``spacing_mm`` None keeps the paper's field of view: 0.390625 mm x 1000 / size.
    """

    name: str = setting("custom", doc="cohort name written into dataset.json")
    patients: int = setting(4, ge=1, le=100000, doc="number of patients")
    runs_per_patient: int = setting(1, ge=1, le=50, doc="cine runs per patient")
    frames_per_run: tuple[int, int] = setting((4, 4), ge=1, le=1000, doc="frames per run (min, max)")
    total_frames: int | None = setting(None, ge=1, doc="exact number of frames of the cohort (optional)")
    size: int = setting(1000, ge=64, le=2048, doc="frame size in pixels (square)")
    spacing_mm: float | None = setting(None, gt=0.0, le=10.0, doc="pixel spacing; null: 390.625 / size")
    seed: int = setting(0, ge=0, doc="master seed: same seed, same bytes")
    cine_rate: float = setting(15.0, gt=0.0, le=60.0, doc="acquisition frame rate (frames/s)")
    frame_stride: tuple[int, int] = setting((1, 3), ge=1, le=60, doc="cine frames between kept frames (min, max)")
    difficulty: DifficultyMix = field(default_factory=DifficultyMix)
    stages: StageMix = field(default_factory=StageMix)
    valves: ValveMix = field(default_factory=ValveMix)
    generator: Literal["v1", "ct"] = setting("v1", doc="v1: parametric 2D phantom; ct: DRR of a real chest CT (v2)")
    ct_dir: str | None = setting(None, doc="CT folder (ct generator); null: $TAVISEG_CT_DIR or ~/.cache/taviseg/ct")
    ct_voxel_mm: float = setting(1.5, ge=0.5, le=4.0, doc="isotropic voxel the CT is resampled to (ct generator)")
    projection_size: int = setting(256, ge=32, le=2048, doc="grid the CT is projected on, upsampled to size (ct)")
    domain_randomisation: float = setting(0.0, ge=0.0, le=1.0,
                                          doc="fraction of runs drawn past the realistic ranges (ct generator)")
    pre_injection: float = setting(0.0, ge=0.0, le=1.0,
                                   doc="fraction of runs whose cine starts before the contrast arrives "
                                       "(frames without a contrast-filled root get empty masks)")

    def __post_init__(self) -> None:
        lo, hi = self.frames_per_run
        if lo > hi:
            raise ValueError(f"frames_per_run: min {lo} is larger than max {hi}")
        if self.frame_stride[0] > self.frame_stride[1]:
            raise ValueError(f"frame_stride: min {self.frame_stride[0]} is larger than max {self.frame_stride[1]}")
        if self.total_frames is not None:
            runs = self.patients * self.runs_per_patient
            if not runs * lo <= self.total_frames <= runs * hi:
                raise ValueError(
                    f"total_frames: {self.total_frames} cannot be reached with {runs} runs of "
                    f"{lo}-{hi} frames (allowed {runs * lo}-{runs * hi})"
                )

    @property
    def pixel_spacing_mm(self) -> float:
        """Pixel spacing in mm (square pixels)."""
        return self.spacing_mm if self.spacing_mm is not None else FIELD_OF_VIEW_MM / self.size


def preset_names(path: str | Path = PRESETS_FILE) -> list[str]:
    """Names of the presets defined in ``path``."""
    return list(read_yaml(path))


def load_phantom_preset(name: str, *, path: str | Path = PRESETS_FILE) -> PhantomConfig:
    """Load one preset ("tiny", "demo", "paper"...) of ``conf/phantom.yaml``.

    Args:
        name: Preset (top-level section) name.
        path: Presets file (default ``conf/phantom.yaml``).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: unknown preset (the message lists the valid ones), unknown key, wrong type
            or out-of-range value.
    """
    names = preset_names(path)
    if name not in names:
        raise ConfigError(f"{path}: unknown phantom preset {name!r}; valid presets: {', '.join(names)}")
    cfg = load_config(path, PhantomConfig, section=name)
    logger.debug("phantom preset %s: %s", name, cfg)
    return cfg
