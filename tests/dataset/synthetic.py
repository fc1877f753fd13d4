"""Small synthetic frames, masks and data sets shared by the data-set tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tavidata.format import DatasetWriter


def frame(seed: int, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    """A distinct pseudo-random 8-bit frame for ``seed``."""
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def box_mask(r0: int, r1: int, c0: int, c1: int, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    """A bool mask with rows r0..r1-1 and columns c0..c1-1 set."""
    mask = np.zeros(size, dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def write_dataset(root: Path, counts: dict[str, int], *, name: str = "test-set") -> Path:
    """A data set with ``counts[patient]`` frames per patient (distinct frames, box masks)."""
    seed = 0
    with DatasetWriter(root, name=name) as writer:
        for patient, n in counts.items():
            for i in range(n):
                seed += 1
                writer.add(patient, "run01", i, frame(seed), box_mask(4, 4 + 2 * (i % 5 + 1), 8, 24),
                           spacing_mm=(0.5, 0.5), stage="overview")
    return root
