"""The project's one on-disk data-set format.

Layout of a data-set folder::

    <root>/dataset.json          {"format": "taviseg-dataset", "version": 1, "name": ..., ...}
    <root>/manifest.csv          one row per frame (columns: MANIFEST_COLUMNS)
    <root>/images/<patient>/<run>_<frame:04d>.png    8-bit grayscale frame
    <root>/masks/<patient>/<run>_<frame:04d>.png     binary mask (0 / 255), same size
    <root>/splits.json           patient-level folds (written by ``taviseg dataset split``)

Paths in the manifest are relative to the root. ``spacing_row_mm``/``spacing_col_mm`` give the
pixel spacing in mm (the paper's data set: 0.390625 mm/px); ``stage`` names the procedural stage
(free text; the phantom writes ``overview``, ``positioning``, ``deployment``, ``control``).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from tavidata.errors import DatasetError

logger = logging.getLogger(__name__)

FORMAT_NAME = "taviseg-dataset"
FORMAT_VERSION = 1
MANIFEST_COLUMNS = (
    "frame_id",
    "patient_id",
    "run_id",
    "frame_index",
    "image",
    "mask",
    "spacing_row_mm",
    "spacing_col_mm",
    "stage",
)
#: The paper's fixed pixel spacing (mm/px), from the DICOM headers of its data set.
PAPER_PIXEL_SPACING_MM = 0.390625


@dataclass(frozen=True)
class FrameRecord:
    """One frame of a data set: where its image and mask are, and whose frame it is."""

    frame_id: str
    patient_id: str
    run_id: str
    frame_index: int
    image: Path
    mask: Path | None
    spacing_mm: tuple[float, float] = (PAPER_PIXEL_SPACING_MM, PAPER_PIXEL_SPACING_MM)
    stage: str = ""


def read_gray(path: Path) -> np.ndarray:
    """Read an 8-bit (or 16-bit) single-channel image; raise DatasetError naming the path."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"{path}: unreadable image file")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if img.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    return img


