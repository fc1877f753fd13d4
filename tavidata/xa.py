"""One builder of projection X-ray images (XA, XRF, Secondary Capture) from frames.

The phantom's DICOM export, the tests and the benches all make their X-ray runs here, so every
synthetic run carries the same modules: Patient, General Study/Series/Equipment, General and
Cine images, Image Pixel, X-Ray Image, X-Ray Acquisition, Positioner, and the calibration
attributes the reader turns into millimetres (ImagerPixelSpacing, DistanceSourceToDetector,
DistanceSourceToPatient, EstimatedRadiographicMagnificationFactor, PixelSpacing at the
isocentre).

:func:`build_xray` returns a dataset with its File Meta (Explicit VR Little Endian, native
pixel data); callers compress or save it as they need.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    XRayAngiographicImageStorage,
    XRayRadiofluoroscopicImageStorage,
    generate_uid,
)

#: SOP classes :func:`build_xray` writes the X-Ray Image/Acquisition/Positioner modules for.
XRAY_CLASSES = (XRayAngiographicImageStorage, XRayRadiofluoroscopicImageStorage)


@dataclass(frozen=True)
class Calibration:
    """Projection geometry of a run: where the millimetres come from.

    Attributes:
        imager_spacing_mm: (row, column) pixel spacing at the detector (ImagerPixelSpacing).
        sid_mm: Source to detector distance (DistanceSourceToDetector), or None.
        sod_mm: Source to patient (isocentre) distance (DistanceSourceToPatient), or None.
        magnification: EstimatedRadiographicMagnificationFactor; by default SID / SOD when both
            are given.
        isocentre_spacing: also write PixelSpacing (the spacing at the isocentre, imager spacing
            divided by the magnification) with its calibration type GEOMETRY.
    """

    imager_spacing_mm: tuple[float, float]
    sid_mm: float | None = None
    sod_mm: float | None = None
    magnification: float | None = None
    isocentre_spacing: bool = False

    def factor(self) -> float | None:
        """The magnification written to the file (given, or SID / SOD), or None."""
        if self.magnification is not None:
            return float(self.magnification)
        if self.sid_mm and self.sod_mm:
            return float(self.sid_mm) / float(self.sod_mm)
        return None


@dataclass(frozen=True)
class Identity:
    """Who and what a run belongs to (every UID is generated when left out)."""

    patient_id: str = "SYN-0001"
    patient_name: str = "Synthetic^Patient"
    birth_date: str = "19500101"
    sex: str = "O"
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    study_date: str = "20260101"
    study_time: str = "120000"
    accession: str = ""
    referring_physician: str = ""
    series_number: int = 1
    instance_number: int = 1
    manufacturer: str = "taviseg"


def build_xray(
    frames: np.ndarray,
    *,
    sop_class: str = XRayAngiographicImageStorage,
    identity: Identity | None = None,
    calibration: Calibration | None = None,
    modality: str | None = None,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    frame_time_ms: float | None = 66.7,
    multi_frame: bool = True,
    positioner_deg: tuple[float, float] = (0.0, 0.0),
    kvp: float = 80.0,
    attributes: Mapping[str, object] | None = None,
) -> Dataset:
    """A native Explicit VR Little Endian projection image holding ``frames``.

    Args:
        frames: (n, rows, columns) uint8 or uint16 grey frames, or (n, rows, columns, 3) uint8
            RGB frames.
        sop_class: XA, XRF, Secondary Capture or any other image storage class; the X-ray
            modules are written for XA and XRF only.
        identity: Patient, study and series identity (defaults: synthetic, new UIDs).
        calibration: Detector spacing and geometry, or None for an uncalibrated image.
        modality: Modality (default: XA, RF or OT from the SOP class).
        photometric: Photometric interpretation of grey frames.
        bits_stored: BitsStored (default: all allocated bits).
        frame_time_ms: FrameTime of a multi-frame image (Cine module), or None.
        multi_frame: write NumberOfFrames and the Cine module (False: a single-frame image with
            neither, as some modalities send).
        positioner_deg: PositionerPrimaryAngle (LAO +) and PositionerSecondaryAngle (cranial +).
        kvp: KVP of the X-Ray Acquisition module.
        attributes: Extra attributes by keyword, set last (they override the above).

    Returns:
        The dataset, with File Meta.

    Raises:
        ValueError: frames of another shape or dtype, or more than one frame without
            ``multi_frame``.
    """
    frames = np.asarray(frames)
    colour = frames.ndim == 4
    if frames.ndim not in (3, 4) or (colour and frames.shape[-1] != 3):
        raise ValueError(f"frames must be (n, rows, columns) or (n, rows, columns, 3), got {frames.shape}")
    if frames.dtype not in (np.uint8, np.uint16) or (colour and frames.dtype != np.uint8):
        raise ValueError(f"frames must be uint8 (or uint16 grey), got {frames.dtype}")
    if not multi_frame and frames.shape[0] != 1:
        raise ValueError(f"a single-frame image holds one frame, got {frames.shape[0]}")
    who = identity or Identity()
    sop_class = UID(str(sop_class))
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = UID(who.sop_uid) if who.sop_uid else generate_uid()
    ds.StudyInstanceUID = UID(who.study_uid) if who.study_uid else generate_uid()
    ds.SeriesInstanceUID = UID(who.series_uid) if who.series_uid else generate_uid()
    ds.Modality = modality or {XRayAngiographicImageStorage: "XA",
                               XRayRadiofluoroscopicImageStorage: "RF"}.get(sop_class, "OT")
    ds.PatientName = who.patient_name
    ds.PatientID = who.patient_id
    ds.PatientBirthDate = who.birth_date
    ds.PatientSex = who.sex
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = who.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = who.study_time
    ds.StudyID = "1"
    ds.AccessionNumber = who.accession
    ds.ReferringPhysicianName = who.referring_physician
    ds.SeriesNumber = int(who.series_number)
    ds.InstanceNumber = int(who.instance_number)
    ds.Manufacturer = who.manufacturer
    ds.BodyPartExamined = "HEART"
    ds.PatientOrientation = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    if sop_class == SecondaryCaptureImageStorage:
        ds.ConversionType = "WSD"
    n, rows, cols = (int(v) for v in frames.shape[:3])
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else photometric
    if colour:
        ds.PlanarConfiguration = 0
    allocated = 8 if frames.dtype == np.uint8 else 16
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored or allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if multi_frame:
        ds.NumberOfFrames = n
        if frame_time_ms is not None:
            ds.FrameTime = round(float(frame_time_ms), 3)
            ds.FrameIncrementPointer = Tag("FrameTime")
    if sop_class in XRAY_CLASSES:
        _xray_modules(ds, kvp=kvp, positioner_deg=positioner_deg)
    if calibration is not None:
        _calibrate(ds, calibration)
    for keyword, value in (attributes or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = frames.tobytes()
    ds["PixelData"].VR = "OB" if allocated == 8 else "OW"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _xray_modules(ds: Dataset, *, kvp: float, positioner_deg: tuple[float, float]) -> None:
    """Type 1/2 attributes of the X-Ray Image, X-Ray Acquisition and Positioner modules."""
    ds.PixelIntensityRelationship = "LIN"
    ds.KVP = round(float(kvp), 1)
    ds.RadiationSetting = "GR"
    ds.XRayTubeCurrent = 500
    ds.ExposureTime = 10
    ds.Exposure = 5
    ds.PositionerMotion = "STATIC"
    ds.PositionerPrimaryAngle = round(float(positioner_deg[0]), 1)
    ds.PositionerSecondaryAngle = round(float(positioner_deg[1]), 1)


def _calibrate(ds: Dataset, cal: Calibration) -> None:
    row, col = (round(float(v), 6) for v in cal.imager_spacing_mm)
    ds.ImagerPixelSpacing = [row, col]
    if cal.sid_mm is not None:
        ds.DistanceSourceToDetector = round(float(cal.sid_mm), 2)
    if cal.sod_mm is not None:
        ds.DistanceSourceToPatient = round(float(cal.sod_mm), 2)
    factor = cal.factor()
    if factor is not None:
        ds.EstimatedRadiographicMagnificationFactor = round(factor, 6)
    if cal.isocentre_spacing:
        m = factor or 1.0
        ds.PixelSpacing = [round(row / m, 6), round(col / m, 6)]
        ds.PixelSpacingCalibrationType = "GEOMETRY"
        ds.PixelSpacingCalibrationDescription = "ImagerPixelSpacing x SOD / SID (isocentre plane)"


__all__ = ["XRAY_CLASSES", "Calibration", "Identity", "build_xray"]
