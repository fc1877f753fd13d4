"""The test peers themselves start, answer and stop (so a failure elsewhere is not theirs)."""

from __future__ import annotations

import subprocess

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from tests.conftest import require_tool
from tests.peers import orthanc_server, postgres_server, run_dciodvfy


def _secondary_capture(path):
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "TEST^PEERS", "PEERS1", "OT"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = bytes(range(64))
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_orthanc_receives_from_storescu(tmp_path):
    storescu = require_tool("storescu")
    path = tmp_path / "sc.dcm"
    ds = _secondary_capture(path)
    with orthanc_server(tmp_path) as pacs:
        subprocess.run(
            [storescu, "-aec", pacs.aet, "127.0.0.1", str(pacs.dicom_port), str(path)],
            check=True, capture_output=True, timeout=60,
        )
        ids = pacs.wait_for_instances(1, timeout=30)
        assert pacs.instance_tags(ids[0])["SOPInstanceUID"] == ds.SOPInstanceUID
    assert pacs.process.poll() is not None


def test_dciodvfy_reports_errors_for_an_incomplete_object(tmp_path):
    path = tmp_path / "sc.dcm"
    _secondary_capture(path)
    errors, _, output = run_dciodvfy(path)
    assert output  # it ran
    ds = pydicom.dcmread(path)
    del ds.PatientName
    del ds.SamplesPerPixel
    ds.save_as(tmp_path / "bad.dcm")
    bad_errors, _, _ = run_dciodvfy(tmp_path / "bad.dcm")
    assert len(bad_errors) > len(errors)


def test_postgres_accepts_connections(tmp_path):
    import sqlalchemy

    with postgres_server(tmp_path) as url:
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("select 1 + 1")).scalar() == 2
        engine.dispose()
