"""Errors of the data layer: data sets, masks, manifests and patient splits."""

from tavicore.errors import TavisegError


class DataError(TavisegError):
    """Base class of errors raised by the data layer."""


class DatasetError(DataError):
    """A data set, manifest, frame or mask is missing, malformed or inconsistent (names the path)."""


class SplitError(DataError):
    """A splits file is missing, malformed, or leaks a patient across sides."""
