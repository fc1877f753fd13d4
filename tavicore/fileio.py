"""Durable atomic writes: the one way this project replaces a file.

A file is written to a temporary name beside its target, flushed and fsynced, renamed over the
target (``os.replace``), and the folder is fsynced so the rename itself survives a power cut.
A ``kill -9`` at any point leaves either the old file or the new one, never a mix; a crash
leaves at most a hidden ``.NAME.*.tmp`` file, which the next write of the same target ignores.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tavicore.errors import WriteError


def fsync_file(path: str | Path) -> None:
    """fsync a file's data and metadata (the file may still be open elsewhere)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """fsync a folder so that a rename or creation inside it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then make it ``path`` durably.

    Args:
        path: The target (its parent folders are created).
        write: Writes the whole content to the temporary path it is given.

    Returns:
        ``path``.

    Raises:
        WriteError: the file or its folder cannot be written (names the path and the reason);
            whatever ``write`` raises otherwise, with the temporary file removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise WriteError(f"{path}: cannot write: {exc.strerror or exc}") from exc
    tmp = Path(tmp_name)
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        raise WriteError(f"{path}: cannot write: {exc.strerror or exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, data: Any, *, sort_keys: bool = False) -> Path:
    """Write ``data`` as indented JSON (non-JSON values as ``str``) atomically and durably."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys, default=str) + "\n")


__all__ = ["fsync_dir", "fsync_file", "write_atomic", "write_bytes_atomic", "write_json_atomic",
           "write_text_atomic"]
