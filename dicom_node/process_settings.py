"""Process-wide library settings that a running node changes, shared by overlapping nodes.

pynetdicom's chunked receive (``_config.STORE_RECV_CHUNKED_DATASET``), the folder of its temp
files (``tempfile.tempdir``: pynetdicom calls ``NamedTemporaryFile()`` with no folder) and
pydicom's reading validation mode are module globals. A node sets them when it starts. Nodes
that run at the same time in one process (tests, benchmarks) each register their value; the
value of the most recently started node still running is in force, and the process's own
value comes back when the last one stops, whatever the order of the stops.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import pydicom.config
from pynetdicom import _config

logger = logging.getLogger(__name__)


class SharedSetting:
    """One global setting, set by several owners in turn and restored after the last.

    Args:
        name: What the setting is (for logs).
        get: Reads the current value.
        put: Writes a value.
    """

    def __init__(self, name: str, get: Callable[[], Any], put: Callable[[Any], None]) -> None:
        self.name = name
        self._get, self._put = get, put
        self._lock = threading.Lock()
        self._owners: list[tuple[int, Any]] = []
        self._original: Any = None

    def acquire(self, owner: int, value: Any) -> None:
        """Put ``value`` in force for ``owner`` (an ``id()``) until :meth:`release`."""
        with self._lock:
            if not self._owners:
                self._original = self._get()
            self._owners = [(o, v) for o, v in self._owners if o != owner] + [(owner, value)]
            self._put(value)

    def release(self, owner: int) -> None:
        """Drop ``owner``'s value: the latest remaining owner's, or the original, comes back."""
        with self._lock:
            before = len(self._owners)
            self._owners = [(o, v) for o, v in self._owners if o != owner]
            if len(self._owners) == before:
                return
            self._put(self._owners[-1][1] if self._owners else self._original)

    def holders(self) -> int:
        """How many owners hold the setting now."""
        with self._lock:
            return len(self._owners)


def _set_tempdir(value: str | None) -> None:
    tempfile.tempdir = value


def _set_chunked(value: bool) -> None:
    _config.STORE_RECV_CHUNKED_DATASET = value


def _set_validation(value: int) -> None:
    pydicom.config.settings.reading_validation_mode = value


#: Folder of pynetdicom's chunked-receive temp files (a node's spool ``incoming/``).
TEMP_FOLDER = SharedSetting("tempfile.tempdir", lambda: tempfile.tempdir, _set_tempdir)
#: Receive data sets straight to disk.
RECEIVE_TO_DISK = SharedSetting("STORE_RECV_CHUNKED_DATASET",
                                lambda: _config.STORE_RECV_CHUNKED_DATASET, _set_chunked)
#: pydicom's reading validation (a node sets IGNORE: its warnings quote received values).
READING_VALIDATION = SharedSetting("reading_validation_mode",
                                   lambda: pydicom.config.settings.reading_validation_mode, _set_validation)

__all__ = ["READING_VALIDATION", "RECEIVE_TO_DISK", "TEMP_FOLDER", "SharedSetting"]