def write_png(path: Path, array: np.ndarray) -> None:
    """Write a 2-D uint8/uint16 array as PNG, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), array):
        raise DatasetError(f"{path}: could not write image")


@dataclass
class Dataset:
    """A data set loaded from its folder: metadata plus the frame records of the manifest."""

    root: Path
    records: list[FrameRecord]
    meta: dict = field(default_factory=dict)

    @classmethod
    def load(cls, root: str | Path) -> Dataset:
        """Load a data-set folder.

        Raises:
            DatasetError: missing ``dataset.json``/``manifest.csv``, an unknown format version,
                or a malformed manifest row (the message names the file and line).
        """
        root = Path(root)
        meta_path = root / "dataset.json"
        manifest = root / "manifest.csv"
        if not meta_path.is_file():
            raise DatasetError(f"{root}: not a taviseg data set (no dataset.json)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{meta_path}: not valid JSON: {exc}") from exc
        if meta.get("format") != FORMAT_NAME:
            raise DatasetError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
        if meta.get("version") != FORMAT_VERSION:
            raise DatasetError(
                f"{meta_path}: data-set format version {meta.get('version')!r} is not supported "
                f"(this taviseg reads version {FORMAT_VERSION})"
            )
        if not manifest.is_file():
            raise DatasetError(f"{root}: manifest.csv is missing")
        records = []
        with manifest.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{manifest}: missing columns {missing}")
            for line, row in enumerate(reader, start=2):
                try:
                    records.append(
                        FrameRecord(
                            frame_id=row["frame_id"],
                            patient_id=row["patient_id"],
                            run_id=row["run_id"],
                            frame_index=int(row["frame_index"]),
                            image=root / row["image"],
                            mask=(root / row["mask"]) if row["mask"] else None,
                            spacing_mm=(float(row["spacing_row_mm"]), float(row["spacing_col_mm"])),
                            stage=row.get("stage") or "",
                        )
                    )
                except (TypeError, ValueError) as exc:
                    raise DatasetError(f"{manifest}:{line}: malformed row: {exc}") from exc
        return cls(root=root, records=records, meta=meta)

    @property
    def patients(self) -> list[str]:
        """Patient ids in first-seen order."""
        return list(dict.fromkeys(r.patient_id for r in self.records))

    def frames_of(self, patients: Iterable[str]) -> list[FrameRecord]:
        """Records of the given patients, in manifest order."""
        wanted = set(patients)
        return [r for r in self.records if r.patient_id in wanted]

    def frame_counts(self) -> dict[str, int]:
        """Number of frames per patient."""
        counts: dict[str, int] = {}
        for r in self.records:
            counts[r.patient_id] = counts.get(r.patient_id, 0) + 1
        return counts

    @staticmethod
    def read_image(record: FrameRecord) -> np.ndarray:
        """The frame as a 2-D array (uint8 for this format)."""
        return read_gray(record.image)

    @staticmethod
    def read_mask(record: FrameRecord) -> np.ndarray:
        """The ground-truth mask as a 2-D bool array.

        Raises:
            DatasetError: the record has no mask, or the file is unreadable.
        """
        if record.mask is None:
            raise DatasetError(f"frame {record.frame_id}: no mask in the manifest")
        return read_gray(record.mask) > 0

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[FrameRecord]:
        return iter(self.records)


class DatasetWriter:
    """Write frames and masks into a new data-set folder; ``close()`` writes the manifest.

    Use as a context manager::

        with DatasetWriter(root, name="phantom-tiny") as w:
            w.add("P001", "run01", 0, image, mask, spacing_mm=(0.39, 0.39), stage="overview")
    """

    def __init__(self, root: str | Path, *, name: str, meta: dict | None = None, overwrite: bool = False):
        self.root = Path(root)
        if (self.root / "manifest.csv").exists() and not overwrite:
            raise DatasetError(f"{self.root}: a data set already exists here (use overwrite)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "name": name, **(meta or {})}
        self._rows: list[dict] = []

    def add(
        self,
        patient_id: str,
        run_id: str,
        frame_index: int,
        image: np.ndarray,
        mask: np.ndarray | None,
        *,
        spacing_mm: Sequence[float] = (PAPER_PIXEL_SPACING_MM, PAPER_PIXEL_SPACING_MM),
        stage: str = "",
    ) -> FrameRecord:
        """Write one frame (uint8 2-D) and its mask (bool/0-1/0-255 2-D of the same size)."""
        if image.ndim != 2:
            raise DatasetError(f"{patient_id}/{run_id}/{frame_index}: image must be 2-D, got {image.shape}")
        if mask is not None and mask.shape != image.shape:
            raise DatasetError(
                f"{patient_id}/{run_id}/{frame_index}: mask shape {mask.shape} != image shape {image.shape}"
            )
        for ident in (patient_id, run_id):
            if not ident or any(c in ident for c in "/\\ ,") or ident.startswith("."):
                raise DatasetError(f"invalid identifier {ident!r}: no '/', '\\', ',', spaces or leading '.'")
        stem = f"{run_id}_{frame_index:04d}"
        img_rel = Path("images") / patient_id / f"{stem}.png"
        write_png(self.root / img_rel, image)
        mask_rel = None
        if mask is not None:
            mask_rel = Path("masks") / patient_id / f"{stem}.png"
            write_png(self.root / mask_rel, (np.asarray(mask) > 0).astype(np.uint8) * 255)
        frame_id = f"{patient_id}/{stem}"
        self._rows.append(
            {
                "frame_id": frame_id,
                "patient_id": patient_id,
                "run_id": run_id,
                "frame_index": frame_index,
                "image": img_rel.as_posix(),
                "mask": mask_rel.as_posix() if mask_rel else "",
                "spacing_row_mm": f"{float(spacing_mm[0]):.6g}",
                "spacing_col_mm": f"{float(spacing_mm[1]):.6g}",
                "stage": stage,
            }
        )
        return FrameRecord(
            frame_id, patient_id, run_id, frame_index, self.root / img_rel,
            (self.root / mask_rel) if mask_rel else None,
            (float(spacing_mm[0]), float(spacing_mm[1])), stage,
        )

    def close(self) -> Path:
        """Write ``manifest.csv`` and ``dataset.json``; returns the root."""
        with (self.root / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            writer.writerows(self._rows)
        meta = dict(self.meta, frames=len(self._rows),
                    patients=len({r["patient_id"] for r in self._rows}))
        (self.root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        logger.info("wrote data set %s: %d frames", self.root, len(self._rows))
        return self.root

    def __len__(self) -> int:
        """Number of frames added so far."""
        return len(self._rows)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def record_as_dict(record: FrameRecord) -> dict:
    """A JSON-serialisable view of a record (paths as strings)."""
    d = asdict(record)
    d["image"] = str(record.image)
    d["mask"] = str(record.mask) if record.mask else None
    return d
