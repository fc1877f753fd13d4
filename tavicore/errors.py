"""Root of the project's domain errors.

Each package defines its own errors in its ``errors`` module, all subclasses of
:class:`TavisegError`. Only the CLI turns them into exit codes and messages; only the DICOM
handlers turn them into DICOM status codes.
"""


class TavisegError(Exception):
    """Base class of every domain error raised by this project."""
