"""The data-set layer: one on-disk format, importers, a checker and patient-level splits."""

from training.dataset.format import Dataset, DatasetWriter, FrameRecord

__all__ = ["Dataset", "DatasetWriter", "FrameRecord"]
