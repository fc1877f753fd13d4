"""Derived and synthetic DICOM inputs for what no real sample covers.

Small multi-frame XA/XRF/SC/Enhanced XA objects made at test time (in tmp folders): every
transfer syntax (pydicom's RLE/JPEG-LS/JPEG 2000 encoders, GDCM for JPEG Lossless, OpenCV for
colour JPEG Baseline), implicit VR and big endian, MONOCHROME1, 12 bits with overlay bits set,
calibration attributes, corrupt frames and multi-fragment frames without an offset table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    generate_uid,
)

from segmentation.dicom.sop_classes import ENHANCED_XA_IMAGE, XA_IMAGE, XRF_IMAGE
from tavidata.xa import Identity, build_xray

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"  # fixed study for synthetic runs (pydicom root)


def cine(n: int = 4, rows: int = 48, columns: int = 64, *, bits: int = 8, seed: int = 0) -> np.ndarray:
    """Deterministic (n, rows, columns) frames spanning the full ``bits`` range, with a dark
    moving disc (the 'contrast'), uint8 for bits <= 8 else uint16."""
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    yy, xx = np.mgrid[:rows, :columns]
    frames = []
    for k in range(n):
        base = (xx / max(columns - 1, 1) * 0.6 + yy / max(rows - 1, 1) * 0.3) * top
        disc = (yy - rows / 2) ** 2 + (xx - columns / 3 - k * 2) ** 2 < (rows / 4) ** 2
        frame = base * np.where(disc, 0.4, 1.0) + rng.normal(0, top * 0.02, (rows, columns))
        frame[0, 0], frame[-1, -1] = 0, top  # full range present
        frames.append(np.clip(np.rint(frame), 0, top))
    return np.asarray(frames, dtype=np.uint8 if bits <= 8 else np.uint16)


def disc_masks(n: int, rows: int, columns: int) -> np.ndarray:
    """(n, rows, columns) bool masks: a disc per frame, one frame empty (index 1 when n > 1)."""
    yy, xx = np.mgrid[:rows, :columns]
    masks = np.zeros((n, rows, columns), dtype=bool)
    for k in range(n):
        if n > 1 and k == 1:
            continue
        masks[k] = (yy - rows / 2) ** 2 + (xx - columns / 3 - k * 2) ** 2 < (rows / 4) ** 2
    return masks


def xa_dataset(
    frames: np.ndarray,
    *,
    sop_class: str = XA_IMAGE,
    modality: str = "XA",
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    with_number_of_frames: bool = True,
    study_uid: str = STUDY_UID,
    **attributes: object,
) -> Dataset:
    """A native Explicit VR Little Endian projection image holding ``frames``.

    Takes (n, rows, columns) uint8/uint16 frames (or (n, rows, columns, 3) uint8 RGB);
    returns a dataset with file meta. Extra keyword arguments become attributes.
    """
    frames = np.asarray(frames)
    identity = Identity(patient_id="SYN-0001", patient_name="Synthetic^Patient", sex="F", study_uid=study_uid,
                        accession="A1", referring_physician="Referrer^Doctor", manufacturer="taviseg-test")
    ds = build_xray(frames, sop_class=sop_class, identity=identity, modality=modality, photometric=photometric,
                    bits_stored=bits_stored, multi_frame=with_number_of_frames, positioner_deg=(-30.0, 0.0),
                    attributes=attributes)
    if ds.SOPClassUID == XRF_IMAGE:
        for keyword in ("PositionerPrimaryAngle", "PositionerSecondaryAngle", "PositionerMotion"):
            if keyword not in attributes:
                delattr(ds, keyword)
    return ds


def save(ds: Dataset, path: Path, *, transfer_syntax: str | None = None) -> Path:
    """Write ``ds`` (native) to ``path``, optionally as implicit VR LE or explicit VR BE."""
    ts = UID(transfer_syntax or ds.file_meta.TransferSyntaxUID)
    ds.file_meta.TransferSyntaxUID = ts
    if ts == ExplicitVRBigEndian and int(ds.BitsAllocated) == 16:
        big = np.frombuffer(ds.PixelData, dtype="<u2").astype(">u2")
        ds.PixelData = big.tobytes()
        ds["PixelData"].VR = "OW"
    if ts in (ImplicitVRLittleEndian, ExplicitVRBigEndian):
        ds.save_as(path, implicit_vr=ts == ImplicitVRLittleEndian, little_endian=ts != ExplicitVRBigEndian,
                   enforce_file_format=True)
    else:
        ds.save_as(path, enforce_file_format=True)
    return path


def compressed(ds: Dataset, transfer_syntax: str, tmp: Path) -> Dataset:
    """A copy of native ``ds`` encoded in ``transfer_syntax`` (RLE, JPEG-LS, J2K: pydicom;
    JPEG Lossless: GDCM; JPEG Baseline: OpenCV per frame)."""
    ts = UID(transfer_syntax)
    if ts in (JPEGLossless, JPEGLosslessSV1):
        return _gdcm_encode(ds, ts, tmp)
    if ts == JPEGBaseline8Bit:
        return _jpeg_baseline(ds)
    out = pydicom.dcmread(save(ds, tmp / f"native-{ds.SOPInstanceUID}.dcm"))
    options = {"j2k_cr": [20]} if ts == JPEG2000 else {}
    out.compress(ts, **options)
    return out


def _gdcm_encode(ds: Dataset, ts: UID, tmp: Path) -> Dataset:
    import gdcm

    source = save(ds, tmp / f"native-{ds.SOPInstanceUID}.dcm")
    target = tmp / f"jpll-{ds.SOPInstanceUID}.dcm"
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    if not reader.Read():
        raise RuntimeError("GDCM could not read the native file")
    change = gdcm.ImageChangeTransferSyntax()
    kind = (gdcm.TransferSyntax.JPEGLosslessProcess14_1 if ts == JPEGLosslessSV1
            else gdcm.TransferSyntax.JPEGLosslessProcess14)
    change.SetTransferSyntax(gdcm.TransferSyntax(kind))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError("GDCM could not encode JPEG Lossless")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError("GDCM could not write the JPEG Lossless file")
    return pydicom.dcmread(target)


def _jpeg_baseline(ds: Dataset) -> Dataset:
    rows, columns = int(ds.Rows), int(ds.Columns)
    n = int(ds.get("NumberOfFrames") or 1)
    colour = int(ds.SamplesPerPixel) == 3
    shape = (n, rows, columns, 3) if colour else (n, rows, columns)
    frames = np.frombuffer(ds.PixelData, dtype=np.uint8)[: np.prod(shape)].reshape(shape)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95]
    if colour:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422]
    encoded = []
    for frame in frames:
        image = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) if colour else frame
        ok, buffer = cv2.imencode(".jpg", image, params)
        if not ok:
            raise RuntimeError("OpenCV could not encode JPEG")
        encoded.append(buffer.tobytes())
    out = Dataset()
    out.update(ds)
    out.file_meta = FileMetaDataset()
    out.file_meta.update(ds.file_meta)
    out.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    out.PixelData = encapsulate(encoded)
    out["PixelData"].VR = "OB"
    out["PixelData"].is_undefined_length = True
    if colour:
        out.PhotometricInterpretation = "YBR_FULL_422"
    out.LossyImageCompression = "01"
    return out


def refragment(ds: Dataset, *, fragments_per_frame: int = 3, with_offset_table: bool = False) -> Dataset:
    """Re-encapsulate ``ds`` with every frame split over several fragments (no BOT default)."""
    n = int(ds.get("NumberOfFrames") or 1)
    frames = list(generate_frames(ds.PixelData, number_of_frames=n))
    ds.PixelData = encapsulate(frames, fragments_per_frame=fragments_per_frame, has_bot=with_offset_table)
    ds["PixelData"].is_undefined_length = True
    return ds


def corrupt_frame(ds: Dataset, index: int) -> Dataset:
    """Replace encapsulated frame ``index`` with garbage bytes (same fragment layout)."""
    n = int(ds.get("NumberOfFrames") or 1)
    frames = list(generate_frames(ds.PixelData, number_of_frames=n))
    frames[index] = b"\xff\xd8\xff\x00" + bytes(range(256)) * 4
    ds.PixelData = encapsulate(frames, has_bot=True)
    ds["PixelData"].is_undefined_length = True
    return ds


def _item(**attributes: object) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def enhanced_xa(
    frames: np.ndarray,
    *,
    object_spacing: Sequence[tuple[float, float]] | None = None,
    shared_imager_spacing: tuple[float, float] = (0.3, 0.3),
) -> Dataset:
    """A minimal Enhanced XA image (dciodvfy: no errors but a self-contradictory 1C condition on
    XRayTubeCurrentInmA/ExposureTimeInms/ExposureInmAs): shared functional groups for
    anatomy, VOI, irradiation event, pixel data properties (ImagerPixelSpacing), positioner,
    table and collimator; per frame the Frame Content and, with ``object_spacing``, the X-Ray
    Projection Pixel Calibration group holding ObjectPixelSpacingInCenterOfBeam."""
    ds = xa_dataset(frames, sop_class=ENHANCED_XA_IMAGE,
                    ImageType=["ORIGINAL", "PRIMARY", "ANGIO", "NONE"])
    for keyword in ("FrameTime", "FrameIncrementPointer", "PatientOrientation"):
        if keyword in ds:
            delattr(ds, keyword)
    n = int(ds.NumberOfFrames)
    top = 2 ** int(ds.BitsStored)
    ds.ManufacturerModelName, ds.DeviceSerialNumber, ds.SoftwareVersions = "derive", "1", "1"
    ds.AcquisitionContextSequence = []
    ds.ContentQualification = "PRODUCT"
    ds.AcquisitionDateTime = "20260101120000"
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    ds.AcquisitionNumber = 1
    ds.PlanesInAcquisition = "MONOPLANE"
    ds.PlaneIdentification = "MONOPLANE"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.KVP, ds.RadiationSetting, ds.RadiationMode = 80, "GR", "PULSED"
    ds.AveragePulseWidth, ds.AcquisitionDuration = 10.0, 1000.0
    ds.DistanceReceptorPlaneToDetectorHousing = None
    ds.PositionerType = "CARM"
    ds.CArmPositionerTabletopRelationship = "NO"
    ds.AcquiredImageAreaDoseProduct = None
    anatomy = _item(FrameLaterality="U", AnatomicRegionSequence=[
        _item(CodeValue="80891009", CodingSchemeDesignator="SCT", CodeMeaning="Heart")])
    shared = _item(
        FrameAnatomySequence=[anatomy],
        FrameVOILUTSequence=[_item(WindowCenter=top / 2, WindowWidth=top)],
        IrradiationEventIdentificationSequence=[_item(IrradiationEventUID=generate_uid())],
        FramePixelDataPropertiesSequence=[_item(
            FrameType=["ORIGINAL", "PRIMARY", "ANGIO", "NONE"],
            PixelIntensityRelationship="LIN",
            PixelIntensityRelationshipSign=1,
            GeometricalProperties="UNIFORM",
            ImageProcessingApplied="NONE",
            ImagerPixelSpacing=list(shared_imager_spacing),
        )],
        PositionerPositionSequence=[_item(PositionerPrimaryAngle=-30.0, PositionerSecondaryAngle=0.0)],
        TablePositionSequence=[_item(
            TableTopVerticalPosition=0.0, TableTopLongitudinalPosition=0.0,
            TableTopLateralPosition=0.0, TableHorizontalRotationAngle=0.0,
            TableHeadTiltAngle=0.0, TableCradleTiltAngle=0.0)],
        CollimatorShapeSequence=[_item(
            CollimatorShape="RECTANGULAR", CollimatorLeftVerticalEdge=0,
            CollimatorRightVerticalEdge=int(ds.Columns) - 1, CollimatorUpperHorizontalEdge=0,
            CollimatorLowerHorizontalEdge=int(ds.Rows) - 1)],
    )
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for k in range(n):
        item = _item(FrameContentSequence=[_item(
            FrameAcquisitionNumber=k + 1,
            FrameReferenceDateTime=f"20260101120000.{k:06d}",
            FrameAcquisitionDateTime=f"20260101120000.{k:06d}",
            FrameAcquisitionDuration=66.7,
        )])
        if object_spacing is not None:
            item.ProjectionPixelCalibrationSequence = [_item(
                ObjectPixelSpacingInCenterOfBeam=list(object_spacing[k]),
                DistanceObjectToTableTop=100.0, BeamAngle=0.0, TableHeight=900.0)]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    return ds


def colour_cine(n: int = 3, rows: int = 48, columns: int = 64) -> np.ndarray:
    """(n, rows, columns, 3) uint8 RGB frames: a gray gradient with a red-tinted disc."""
    gray = cine(n, rows, columns)
    rgb = np.repeat(gray[..., np.newaxis], 3, axis=3).astype(np.int16)
    rgb[..., 0] = np.clip(rgb[..., 0] + 30, 0, 255)
    return rgb.astype(np.uint8)
