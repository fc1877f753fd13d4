"""Domain errors of the segmentation core, and what pydicom raises on data it cannot parse."""

import struct
import zlib

from pydicom.errors import BytesLengthException, InvalidDicomError

from tavicore.errors import TavisegError

#: What pydicom raises, reading a header or converting a lazily read value, on bytes it cannot
#: parse (all seen on bit-flipped or truncated files of bench/reliability): NotImplementedError for
#: an unknown VR, RecursionError for sequences nested deeper than the recursion limit, zlib.error
#: for a "deflated" data set that is not, BytesLengthException (not a ValueError) for a value whose
#: length is not a multiple of its VR's size.
DICOM_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    InvalidDicomError, ValueError, TypeError, LookupError, EOFError, OverflowError, OSError,
    struct.error, AttributeError, NotImplementedError, RecursionError, zlib.error, BytesLengthException,
)


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
