"""Pixel spacing of a projection image, and where it came from.

Calibration is never required. The rules are tried in this order and the first that yields
two positive, finite spacings wins; which one is recorded (:class:`CalibrationSource`) and
travels with every mm figure downstream:

1. Enhanced XA/XRF ObjectPixelSpacingInCenterOfBeam (X-Ray Projection Pixel Calibration
   functional group), per frame when the frames differ;
2. PixelSpacing (calibrated by the modality);
3. ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor;
4. ImagerPixelSpacing x DistanceSourceToPatient / DistanceSourceToDetector;
5. ImagerPixelSpacing alone: flagged ``detector_plane`` (it is measured at the detector and
   overstates sizes in the patient by the geometric magnification, typically 1.2-1.5);
6. a configured default spacing;
7. pixel units (``spacing_mm`` None).

Attributes are looked up at the top level, then in the frame's per-frame functional group
items, then in the shared functional group items (one macro sequence deep).
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

Spacing = tuple[float, float]


class CalibrationSource(str, enum.Enum):
    """Which rule gave the pixel spacing (values are stable identifiers for files and SR)."""

    OBJECT_PIXEL_SPACING_IN_CENTER_OF_BEAM = "object_pixel_spacing_in_center_of_beam"
    PIXEL_SPACING = "pixel_spacing"
    MAGNIFICATION_FACTOR = "imager_pixel_spacing_over_magnification_factor"
    SOURCE_DISTANCES = "imager_pixel_spacing_times_sod_over_sid"
    IMAGER_PIXEL_SPACING = "imager_pixel_spacing_detector_plane"
    CONFIGURED_DEFAULT = "configured_default"
    PIXEL_UNITS = "pixel_units"

    @property
    def description(self) -> str:
        """Human-readable account of the rule (used in SR text and logs)."""
        return _DESCRIPTIONS[self]


#: Descriptions fit a DICOM LO (64 characters): the SR uses them as code meanings.
_DESCRIPTIONS = {
    CalibrationSource.OBJECT_PIXEL_SPACING_IN_CENTER_OF_BEAM:
        "Object Pixel Spacing in Center of Beam (Enhanced XA/XRF)",
    CalibrationSource.PIXEL_SPACING: "Pixel Spacing (calibrated by the modality)",
    CalibrationSource.MAGNIFICATION_FACTOR:
        "Imager Pixel Spacing / Est. Radiographic Magnification Factor",
    CalibrationSource.SOURCE_DISTANCES:
        "Imager Pixel Spacing x Source-Patient / Source-Detector distance",
    CalibrationSource.IMAGER_PIXEL_SPACING: "Imager Pixel Spacing at the detector (uncorrected)",
    CalibrationSource.CONFIGURED_DEFAULT: "configured default pixel spacing",
    CalibrationSource.PIXEL_UNITS: "no calibration: pixel units",
}


@dataclass(frozen=True)
class Calibration:
    """Pixel spacing of a run (row spacing, column spacing in mm) and its provenance.

    ``spacing_mm`` is the first frame's spacing (None in pixel units); ``frame_spacing_mm``
    lists every frame's spacing when they differ (Enhanced XA per-frame calibration), else
    None. ``detector_plane`` is True when the spacing is at the detector, not in the patient.
    """

    spacing_mm: Spacing | None
    source: CalibrationSource
    detector_plane: bool = False
    frame_spacing_mm: tuple[Spacing, ...] | None = None

    @property
    def calibrated(self) -> bool:
        """True when sizes can be given in mm."""
        return self.spacing_mm is not None

    def spacing_for(self, frame_index: int) -> Spacing | None:
        """Spacing of frame ``frame_index`` (0-based); raises IndexError past the last frame."""
        if self.frame_spacing_mm is not None:
            return self.frame_spacing_mm[frame_index]
        return self.spacing_mm

    def area(self, pixel_count: int, frame_index: int = 0) -> tuple[float, str]:
        """Area of ``pixel_count`` pixels of one frame: (value, "mm2") or (value, "px2")."""
        spacing = self.spacing_for(frame_index)
        if spacing is None:
            return float(pixel_count), "px2"
        return float(pixel_count) * spacing[0] * spacing[1], "mm2"

    def describe(self) -> str:
        """One line: the rule, the spacing and the detector-plane flag."""
        if self.spacing_mm is None:
            return self.source.description
        text = f"{self.source.description}: {self.spacing_mm[0]:.6g} x {self.spacing_mm[1]:.6g} mm"
        if self.frame_spacing_mm is not None:
            text += " (first frame; varies per frame)"
        return text


def _valid_pair(value: object) -> Spacing | None:
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        items = [float(v) for v in value]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if len(items) == 1:
        items = items * 2
    if len(items) != 2 or not all(math.isfinite(v) and 0.0 < v < 100.0 for v in items):
        return None
    return items[0], items[1]


def _valid_number(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0.0 else None


def _search_item(item: Dataset, keyword: str) -> object | None:
    """Value of ``keyword`` in ``item`` or in the first item of one of its sequences."""
    if keyword in item:
        return item.get(keyword)
    for element in item:
        if element.VR == "SQ" and element.value:
            inner = element.value[0]
            if keyword in inner:
                return inner.get(keyword)
    return None


def _lookup(ds: Dataset, keyword: str, frame_index: int) -> object | None:
    if keyword in ds:
        return ds.get(keyword)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame_index < len(per_frame):
        value = _search_item(per_frame[frame_index], keyword)
        if value is not None:
            return value
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        return _search_item(shared[0], keyword)
    return None


def _frame_rule(ds: Dataset, frame_index: int) -> tuple[CalibrationSource, Spacing] | None:
    """The first applicable rule 1-5 for one frame, with its spacing."""
    object_spacing = _valid_pair(_lookup(ds, "ObjectPixelSpacingInCenterOfBeam", frame_index))
    if object_spacing is not None:
        return CalibrationSource.OBJECT_PIXEL_SPACING_IN_CENTER_OF_BEAM, object_spacing
    pixel_spacing = _valid_pair(_lookup(ds, "PixelSpacing", frame_index))
    if pixel_spacing is not None:
        return CalibrationSource.PIXEL_SPACING, pixel_spacing
    imager = _valid_pair(_lookup(ds, "ImagerPixelSpacing", frame_index))
    if imager is None:
        return None
    magnification = _valid_number(
        _lookup(ds, "EstimatedRadiographicMagnificationFactor", frame_index)
    )
    if magnification is not None:
        if magnification < 1.0:
            logger.warning("EstimatedRadiographicMagnificationFactor %.4g < 1", magnification)
        return CalibrationSource.MAGNIFICATION_FACTOR, (
            imager[0] / magnification,
            imager[1] / magnification,
        )
    sod = _valid_number(_lookup(ds, "DistanceSourceToPatient", frame_index))
    sid = _valid_number(_lookup(ds, "DistanceSourceToDetector", frame_index))
    if sod is not None and sid is not None:
        if sod <= sid:
            ratio = sod / sid
            return CalibrationSource.SOURCE_DISTANCES, (imager[0] * ratio, imager[1] * ratio)
        logger.warning(
            "DistanceSourceToPatient %.4g > DistanceSourceToDetector %.4g: ignored", sod, sid
        )
    return CalibrationSource.IMAGER_PIXEL_SPACING, imager


def calibrate(
    dataset: Dataset,
    *,
    number_of_frames: int = 1,
    default_spacing_mm: float | Sequence[float] | None = None,
) -> Calibration:
    """Work out the pixel spacing of a projection image by the rules in the module docstring.

    Takes the image header, its number of frames (for per-frame functional groups) and an
    optional configured default spacing (one number for square pixels, or (row, column)).
    Returns a :class:`Calibration`; never raises for missing or malformed attributes (they
    are skipped, with a log line for implausible values). Raises ValueError for an invalid
    ``default_spacing_mm``.
    """
    first = _frame_rule(dataset, 0)
    if first is not None:
        source, spacing = first
        frame_spacings: tuple[Spacing, ...] | None = None
        if "PerFrameFunctionalGroupsSequence" in dataset and number_of_frames > 1:
            spacings = []
            for index in range(number_of_frames):
                rule = _frame_rule(dataset, index)
                spacings.append(rule[1] if rule is not None and rule[0] is source else spacing)
            if any(s != spacing for s in spacings):
                frame_spacings = tuple(spacings)
        calibration = Calibration(
            spacing_mm=spacing,
            source=source,
            detector_plane=source is CalibrationSource.IMAGER_PIXEL_SPACING,
            frame_spacing_mm=frame_spacings,
        )
    elif default_spacing_mm is not None:
        default = _valid_pair(
            [default_spacing_mm]
            if isinstance(default_spacing_mm, (int, float))
            else default_spacing_mm
        )
        if default is None:
            raise ValueError(
                f"default_spacing_mm {default_spacing_mm!r} is invalid "
                "(allowed: a positive number or a (row, column) pair of them, < 100 mm)"
            )
        calibration = Calibration(spacing_mm=default, source=CalibrationSource.CONFIGURED_DEFAULT)
    else:
        calibration = Calibration(spacing_mm=None, source=CalibrationSource.PIXEL_UNITS)
    logger.debug("calibration of %s: %s", dataset.get("SOPInstanceUID", "?"), calibration.describe())
    return calibration
