"""A synthetic cine run: frames, their masks, the spacing and the settings that made it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tavidata.phantom.config import PhantomConfig


@dataclass
class PhantomRun:
    """One synthetic cine run.

    Attributes:
        frames: uint8 (N, H, W), MONOCHROME2 (contrast dark).
        masks: bool (N, H, W), the contrast-filled aortic root of each frame.
        spacing_mm: (row, column) pixel spacing in mm.
        stage: Procedural stage (overview, positioning, deployment, control).
        meta: JSON-able settings of the run (difficulty, valve, view angles, SID/SOD, timing...).
    """

    frames: np.ndarray
    masks: np.ndarray
    spacing_mm: tuple[float, float]
    stage: str
    meta: dict = field(default_factory=dict)


def run_rng(config: PhantomConfig, patient_seed: int, run_index: int,
            n_frames: int | None) -> tuple[np.random.Generator, int]:
    """The random generator of run ``run_index`` of a patient, and the run's frame count
    (``n_frames``, or drawn from ``config.frames_per_run`` when None). Both generators use it.

    Raises:
        ValueError: negative ``run_index`` or ``n_frames`` < 1.
    """
    if run_index < 0:
        raise ValueError(f"run_index must be >= 0, got {run_index}")
    rng = np.random.default_rng([patient_seed, 2, run_index])
    if n_frames is None:
        n_frames = int(rng.integers(config.frames_per_run[0], config.frames_per_run[1] + 1))
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    return rng, n_frames


def render_frames(scene: Any, frame_times: Iterable[float], n_frames: int, shape: tuple[int, int],
                  noise_rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8 (N, H, W), masks bool (N, H, W)): ``scene.render(t, noise_rng)`` at each time."""
    frames = np.empty((n_frames, *shape), np.uint8)
    masks = np.empty((n_frames, *shape), bool)
    for i, t in enumerate(frame_times):
        frames[i], masks[i] = scene.render(t, noise_rng)
    return frames, masks


__all__ = ["PhantomRun", "render_frames", "run_rng"]
