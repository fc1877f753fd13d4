"""Domain errors of the training package (data sets, splits, training, tuning, evaluation)."""

from taviseg.errors import TavisegError


class TrainingError(TavisegError):
    """Base class of errors raised by the training package."""


class DatasetError(TrainingError):
    """A data set, manifest, frame or mask is missing, malformed or inconsistent (names the path)."""


class SplitError(TrainingError):
    """A splits file is missing, malformed, or leaks a patient across sides."""
