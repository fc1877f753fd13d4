"""A short description of a data set: name, counts, stages, spacings, image size, splits."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import cv2

from tavidata.errors import SplitError
from tavidata.format import Dataset
from tavidata.splits import SPLITS_FILENAME, fold_summary, load_splits

logger = logging.getLogger(__name__)


def describe_dataset(root: str | Path) -> dict[str, Any]:
    """Describe the data set at ``root`` without reading every frame.

    Returns:
        A JSON-serialisable mapping: name, frames, patients, runs, stages (frame counts),
        spacings_mm (distinct values with counts), first_image_size [w, h], meta (dataset.json)
        and splits (k, seed, per-fold summary; or the reason it cannot be read; None if absent).

    Raises:
        DatasetError: ``root`` is not a readable data set.
    """
    dataset = Dataset.load(root)
    info: dict[str, Any] = {
        "root": str(dataset.root),
        "name": dataset.meta.get("name", ""),
        "frames": len(dataset),
        "patients": len(dataset.patients),
        "runs": len({(r.patient_id, r.run_id) for r in dataset}),
        "stages": dict(Counter(r.stage or "(none)" for r in dataset)),
        "spacings_mm": {f"{a:g}x{b:g}": n for (a, b), n in Counter(r.spacing_mm for r in dataset).items()},
        "first_image_size": None,
        "meta": {k: v for k, v in dataset.meta.items() if k != "runs"},
        "splits": None,
    }
    if dataset.records:
        first = cv2.imread(str(dataset.records[0].image), cv2.IMREAD_UNCHANGED)
        if first is not None:
            info["first_image_size"] = [int(first.shape[1]), int(first.shape[0])]
    if (Path(root) / SPLITS_FILENAME).exists():
        try:
            splits = load_splits(Path(root) / SPLITS_FILENAME)
            info["splits"] = {"k": splits.k, "seed": splits.seed, "val_fraction": splits.val_fraction,
                              "folds": fold_summary(splits, dataset)}
        except SplitError as exc:
            info["splits"] = {"error": str(exc)}
    return info
