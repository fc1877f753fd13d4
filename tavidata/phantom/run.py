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


#: Root contrast fill (fraction of the bolus peak) below which a frame shows no contrast-filled
#: root: its ground truth is empty ("no root here"). Runs that start on the bolus never reach it
#: (their fill stays above 0.35); runs that start before the injection do (``pre_injection``).
#: Low on purpose: at a fifth of the peak the root can already be as dark against its ring as a
#: filled one, so a frame is "without contrast" only before the bolus arrives; the faint wash-in
#: frames keep their outline.
VISIBLE_FILL = 0.05


def bolus_shift_s(config: PhantomConfig, patient_seed: int, run_index: int, frame_times: Iterable[float]) -> float:
    """Seconds added to a run's frame times so that its cine starts before the contrast arrives.

    A fraction ``config.pre_injection`` of the runs (drawn per run) are such runs: the injection
    starts at a uniform moment from 0.2 s before the first frame to 0.6 s after the last, so a
    run may show a few frames without contrast then the wash-in, or no contrast at all
    (fluoroscopy before the aortogram). Other runs: 0. The draws come from a stream of their own,
    so every other byte of a run is the same whatever ``pre_injection`` is.
    """
    if config.pre_injection <= 0.0:
        return 0.0
    rng = np.random.default_rng([patient_seed, 5, run_index])
    if rng.random() >= config.pre_injection:
        return 0.0
    times = np.asarray(list(frame_times), np.float64)
    arrival = rng.uniform(-0.2, float(times[-1] - times[0]) + 0.6)  # seconds after the first frame
    return float(-arrival - times[0])


def render_frames(scene: Any, frame_times: Iterable[float], n_frames: int, shape: tuple[int, int],
                  noise_rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8 (N, H, W), masks bool (N, H, W)): ``scene.render(t, noise_rng)`` at each time;
    a frame whose root fill (``scene.case.timing.fill(t)``) is below :data:`VISIBLE_FILL` gets
    an empty mask."""
    frames = np.empty((n_frames, *shape), np.uint8)
    masks = np.empty((n_frames, *shape), bool)
    for i, t in enumerate(frame_times):
        frames[i], masks[i] = scene.render(t, noise_rng)
        if float(scene.case.timing.fill(t)) < VISIBLE_FILL:
            masks[i] = False
    return frames, masks


__all__ = ["VISIBLE_FILL", "PhantomRun", "bolus_shift_s", "render_frames", "run_rng"]
