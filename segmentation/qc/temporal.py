"""Temporal consistency within a cine: how much each frame's mask agrees with its neighbours.

The root moves little between consecutive frames of a run (cardiac and respiratory motion of a
few millimetres), so a frame whose mask jumps away from both neighbours is suspect.
:func:`temporal_dice` gives, per frame, the mean Dice of its mask with the previous and next
frame's masks (one neighbour at the ends); NaN for a run of one frame (no evidence).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segmentation.qc.disagreement import flip_dice


def temporal_dice(masks: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Per-frame mean Dice with the neighbouring frames' masks (float64 ``(N,)``).

    Frames of different sizes are not compared (NaN). Two empty masks agree (Dice 1).
    """
    n = len(masks)
    out = np.full(n, np.nan)
    if n < 2:
        return out
    pair = np.full(n - 1, np.nan)
    for i in range(n - 1):
        a, b = np.asarray(masks[i], bool), np.asarray(masks[i + 1], bool)
        if a.shape == b.shape:
            pair[i] = flip_dice(a, b)
    for i in range(n):
        neighbours = [pair[j] for j in (i - 1, i) if 0 <= j < n - 1 and not np.isnan(pair[j])]
        if neighbours:
            out[i] = float(np.mean(neighbours))
    return out
