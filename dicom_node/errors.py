"""Domain errors of the DICOM node; only the handlers turn them into DICOM status codes."""

from taviseg.errors import TavisegError


class NodeError(TavisegError):
    """Base class of errors raised by the DICOM node."""


class NodeConfigError(NodeError):
    """Invalid node configuration (beyond what the config loader checks)."""


class StorageError(NodeError):
    """An instance could not be stored durably (disk full, limits): answer Out of Resources."""


class InstanceRejected(NodeError):
    """An instance is refused by policy (size, frames, SOP class): answer with a failure status."""
