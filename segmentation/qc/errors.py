"""The QC package's domain error."""

from __future__ import annotations

from segmentation.errors import SegmentationError


class QualityError(SegmentationError, ValueError):
    """QC data cannot be fitted or built (too few frames, one label class, unknown part...)."""
