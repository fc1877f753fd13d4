"""Build small X-ray runs and SEG objects with pydicom (and highdicom), round-tripped via files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pack_bits
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tavidata.xa import Calibration, Identity, build_xray

XA_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.12.1"
SC_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def _base(sop_class: str, patient_id: str, study_uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = "Test^Patient"
    ds.PatientBirthDate = "19500101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.Manufacturer = "test"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    return ds


def make_xa(frames: np.ndarray, *, patient_id: str = "PAT-1", series_number: int = 1,
            bits_stored: int = 8, photometric: str = "MONOCHROME2",
            imager_spacing: tuple[float, float] | None = (0.3, 0.3), magnification: float | None = 1.5,
            study_uid: str | None = None) -> Dataset:
    """A multi-frame X-Ray Angiographic image from (N, H, W) uint8/uint16 frames."""
    identity = Identity(patient_id=patient_id, patient_name="Test^Patient", study_uid=study_uid,
                        study_date="20240101", series_number=series_number, manufacturer="test")
    calibration = (Calibration(tuple(imager_spacing), magnification=magnification) if imager_spacing
                   else None)
    ds = build_xray(frames.astype(np.uint8 if bits_stored <= 8 else np.uint16), identity=identity,
                    calibration=calibration, photometric=photometric, bits_stored=bits_stored)
    if not imager_spacing and magnification:
        ds.EstimatedRadiographicMagnificationFactor = magnification
    return ds


def make_sc(frame: np.ndarray, *, patient_id: str = "PAT-2") -> Dataset:
    """A single-frame Secondary Capture image (a source highdicom accepts without FoR)."""
    ds = _base(SC_SOP_CLASS, patient_id)
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Rows, ds.Columns = frame.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = frame.astype(np.uint8).tobytes()
    return ds


def make_seg(source: Dataset, frames: Sequence[tuple[int, int, np.ndarray]], *,
             segments: Sequence[tuple[int, str]] = ((1, "Aortic root"),), seg_type: str = "BINARY",
             referenced_uid: str | None = None) -> Dataset:
    """A minimal hand-built SEG: ``frames`` = (source frame number, segment number, bool mask)."""
    ds = _base(SEG_SOP_CLASS, str(source.PatientID), str(source.StudyInstanceUID))
    ds.Modality = "SEG"
    ds.SeriesNumber = 99
    ds.Rows, ds.Columns = int(source.Rows), int(source.Columns)
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    ds.SegmentationType = seg_type
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.ContentLabel = "AORTA"
    items = []
    for number, label in segments:
        item = Dataset()
        item.SegmentNumber = number
        item.SegmentLabel = label
        item.SegmentAlgorithmType = "MANUAL"
        items.append(item)
    ds.SegmentSequence = DicomSequence(items)
    uid = referenced_uid or str(source.SOPInstanceUID)
    inst = Dataset()
    inst.ReferencedSOPClassUID = source.SOPClassUID
    inst.ReferencedSOPInstanceUID = uid
    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    series.ReferencedInstanceSequence = DicomSequence([inst])
    ds.ReferencedSeriesSequence = DicomSequence([series])
    per_frame = []
    for frame_number, segment, _ in frames:
        src = Dataset()
        src.ReferencedSOPClassUID = source.SOPClassUID
        src.ReferencedSOPInstanceUID = uid
        src.ReferencedFrameNumber = frame_number
        deriv = Dataset()
        deriv.SourceImageSequence = DicomSequence([src])
        ident = Dataset()
        ident.ReferencedSegmentNumber = segment
        fg = Dataset()
        fg.DerivationImageSequence = DicomSequence([deriv])
        fg.SegmentIdentificationSequence = DicomSequence([ident])
        per_frame.append(fg)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.SharedFunctionalGroupsSequence = DicomSequence([Dataset()])
    stack = np.stack([m for _, _, m in frames])
    if seg_type == "FRACTIONAL":
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.SegmentationFractionalType = "PROBABILITY"
        ds.MaximumFractionalValue = 255
        ds.PixelData = stack.astype(np.uint8).tobytes()
    else:
        ds.BitsAllocated = ds.BitsStored = 1
        ds.HighBit = 0
        ds.PixelData = pack_bits(stack.astype(np.uint8).ravel())
    return ds


def save(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM file (with preamble) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
