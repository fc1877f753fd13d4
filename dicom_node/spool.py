"""The durable receive store: a received instance is on disk and journaled before Success.

Layout under the spool folder::

    incoming/   pynetdicom writes each C-STORE data set here while it arrives (temp files)
    instances/  accepted instances, named ``<uuid4>.dcm`` (never after a received value)

Accepting an instance: check the free-space floor and the size limit, read its header (not
its pixel data), check it against the C-STORE command and the frame limit, fsync the file,
rename it atomically into ``instances/``, fsync the folder, then commit the journal row. Any
failure raises :class:`StorageError` (answer 0xA700) or :class:`InstanceRejected` (with its
status); the file is then removed, and Success is never answered.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pydicom

from dicom_node.config import LimitsConfig
from dicom_node.errors import InstanceRejected, JournalError, StorageError
from dicom_node.journal import Journal, NewInstance
from dicom_node.sop import StoreStatus, is_image_sop_class, is_valid_uid
from segmentation.errors import DICOM_PARSE_ERRORS
from tavicore.fileio import fsync_dir, fsync_file

logger = logging.getLogger(__name__)

_HEADER_TAGS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "NumberOfFrames",
    "Rows",
    "Columns",
)


@dataclass(frozen=True)
class StoredInstance:
    """An instance accepted into the spool (what the SCP hands to the work queue)."""

    id: int
    path: Path
    kind: str
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    frames: int
    size_bytes: int


class Spool:
    """Received instances on disk plus their journal rows.

    Args:
        root: Spool folder (created when missing).
        journal: The node's journal.
        limits: Size, frame and free-space limits.
        keep_other: Accept non-image objects and keep them (False: refuse with 0x0122).
    """

    def __init__(self, root: Path, journal: Journal, limits: LimitsConfig, *, keep_other: bool) -> None:
        self.root = Path(root)
        self.incoming_dir = self.root / "incoming"
        self.instances_dir = self.root / "instances"
        self.journal = journal
        self.limits = limits
        self.keep_other = keep_other

    def prepare(self, *, keep_processed: bool) -> None:
        """Create the folders and clean up after an unclean stop.

        Removes half-received temp files (never answered Success), instance files no journal
        row references (renamed but never journaled: never answered Success either) and, unless
        ``keep_processed``, files of instances already processed.

        Raises:
            StorageError: the folders cannot be created.
        """
        try:
            self.incoming_dir.mkdir(parents=True, exist_ok=True)
            self.instances_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{self.root}: cannot create the spool folders: {exc}") from exc
        stale = [p for p in self.incoming_dir.iterdir() if p.is_file()]
        for p in stale:
            p.unlink(missing_ok=True)
        known = self.journal.spool_files()
        orphans = [p for p in self.instances_dir.iterdir() if p.is_file() and p.name not in known]
        for p in orphans:
            p.unlink(missing_ok=True)
        processed = 0
        if not keep_processed:
            for instance_id, name in self.journal.processed_spool_files():
                (self.instances_dir / name).unlink(missing_ok=True)
                self.journal.forget_spool_file(instance_id)
                processed += 1
        if stale or orphans or processed:
            logger.info(
                "spool clean-up: %d partial reception(s), %d unjournaled file(s), %d processed file(s) removed",
                len(stale), len(orphans), processed,
            )

    def path_of(self, file: str) -> Path:
        """Absolute path of a spool file name from the journal."""
        return self.instances_dir / file

    def discard(self, files: list[str]) -> None:
        """Delete spool files (superseded or processed receptions)."""
        for name in files:
            if name:
                (self.instances_dir / name).unlink(missing_ok=True)

    def accept(
        self,
        tmp_path: Path,
        *,
        calling_aet: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
    ) -> StoredInstance:
        """Make a received data set durable and journal it; the temp file is consumed.

        Args:
            tmp_path: DICOM file written during reception (File Meta + data set).
            calling_aet: The peer's AE title (journaled, never used in a path).
            sop_class_uid, sop_instance_uid: Affected UIDs of the C-STORE request.
            transfer_syntax_uid: Transfer syntax of the presentation context.

        Returns:
            The stored instance.

        Raises:
            StorageError: not durable (disk full, I/O error, journal failure): answer 0xA700.
            InstanceRejected: refused by limits or content (status attribute says which).
        """
        tmp_path = Path(tmp_path)
        try:
            return self._accept(tmp_path, calling_aet, sop_class_uid, sop_instance_uid, transfer_syntax_uid)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise

    def _accept(
        self, tmp: Path, calling_aet: str, cmd_class: str, cmd_instance: str, ts: str
    ) -> StoredInstance:
        try:
            size = tmp.stat().st_size
            free = shutil.disk_usage(self.instances_dir).free
        except OSError as exc:
            raise StorageError(f"received file unavailable: {exc}") from exc
        if free < self.limits.min_free_bytes:
            raise StorageError(
                f"free space {free} bytes on the spool disk is below the floor "
                f"limits.min_free_bytes={self.limits.min_free_bytes}"
            )
        if size > self.limits.max_instance_bytes:
            raise InstanceRejected(
                f"instance of {size} bytes exceeds limits.max_instance_bytes={self.limits.max_instance_bytes}",
                StoreStatus.OUT_OF_RESOURCES_TOO_LARGE,
            )
        header = _read_header(tmp)
        kind = "image" if is_image_sop_class(cmd_class) else "other"
        if kind == "other" and not self.keep_other:
            shown = cmd_class if is_valid_uid(cmd_class) else "<invalid UID>"  # never echo a received value
            raise InstanceRejected(f"SOP class {shown} is not accepted (other_objects: refuse)", 0x0122)
        values = _check_header(header, cmd_class, cmd_instance, kind)
        frames = values["frames"]
        if values["pixels"] > self.limits.max_frame_pixels:
            raise InstanceRejected(
                f"frames of {values['pixels']} pixels, limits.max_frame_pixels={self.limits.max_frame_pixels}",
                StoreStatus.OUT_OF_RESOURCES_TOO_LARGE,
            )
        if frames > self.limits.max_frames:
            raise InstanceRejected(
                f"instance has {frames} frames, limits.max_frames={self.limits.max_frames}",
                StoreStatus.OUT_OF_RESOURCES_TOO_MANY_FRAMES,
            )
        name = f"{uuid.uuid4().hex}.dcm"
        dest = self.instances_dir / name
        try:
            fsync_file(tmp)
            try:
                os.replace(tmp, dest)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                _copy_durably(tmp, dest)
            fsync_dir(self.instances_dir)
        except OSError as exc:
            dest.unlink(missing_ok=True)
            raise StorageError(f"cannot store the instance in {self.instances_dir}: {exc}") from exc
        new = NewInstance(
            file=name,
            sop_instance_uid=cmd_instance,
            sop_class_uid=cmd_class,
            study_instance_uid=values["study"],
            series_instance_uid=values["series"],
            transfer_syntax_uid=ts,
            kind=kind,
            calling_aet=calling_aet,
            size_bytes=size,
            frames=frames,
        )
        try:
            row_id, superseded = self.journal.record_received(
                new, state="received" if kind == "image" else "kept"
            )
        except JournalError as exc:
            dest.unlink(missing_ok=True)
            raise StorageError(str(exc)) from exc
        self.discard(superseded)
        logger.info(
            "stored instance %s (%s, %d frame(s), %d bytes) as #%d%s",
            cmd_instance, kind, frames, size, row_id,
            f", superseding {len(superseded)} earlier reception(s)" if superseded else "",
        )
        return StoredInstance(
            id=row_id, path=dest, kind=kind, sop_instance_uid=cmd_instance,
            sop_class_uid=cmd_class, study_instance_uid=values["study"], frames=frames, size_bytes=size,
        )


def _copy_durably(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` via a temp name in dest's folder, fsync'd, then rename."""
    part = dest.with_suffix(".part")
    shutil.copyfile(src, part)
    fsync_file(part)
    os.replace(part, dest)
    src.unlink(missing_ok=True)


