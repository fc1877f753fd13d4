"""DICOM XA export of phantom runs: valid (dciodvfy), lossless, calibrated, deterministic."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless

from tavidata.format import Dataset
from tavidata.phantom import PhantomConfig, generate_cohort, generate_run
from tavidata.phantom.dicom_export import (
    ground_truth_path,
    read_ground_truth,
    write_run_with_ground_truth,
    write_xa_run,
)
from tests.peers import run_dciodvfy


@pytest.fixture(scope="module")
def run():
    return generate_run(PhantomConfig(size=128, frames_per_run=(3, 3)), 4242, 1, stage="control")


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless])
def test_xa_file_is_valid_and_lossless(tmp_path, run, syntax) -> None:
    path = write_xa_run(tmp_path / "run.dcm", run, patient_id="P007", series_number=2, transfer_syntax=syntax)
    errors, warnings, output = run_dciodvfy(path)
    assert errors == [], output
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.12.1" and ds.Modality == "XA"
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert str(ds.PatientName) == "PHANTOM^P007" and ds.PatientID == "P007"
    assert int(ds.NumberOfFrames) == 3 and ds.PhotometricInterpretation == "MONOCHROME2"
    assert np.array_equal(ds.pixel_array, run.frames)
    # calibration: every route gives the data set's spacing
    spacing = run.spacing_mm[0]
    assert float(ds.PixelSpacing[0]) == pytest.approx(spacing, rel=1e-5)
    magnification = float(ds.EstimatedRadiographicMagnificationFactor)
    assert float(ds.ImagerPixelSpacing[0]) / magnification == pytest.approx(spacing, rel=1e-4)
    assert float(ds.ImagerPixelSpacing[0]) * float(ds.DistanceSourceToPatient) / float(ds.DistanceSourceToDetector) \
        == pytest.approx(spacing, rel=1e-4)
    assert ds.FrameIncrementPointer == 0x00181063 and float(ds.FrameTime) > 0
    assert -90 <= float(ds.PositionerPrimaryAngle) <= 90


def test_reader_sees_the_calibration(tmp_path, run) -> None:
    reader = pytest.importorskip("segmentation.dicom.reader")
    path = write_xa_run(tmp_path / "run.dcm", run, patient_id="P001")
    projection = reader.open_run(path)
    assert projection.number_of_frames == 3
    assert projection.calibration.spacing_mm == pytest.approx(run.spacing_mm, rel=1e-5)
    frames = dict(projection.iter_frames())
    assert np.array_equal(frames[2], run.frames[2])


def test_uids_and_bytes_are_deterministic(tmp_path, run) -> None:
    a = write_xa_run(tmp_path / "a.dcm", run, patient_id="P001")
    b = write_xa_run(tmp_path / "b.dcm", run, patient_id="P001")
    assert a.read_bytes() == b.read_bytes()
    c = write_xa_run(tmp_path / "c.dcm", run, patient_id="P002")
    assert pydicom.dcmread(a).SOPInstanceUID != pydicom.dcmread(c).SOPInstanceUID
    with pytest.raises(ValueError, match="not supported; supported:.*1.2.840.10008.1.2.1"):
        write_xa_run(tmp_path / "d.dcm", run, patient_id="P001", transfer_syntax=JPEGBaseline8Bit)


def test_cohort_dicom_frames_equal_the_pngs_and_ground_truth_the_masks(tmp_path) -> None:
    cfg = PhantomConfig(name="t", patients=2, runs_per_patient=1, frames_per_run=(2, 3), size=96, seed=5)
    root = generate_cohort(tmp_path / "c", cfg, dicom=True)
    data = Dataset.load(root)
    files = sorted((root / "dicom").glob("*/*.dcm"))
    assert [f.parent.name for f in files] == ["P001", "P002"]
    for dcm in files:
        ds = pydicom.dcmread(dcm)
        records = [r for r in data.records if r.patient_id == dcm.parent.name and r.run_id == dcm.stem]
        frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
        gt = read_ground_truth(ground_truth_path(dcm))
        assert len(records) == len(frames) == len(gt)
        for rec, frame, mask in zip(sorted(records, key=lambda r: r.frame_index), frames, gt):
            assert np.array_equal(Dataset.read_image(rec), frame)
            assert np.array_equal(Dataset.read_mask(rec), mask)
    studies = {pydicom.dcmread(f).StudyInstanceUID for f in files}
    assert len(studies) == 2


def test_ground_truth_errors(tmp_path, run) -> None:
    from tavidata.errors import DatasetError

    with pytest.raises(DatasetError, match="not found"):
        read_ground_truth(tmp_path / "missing_mask.npz")
    path = write_run_with_ground_truth(tmp_path / "r.dcm", run, patient_id="P001")
    assert read_ground_truth(ground_truth_path(path)).shape == run.masks.shape
