"""Where an importer writes: a staging folder renamed into place only when the import succeeds.

A failed or interrupted import leaves no half-written data set behind: frames go to a hidden
sibling folder (``.<name>.partial-<pid>``) that becomes ``out`` after the manifest is written,
and is removed on error.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tavidata.errors import DatasetError
from tavidata.format import FORMAT_NAME, DatasetWriter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportResult:
    """What an import produced: the data-set root, its size, and the inputs it skipped."""

    root: Path
    frames: int
    patients: int
    runs: int
    skipped: tuple[Path, ...] = ()
    notes: tuple[str, ...] = ()


def _is_dataset(path: Path) -> bool:
    meta = path / "dataset.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("format") == FORMAT_NAME
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def check_destination(out: Path, *, overwrite: bool) -> None:
    """Refuse an ``out`` that exists, unless it is empty or (with ``overwrite``) a data set.

    Raises:
        DatasetError: ``out`` is a file, a non-empty folder that is not a taviseg data set, or a
            data set while ``overwrite`` is false.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not _is_dataset(out):
        raise DatasetError(f"{out}: exists and is not a taviseg data set; refusing to replace it")
    if not overwrite:
        raise DatasetError(f"{out}: a data set already exists here (use --overwrite to replace it)")


@contextmanager
def staged_writer(out: str | Path, *, name: str, meta: dict, overwrite: bool) -> Iterator[DatasetWriter]:
    """Yield a :class:`DatasetWriter` on a staging folder; on success move it to ``out``.

    Raises:
        DatasetError: see :func:`check_destination`; also when nothing was added.
    """
    out = Path(out)
    check_destination(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    writer = DatasetWriter(staging, name=name, meta=meta)
    try:
        yield writer
        if len(writer) == 0:
            raise DatasetError(f"no frames were imported into {out}")
        writer.close()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    logger.info("data set written to %s", out)
