"""Domain errors of the segmentation core."""

from taviseg.errors import TavisegError


class SegmentationError(TavisegError):
    """Base class of errors raised by the segmentation core."""


class ModelError(SegmentationError):
    """Unknown architecture/encoder, or a model folder that is missing, malformed or of another version."""


class InferenceError(SegmentationError):
    """Inference could not run on the given frames or backend."""


class DicomError(SegmentationError):
    """Base class of DICOM reading/writing errors."""


class UnsupportedObjectError(DicomError):
    """A DICOM object that is not an image this project segments (dose report, presentation state...)."""


class NonImageObjectError(UnsupportedObjectError):
    """A recognised object that carries no image (X-Ray Radiation Dose SR, presentation state...)."""


class DicomDecodeError(DicomError):
    """Pixel data (or a frame of it) could not be decoded."""


class DicomWriteError(DicomError):
    """An output object (SEG, SR, GSPS, SC) could not be built."""


class MetricError(SegmentationError, ValueError):
    """Masks or spacing given to a metric are malformed (shape mismatch, bad spacing...)."""
