"""Domain errors of the DICOM node; only the handlers turn them into DICOM status codes."""

from tavicore.errors import TavisegError


class NodeError(TavisegError):
    """Base class of errors raised by the DICOM node."""


class NodeConfigError(NodeError):
    """Invalid node configuration (beyond what the config loader checks)."""


class StorageError(NodeError):
    """An instance could not be stored durably (disk full, limits): answer Out of Resources."""


class InstanceRejected(NodeError):
    """An instance is refused by policy (size, frames, SOP class): answer with a failure status.

    Attributes:
        status: The DICOM C-STORE failure status the handler answers with (default 0xC000,
            "Cannot understand" class).
    """

    def __init__(self, message: str, status: int = 0xC000) -> None:
        super().__init__(message)
        self.status = status


class JournalError(NodeError):
    """The node's SQLite journal could not be opened, read or written."""


class ProcessingError(NodeError):
    """A received run could not be turned into output objects (decode, inference, writing)."""


class NotSegmentable(ProcessingError):
    """A received object is kept but not segmented (dose report, unsupported image kind, or a run
    whose every outline QC withheld: ``qc_frames`` then counts its frames by QC outcome)."""

    def __init__(self, message: str, *, qc_frames: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.qc_frames = qc_frames


class DeliveryError(NodeError):
    """An output object could not be delivered to a destination (network, refusal)."""
