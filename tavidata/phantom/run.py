"""A synthetic cine run: frames, their masks, the spacing and the settings that made it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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


__all__ = ["PhantomRun"]
