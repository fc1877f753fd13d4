"""The run-level verdict: may the run's outlines be used?

:func:`run_verdict` sums up a run's frames: ``pass`` when fewer than ``fail_fraction`` of its
frames are flagged (low quality or "no root here"), ``fail`` otherwise, ``unknown`` without QC
data. The text names the counts, e.g. "AI outline, 7 of 40 frames uncertain" or, with frames
answered "no root here" (before the injection), "AI outline, 1 of 40 frames uncertain, 6 no
root", and is what the node writes into the SEG's SeriesDescription and ContentDescription (at
most 64 characters).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: A run fails when at least this fraction of its frames is flagged.
FAIL_FRACTION = 0.5


@dataclass(frozen=True)
class RunVerdict:
    """``status``: pass, fail or unknown; ``frames``, ``flagged``, ``no_root``: counts;
    ``median_quality``: None without QC data."""

    status: str
    frames: int
    flagged: int
    no_root: int
    median_quality: float | None

    @property
    def text(self) -> str:
        """Short human-readable summary (fits a DICOM LO, 64 characters)."""
        if self.status == "unknown":
            return "AI outline, quality not available"
        frames = f"{self.frames} frame{'' if self.frames == 1 else 's'}"
        if self.status == "fail" and self.no_root == self.frames:
            return f"AI: no aortic root found in {frames}"
        text = f"AI outline, {self.flagged - self.no_root} of {frames} uncertain"
        if self.no_root:  # frames answered "no root here" (e.g. before the injection) are not uncertain
            text += f", {self.no_root} no root"
        return (text if self.status == "pass" else f"{text} (run failed QC)")[:64]

    def to_json_dict(self) -> dict:
        """JSON form (summary.json, logs)."""
        return {"status": self.status, "frames": self.frames, "flagged": self.flagged, "no_root": self.no_root,
                "median_quality": self.median_quality, "text": self.text}


def run_verdict(
    quality: np.ndarray | None,
    flagged: np.ndarray,
    reasons: Sequence[str | None],
    *,
    fail_fraction: float = FAIL_FRACTION,
) -> RunVerdict:
    """The verdict of a run from its per-frame quality, flags and gate reasons."""
    n = len(flagged)
    no_root = sum(r is not None for r in reasons)
    if quality is None:
        return RunVerdict("unknown", n, 0, 0, None)
    k = int(np.sum(flagged))
    status = "fail" if n == 0 or k >= fail_fraction * n else "pass"
    median = float(np.median(quality)) if n else None
    return RunVerdict(status, n, k, no_root, median)
