"""Export a phantom run as a multi-frame X-Ray Angiographic Image, with its ground truth.

:func:`write_xa_run` writes a classic XA object (SOP class 1.2.840.10008.5.1.4.1.1.12.1) that
passes dicom3tools' ``dciodvfy`` without errors: Patient, General Study/Series/Equipment/Image,
Image Pixel (8-bit MONOCHROME2), Contrast/Bolus, Cine (FrameTime, CineRate), Multi-frame
(FrameIncrementPointer -> FrameTime), X-Ray Image, X-Ray Acquisition (KVP, ImagerPixelSpacing),
X-Ray Collimator (the run's shutters), XA Positioner (primary/secondary angles,
DistanceSourceToDetector/Patient, EstimatedRadiographicMagnificationFactor) and SOP Common.

Calibration is consistent: ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor =
ImagerPixelSpacing x DistanceSourceToPatient / DistanceSourceToDetector = the data set's pixel
spacing (0.390625 mm at 1000 px), which is also written as PixelSpacing.

Every UID comes from the seeds (2.25 UIDs of name-based UUIDs, see :func:`phantom_uid`), and
dates/times from the patient seed, so re-generating a cohort gives identical bytes.
Patient names are synthetic (``PHANTOM^P001``).

Ground truth: ``<run>_mask.npz`` beside ``<run>.dcm`` (:func:`ground_truth_path`) holds
``masks`` (uint8 0/1, frames x rows x columns, frame i = DICOM frame number i + 1),
``frame_numbers`` (1-based), ``spacing_mm`` and ``sop_instance_uid``.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from tavicore import __version__
from tavidata.errors import DatasetError
from tavidata.phantom.run import PhantomRun
from tavidata.xa import Calibration, Identity, build_xray

logger = logging.getLogger(__name__)

#: Transfer syntaxes :func:`write_xa_run` can write (lossless only: the pixels are ground truth).
SUPPORTED_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEGLSLossless,
                               JPEG2000Lossless)
#: Ground-truth file suffix.
GROUND_TRUTH_SUFFIX = "_mask.npz"
_BASE_DATE = dt.date(2024, 1, 1)
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/taviseg/phantom")


def phantom_uid(*parts: object) -> UID:
    """A deterministic UID from ``parts`` (seeds, indices, kinds): 2.25.<name-based UUID>.

    ``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)`` ignores the entropy and returns
    a random UUID, so the UUID is made here (version 5, SHA-1 of the parts in a project
    namespace), which the 2.25 root allows (PS3.5 B.2).
    """
    name = "|".join(str(p) for p in parts)
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}")


def study_uid_for(master_seed: int, patient_seed: int) -> UID:
    """The StudyInstanceUID of a cohort's patient (all its runs are one study)."""
    return phantom_uid("study", master_seed, patient_seed)


def ground_truth_path(dicom_path: str | Path) -> Path:
    """Where the ground truth of ``<run>.dcm`` lives: ``<run>_mask.npz`` beside it."""
    p = Path(dicom_path)
    return p.with_name(p.stem + GROUND_TRUTH_SUFFIX)


def write_ground_truth(path: str | Path, masks: np.ndarray, *, spacing_mm: tuple[float, float],
                       sop_instance_uid: str) -> Path:
    """Write the masks of a run (bool (N, H, W)) as a compressed .npz; returns ``path``.

    Raises:
        ValueError: ``masks`` is not 3-D.
        DatasetError: the file cannot be written.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (frames, rows, columns), got shape {masks.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("wb") as fh:
            np.savez_compressed(fh, masks=(masks > 0).astype(np.uint8),
                                frame_numbers=np.arange(1, len(masks) + 1, dtype=np.int32),
                                spacing_mm=np.asarray(spacing_mm, np.float64),
                                sop_instance_uid=np.asarray(str(sop_instance_uid)))
    except OSError as exc:
        raise DatasetError(f"{path}: could not write the ground truth: {exc}") from exc
    return path


def read_ground_truth(path: str | Path) -> np.ndarray:
    """The masks of a ground-truth file as bool (N, H, W), frame i = DICOM frame i + 1.

    Raises:
        DatasetError: missing or malformed file.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: ground-truth file not found")
    try:
        with np.load(path) as data:
            masks = data["masks"]
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"{path}: not a phantom ground-truth file: {exc}") from exc
    if masks.ndim != 3:
        raise DatasetError(f"{path}: masks have shape {masks.shape}, expected (frames, rows, columns)")
    return masks.astype(bool)


