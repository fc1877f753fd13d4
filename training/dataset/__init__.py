"""The data-set layer: one on-disk format, importers, a checker and patient-level splits."""

from training.dataset.format import PAPER_PIXEL_SPACING_MM, Dataset, DatasetWriter, FrameRecord
from training.dataset.splits import (
    SPLITS_FILENAME,
    Fold,
    Splits,
    check_splits,
    load_splits,
    make_splits,
    save_splits,
)

__all__ = [
    "PAPER_PIXEL_SPACING_MM",
    "SPLITS_FILENAME",
    "Dataset",
    "DatasetWriter",
    "Fold",
    "FrameRecord",
    "Splits",
    "check_splits",
    "load_splits",
    "make_splits",
    "save_splits",
]
