"""The persistent outbox: output objects on disk plus one journal row per destination.

A worker writes each output object once (``<uuid4>.dcm``, fsync'd, renamed, folder fsync'd) and
then commits one ``pending`` outbox row per destination together with the instance's ``done``
state. The delivery loop (:mod:`dicom_node.sender`) sends due rows and records the outcome; a
file is deleted once no pending row needs it (unless ``delivery.keep_delivered``).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.errors import StorageError
from dicom_node.journal import Journal, NewOutput
from dicom_node.pipeline import OutputObject
from tavicore.fileio import fsync_dir, fsync_file

logger = logging.getLogger(__name__)


class OutputWriteDeferred(StorageError):
    """An output file could not be written because of the disk (full, quota, I/O error): the run
    is retried later, never failed for it (see :meth:`Outbox.write`)."""


class Outbox:
    """Output files under ``root`` and their journal rows.

    Args:
        root: Outbox folder (created when missing).
        journal: The node's journal.
        destinations: Names of the destinations every output goes to.
        keep_delivered: Keep files after delivery (for audit or re-sending by hand).
    """

    def __init__(self, root: Path, journal: Journal, destinations: Sequence[str], *, keep_delivered: bool) -> None:
        if not destinations:
            raise StorageError("outbox: at least one destination is needed")
        self.root = Path(root)
        self.journal = journal
        self.destinations = tuple(destinations)
        self.keep_delivered = keep_delivered

    def prepare(self) -> None:
        """Create the folder; remove files no journal row needs (written before a crash).

        Raises:
            StorageError: the folder cannot be created.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{self.root}: cannot create the outbox folder: {exc}") from exc
        needed = self.journal.all_outbox_files() if self.keep_delivered else self.journal.outbox_files_in_use()
        removed = 0
        for p in self.root.iterdir():
            if p.is_file() and p.name not in needed:
                p.unlink(missing_ok=True)
                removed += 1
        if removed:
            logger.info("outbox clean-up: %d file(s) no pending row needs removed", removed)

    def path_of(self, file: str) -> Path:
        """Absolute path of an outbox file name from the journal."""
        return self.root / file

    def write(self, outputs: Sequence[OutputObject]) -> list[NewOutput]:
        """Write output objects durably; return their rows (one per destination) to commit.

        Raises:
            OutputWriteDeferred: the disk refused a file (full, quota, I/O error): files written
                so far are removed and the run is retried later.
            StorageError: an object cannot be encoded.
        """
        rows: list[NewOutput] = []
        written: list[Path] = []
        try:
            for out in outputs:
                name = f"{uuid.uuid4().hex}.dcm"
                path = self.root / name
                _save(out.dataset, path)
                written.append(path)
                for dest in self.destinations:
                    rows.append(NewOutput(
                        destination=dest, kind=out.kind, file=name,
                        sop_instance_uid=str(out.dataset.SOPInstanceUID),
                        sop_class_uid=str(out.dataset.SOPClassUID),
                    ))
            if written:
                fsync_dir(self.root)
        except OSError as exc:  # the disk, not the object: retried when space returns
            self.discard([p.name for p in written])
            raise OutputWriteDeferred(
                f"cannot write an output object to {self.root}: {exc.strerror or exc}"
            ) from exc
        except (ValueError, TypeError, AttributeError) as exc:
            self.discard([p.name for p in written])
            raise StorageError(f"cannot write an output object to {self.root}: {exc}") from exc
        return rows

    def discard(self, files: Sequence[str]) -> None:
        """Delete outbox files (uncommitted or superseded objects)."""
        for name in files:
            (self.root / name).unlink(missing_ok=True)

    def release(self, file: str) -> None:
        """Delete ``file`` once no pending row needs it (kept with ``keep_delivered``)."""
        if not self.keep_delivered and not self.journal.outbox_file_pending(file):
            (self.root / file).unlink(missing_ok=True)


def ensure_file_meta(ds: pydicom.Dataset) -> None:
    """Give an output data set the File Meta it is written with: its own transfer syntax
    (Explicit VR Little Endian when it has none) and its SOP Class and Instance UIDs."""
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _save(ds: pydicom.Dataset, path: Path) -> None:
    """Save ``ds`` in DICOM file format at ``path`` atomically (temp name, fsync, rename)."""
    ensure_file_meta(ds)
    part = path.with_name(path.name + ".part")
    try:
        ds.save_as(part, enforce_file_format=True)
        fsync_file(part)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
