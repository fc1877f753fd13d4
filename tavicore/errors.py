"""Root of the project's domain errors.

Each package defines its own errors in its ``errors`` module, all subclasses of
:class:`TavisegError`. Only the CLI turns them into exit codes and messages; only the DICOM
handlers turn them into DICOM status codes.
"""


class TavisegError(Exception):
    """Base class of every domain error raised by this project."""


class DeviceError(TavisegError, ValueError):
    """A compute device setting names no usable device (unknown, or CUDA on a machine without it)."""


class WriteError(TavisegError, OSError):
    """A file could not be written durably (names the path and the operating system's reason)."""