def _date_time(patient_seed: int, run_index: int) -> tuple[str, str]:
    """Deterministic study date and run time (DA, TM) from the patient seed."""
    day = _BASE_DATE + dt.timedelta(days=int(patient_seed) % 730)
    seconds = 8 * 3600 + (int(patient_seed) // 730) % 3600 + 240 * int(run_index)
    seconds %= 86400
    t = dt.time(seconds // 3600, (seconds // 60) % 60, seconds % 60)
    return day.strftime("%Y%m%d"), t.strftime("%H%M%S")


def build_xa_dataset(run: PhantomRun, *, patient_id: str, study_uid: str | None = None,
                     series_number: int = 1) -> Dataset:
    """The XA dataset of ``run`` (without file meta); see the module docstring for the content.

    Raises:
        ValueError: frames are not uint8 (N, H, W), or the patient id is empty or too long.
    """
    frames = np.asarray(run.frames)
    if frames.ndim != 3 or frames.dtype != np.uint8:
        raise ValueError(f"run.frames must be uint8 (frames, rows, columns), got {frames.dtype} {frames.shape}")
    if not patient_id or len(patient_id) > 64:
        raise ValueError(f"patient_id must be 1-64 characters, got {patient_id!r}")
    meta = run.meta
    pseed = int(meta.get("patient_seed", 0))
    rindex = int(meta.get("run_index", series_number - 1))
    n, rows, cols = frames.shape
    spacing = float(run.spacing_mm[0]), float(run.spacing_mm[1])
    sid = float(meta.get("sid_mm", 1100.0))
    sod = float(meta.get("sod_mm", sid / 1.35))
    magnification = sid / sod
    frame_time = float(meta.get("frame_time_ms", 1000.0 / 15.0))
    date, time = _date_time(pseed, rindex)

    identity = Identity(
        patient_id=patient_id, patient_name=f"PHANTOM^{patient_id}", birth_date="", sex="O",
        study_uid=str(study_uid) if study_uid else str(phantom_uid("study", pseed)),
        series_uid=str(phantom_uid("series", pseed, rindex, patient_id)),
        sop_uid=str(phantom_uid("image", pseed, rindex, patient_id)),
        study_date=date, study_time=time, series_number=int(series_number))
    calibration = Calibration(imager_spacing_mm=(spacing[0] * magnification, spacing[1] * magnification),
                              sid_mm=sid, sod_mm=sod, magnification=magnification, isocentre_spacing=True)
    ds = build_xray(
        frames, identity=identity, calibration=calibration, frame_time_ms=frame_time,
        positioner_deg=(float(meta.get("lao_deg", 0.0)), float(meta.get("cranial_deg", 0.0))),
        kvp=float(meta.get("kvp", 80.0)),
        attributes={
            "InstanceCreationDate": date,
            "InstanceCreationTime": time,
            "InstitutionName": "Synthetic phantom",
            "StudyDescription": "TAVI aortography (synthetic phantom)",
            "SeriesDescription": f"{run.stage} aortography",
            "ManufacturerModelName": "TAVI phantom",
            "ContrastBolusAgent": "IODIXANOL 320",
            "ContrastBolusRoute": "INTRA-ARTERIAL",
            "SoftwareVersions": __version__,
            "CineRate": max(1, int(round(1000.0 / frame_time))),
            "RecommendedDisplayFrameRate": max(1, int(round(1000.0 / frame_time))),
            "ExposureTime": int(round(frame_time * 0.08)) or 1,
            "XRayTubeCurrent": 600,
            "RadiationMode": "PULSED",
            "IntensifierSize": round(max(rows, cols) * spacing[0] * magnification, 1),
            "FieldOfViewShape": "RECTANGLE",
            "PatientOrientation": ["L", "F"],
            # the generator's own isocentre spacing, exactly (not re-derived through rounding)
            "PixelSpacing": [round(spacing[0], 6), round(spacing[1], 6)],
            "PixelIntensityRelationship": "DISP",
        })
    del ds.file_meta
    quality = int(meta.get("jpeg_quality") or 0)
    if quality:  # the frames went through a lossy JPEG round trip in the generator
        ok, buf = cv2.imencode(".jpg", frames[0], [cv2.IMWRITE_JPEG_QUALITY, quality])
        ratio = frames[0].nbytes / max(1, len(buf)) if ok else 10.0
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = round(ratio, 2)
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:
        ds.LossyImageCompression = "00"
    _collimator(ds, meta.get("shutters"), rows, cols)
    return ds


def _collimator(ds: Dataset, shutters: object, rows: int, cols: int) -> None:
    if not isinstance(shutters, (list, tuple)) or len(shutters) != 4:
        return
    left, right, top, bottom = (float(v) for v in shutters)
    ds.CollimatorShape = "RECTANGULAR"
    ds.CollimatorLeftVerticalEdge = int(round(left * cols))
    ds.CollimatorRightVerticalEdge = int(round((1.0 - right) * cols)) - 1
    ds.CollimatorUpperHorizontalEdge = int(round(top * rows))
    ds.CollimatorLowerHorizontalEdge = int(round((1.0 - bottom) * rows)) - 1


def write_xa_run(path: str | Path, run: PhantomRun, *, patient_id: str, study_uid: str | None = None,
                 series_number: int = 1, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    """Write ``run`` as one multi-frame X-Ray Angiographic Image file.

    Args:
        path: Output file (parent folders are created).
        run: The phantom run (uint8 frames).
        patient_id: PatientID; the name is ``PHANTOM^<patient_id>``.
        study_uid: StudyInstanceUID (default: derived from the patient seed).
        series_number: SeriesNumber (one series per run).
        transfer_syntax: One of :data:`SUPPORTED_TRANSFER_SYNTAXES` (all lossless).

    Returns:
        ``path``.

    Raises:
        ValueError: unsupported transfer syntax (the message lists the supported ones) or a
            malformed run.
        DatasetError: the file cannot be written.
    """
    ts = UID(str(transfer_syntax))
    if ts not in SUPPORTED_TRANSFER_SYNTAXES:
        names = ", ".join(f"{u} ({u.name})" for u in SUPPORTED_TRANSFER_SYNTAXES)
        raise ValueError(f"transfer syntax {ts} is not supported; supported: {names}")
    ds = build_xa_dataset(run, patient_id=patient_id, study_uid=study_uid, series_number=series_number)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    if ts.is_compressed:
        ds.compress(ts, encoding_plugin="pylibjpeg" if ts == JPEG2000Lossless else "")
    else:
        meta.TransferSyntaxUID = ts
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ds.save_as(path, enforce_file_format=True, implicit_vr=ts.is_implicit_VR, little_endian=True)
    except OSError as exc:
        raise DatasetError(f"{path}: could not write the DICOM file: {exc}") from exc
    logger.debug("wrote XA run %s (%d frames, %s)", ds.SOPInstanceUID, int(ds.NumberOfFrames), ts.name)
    return path


def write_run_with_ground_truth(path: str | Path, run: PhantomRun, *, patient_id: str,
                                study_uid: str | None = None, series_number: int = 1,
                                transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    """:func:`write_xa_run` plus the ground truth beside it; returns the DICOM path."""
    path = write_xa_run(path, run, patient_id=patient_id, study_uid=study_uid, series_number=series_number,
                        transfer_syntax=transfer_syntax)
    sop = phantom_uid("image", int(run.meta.get("patient_seed", 0)),
                      int(run.meta.get("run_index", series_number - 1)), patient_id)
    write_ground_truth(ground_truth_path(path), run.masks, spacing_mm=run.spacing_mm, sop_instance_uid=sop)
    return path


__all__ = ["GROUND_TRUTH_SUFFIX", "SUPPORTED_TRANSFER_SYNTAXES", "build_xa_dataset", "ground_truth_path",
           "phantom_uid", "read_ground_truth", "study_uid_for", "write_ground_truth", "write_run_with_ground_truth",
           "write_xa_run"]
