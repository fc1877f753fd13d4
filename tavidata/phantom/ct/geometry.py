"""Cone-beam geometry of a C-arm: where the source and detector are, and where a point lands.

World coordinates are the CT's RAS millimetres (x to the patient's Right, y Anterior, z
Superior). The C-arm turns about the isocentre: LAO (positive primary angle) brings the detector
towards the patient's left-anterior side, cranial (positive secondary angle) tilts it towards
the head. The image is shown as seen from the detector, the usual way: in a frontal view the
patient's left is on the image's right and the head at the top.

Calibration follows from the geometry (PS3.3 C.8.7.5, C.8.19.6): the detector pixel pitch is
``ImagerPixelSpacing``; an object at the isocentre is magnified by
``M = DistanceSourceToDetector / DistanceSourceToPatient``, so its pixel spacing there is
``ImagerPixelSpacing / M``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CArmGeometry:
    """One C-arm position.

    Attributes:
        sid_mm: Source to detector distance.
        sod_mm: Source to isocentre (patient) distance.
        lao_deg: Primary angle (LAO > 0, RAO < 0).
        cranial_deg: Secondary angle (cranial > 0, caudal < 0).
        isocentre_mm: World (RAS) point on the central ray (the table shift moves it).
        rows, cols: Detector size in pixels.
        detector_spacing_mm: Detector pixel pitch (square pixels).
    """

    sid_mm: float
    sod_mm: float
    lao_deg: float
    cranial_deg: float
    isocentre_mm: tuple[float, float, float]
    rows: int
    cols: int
    detector_spacing_mm: float

    def __post_init__(self) -> None:
        if not 0 < self.sod_mm < self.sid_mm:
            raise ValueError(f"need 0 < sod_mm < sid_mm, got sod {self.sod_mm} and sid {self.sid_mm}")
        if self.rows < 2 or self.cols < 2:
            raise ValueError(f"detector must be at least 2x2 pixels, got {self.rows}x{self.cols}")
        if self.detector_spacing_mm <= 0:
            raise ValueError(f"detector_spacing_mm must be > 0, got {self.detector_spacing_mm}")

    @property
    def magnification(self) -> float:
        """Magnification of the isocentre plane: SID / SOD."""
        return self.sid_mm / self.sod_mm

    @property
    def isocentre_spacing_mm(self) -> float:
        """Pixel spacing of an object at the isocentre (detector pitch / magnification)."""
        return self.detector_spacing_mm / self.magnification

    @property
    def field_of_view_mm(self) -> tuple[float, float]:
        """Detector field (rows, cols) in mm."""
        return self.rows * self.detector_spacing_mm, self.cols * self.detector_spacing_mm

    def basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit vectors (d, u, r): source->detector direction, image column (+x) and row (+y)."""
        a, b = np.deg2rad(self.lao_deg), np.deg2rad(self.cranial_deg)
        # detector direction from the isocentre: anterior at 0/0, towards the left (-x) with LAO,
        # towards the head (+z) with cranial
        d = np.array([-np.sin(a) * np.cos(b), np.cos(a) * np.cos(b), np.sin(b)])
        up = np.array([0.0, 0.0, 1.0])
        f = -d  # viewer at the detector, looking at the patient
        u = np.cross(f, up)
        if np.linalg.norm(u) < 1e-9:  # looking straight along the body axis: pick any column axis
            u = np.array([-1.0, 0.0, 0.0])
        u /= np.linalg.norm(u)
        r = -np.cross(u, f)
        r /= np.linalg.norm(r)
        return d, u, r

    @property
    def source_mm(self) -> np.ndarray:
        """World position of the focal spot."""
        d, _, _ = self.basis()
        return np.asarray(self.isocentre_mm, np.float64) - self.sod_mm * d

    def detector_points(self, rows: int | None = None, cols: int | None = None) -> np.ndarray:
        """World positions (rows, cols, 3) of the pixel centres, optionally on a coarser grid.

        A coarser grid (``rows``/``cols`` smaller than the detector's) covers the same field
        with proportionally larger pixels.
        """
        rows = rows or self.rows
        cols = cols or self.cols
        d, u, r = self.basis()
        centre = np.asarray(self.isocentre_mm, np.float64) + (self.sid_mm - self.sod_mm) * d
        ph = self.rows * self.detector_spacing_mm / rows
        pw = self.cols * self.detector_spacing_mm / cols
        cc = (np.arange(cols) + 0.5 - cols / 2.0) * pw
        rr = (np.arange(rows) + 0.5 - rows / 2.0) * ph
        return centre + rr[:, None, None] * r + cc[None, :, None] * u

    def project(self, points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project world points (..., 3) onto the detector.

        Returns:
            (pixels (..., 2) as (column, row) in detector pixels, pixel-centre convention;
            magnification (...) of each point: SID / its distance from the source along d).
        """
        d, u, r = self.basis()
        p = np.asarray(points_mm, np.float64) - self.source_mm
        depth = p @ d
        if np.any(depth <= 0):
            raise ValueError("a point lies behind the X-ray source")
        scale = self.sid_mm / depth
        col = (p @ u) * scale / self.detector_spacing_mm + self.cols / 2.0 - 0.5
        row = (p @ r) * scale / self.detector_spacing_mm + self.rows / 2.0 - 0.5
        return np.stack([col, row], axis=-1), scale

    def describe(self) -> dict:
        """JSON-able summary (also what the DICOM calibration attributes are made from)."""
        return {
            "sid_mm": round(self.sid_mm, 3), "sod_mm": round(self.sod_mm, 3),
            "lao_deg": round(self.lao_deg, 3), "cranial_deg": round(self.cranial_deg, 3),
            "isocentre_mm": [round(float(v), 3) for v in self.isocentre_mm],
            "detector_spacing_mm": round(self.detector_spacing_mm, 6),
            "isocentre_spacing_mm": round(self.isocentre_spacing_mm, 6),
            "magnification": round(self.magnification, 6),
        }


def centred_isocentre(target_mm: np.ndarray, lao_deg: float, cranial_deg: float, offset_mm: tuple[float, float]
                      ) -> np.ndarray:
    """Isocentre that puts ``target_mm`` ``offset_mm`` (along the image's columns, rows) from
    the image centre, in the isocentre plane (a table shift)."""
    g = CArmGeometry(1000.0, 700.0, lao_deg, cranial_deg, (0.0, 0.0, 0.0), 2, 2, 1.0)
    _, u, r = g.basis()
    return np.asarray(target_mm, np.float64) - offset_mm[0] * u - offset_mm[1] * r


__all__ = ["CArmGeometry", "centred_isocentre"]