def _read_header(path: Path) -> pydicom.Dataset:
    """Parse the header of a received file (no pixel data); InstanceRejected(0xC210) if unparseable."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS))
        for kw in _HEADER_TAGS:  # force the lazy values to decode now, inside the try
            ds.get(kw)
        return ds
    except DICOM_PARSE_ERRORS as exc:
        raise InstanceRejected(
            f"data set cannot be parsed: {type(exc).__name__}", StoreStatus.CANNOT_UNDERSTAND
        ) from exc


def _check_header(ds: pydicom.Dataset, cmd_class: str, cmd_instance: str, kind: str) -> dict:
    """Compare the header with the C-STORE command.

    Raises:
        InstanceRejected: 0xC210 when identifying values cannot be understood (no UIDs, or
            values that are not UIDs at all); 0xA900 when they are missing or differ from the
            command, or an image lacks Rows/Columns.
    """
    mismatch = StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    keywords = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
    values = {kw: str(ds.get(kw, "") or "") for kw in keywords}
    if not values["SOPClassUID"] and not values["SOPInstanceUID"]:
        raise InstanceRejected("data set has neither SOP Class nor SOP Instance UID", StoreStatus.CANNOT_UNDERSTAND)
    garbled = [kw for kw, v in values.items() if v and not is_valid_uid(v)]
    if garbled:
        raise InstanceRejected(f"{', '.join(garbled)}: not a valid UID", StoreStatus.CANNOT_UNDERSTAND)
    if values["SOPClassUID"] != cmd_class or values["SOPInstanceUID"] != cmd_instance:
        raise InstanceRejected("SOP Class/Instance UID of the data set differ from the C-STORE request", mismatch)
    study, series = values["StudyInstanceUID"], values["SeriesInstanceUID"]
    if not study or not series:
        raise InstanceRejected("Study or Series Instance UID missing", mismatch)
    frames, pixels = 1, 0
    if kind == "image":
        rows, cols = ds.get("Rows"), ds.get("Columns")
        if not isinstance(rows, int) or not isinstance(cols, int) or rows < 1 or cols < 1:
            raise InstanceRejected("image without valid Rows/Columns", mismatch)
        pixels = rows * cols
        raw = ds.get("NumberOfFrames")
        try:
            frames = int(raw) if raw not in (None, "") else 1
        except (TypeError, ValueError) as exc:
            raise InstanceRejected("NumberOfFrames is not a number", mismatch) from exc
        if frames < 1:
            raise InstanceRejected(f"NumberOfFrames {frames} is not positive", mismatch)
    return {"study": study, "series": series, "frames": frames, "pixels": pixels}
