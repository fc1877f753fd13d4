"""Every real sample through the reader: decoded with the expected shape and dtype, or refused
with a clear reason."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest

from segmentation.dicom.calibration import CalibrationSource
from segmentation.dicom.decode import GDCM_DIRECT
from segmentation.dicom.reader import FrameStatus, open_run
from segmentation.dicom.sop_classes import InputKind, classify
from segmentation.errors import NonImageObjectError

pytestmark = pytest.mark.samples

#: file -> (frames, rows, columns, dtype, bits) or "NON_IMAGE".
EXPECTED: dict[str, tuple[int, int, int, type, int] | str] = {
    "openrem_RDSR_Philips_Allura.dcm": "NON_IMAGE",
    "openrem_RDSR_Siemens_AXIOM-Artis_zee.dcm": "NON_IMAGE",
    "orthanc_KarstenHilbertRF.dcm": (1, 464, 512, np.uint8, 8),
    "rubo_0002_XA_jpegbaseline_96f.dcm": (96, 512, 512, np.uint8, 8),
    "rubo_0015_RF_GE_DRS_uncompressed.dcm": (1, 1024, 1024, np.uint8, 8),
    **{f"wg04_XA1_{kind}.dcm": (1, 1024, 1024, np.uint16, 10)
       for kind in ("UNC", "RLE", "JPLL", "JLSL", "JLSN", "J2KR", "J2KI", "JPLY")},
}
LOSSLESS = ("RLE", "JPLL", "JLSL", "J2KR")


def manifest_files(samples: Path) -> list[str]:
    with (samples / "MANIFEST.tsv").open(newline="") as fh:
        return [row["file"] for row in csv.DictReader(fh, delimiter="\t")]


def test_every_sample_has_an_expectation(samples_dir):
    files = manifest_files(samples_dir)
    assert sorted(files) == sorted(EXPECTED), "a sample without expectation would go untested"
    assert all((samples_dir / f).is_file() for f in files)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_is_decoded_or_refused(samples_dir, name):
    expected = EXPECTED[name]
    path = samples_dir / name
    if expected == "NON_IMAGE":
        assert classify(pydicom.dcmread(path, stop_before_pixels=True)) is InputKind.NON_IMAGE
        with pytest.raises(NonImageObjectError, match="X-Ray Radiation Dose SR Storage"):
            open_run(path)
        return
    frames, rows, columns, dtype, bits = expected
    run = open_run(path)
    assert (run.number_of_frames, run.rows, run.columns, run.bits_stored) == (frames, rows, columns, bits)
    seen = 0
    for index, frame in run.iter_frames():
        assert index == seen
        assert frame.shape == (rows, columns) and frame.dtype == dtype
        assert 0 <= int(frame.min()) and int(frame.max()) < 2**bits
        seen += 1
    assert seen == frames
    assert run.failures == {} and all(s is FrameStatus.DECODED for s in run.frame_status)
    # none of the real images carries calibration attributes (README): pixel units
    assert run.calibration.source is CalibrationSource.PIXEL_UNITS
    assert run.calibration.spacing_mm is None
    assert "PixelData" not in run.dataset


def test_wg04_lossless_variants_equal_uncompressed(samples_dir):
    reference = open_run(samples_dir / "wg04_XA1_UNC.dcm").read_frame(0)
    assert reference.max() == 504  # stored values, no Modality LUT, 10 bits
    for kind in LOSSLESS:
        frame = open_run(samples_dir / f"wg04_XA1_{kind}.dcm").read_frame(0)
        assert np.array_equal(frame, reference), kind


@pytest.mark.parametrize(("kind", "max_mean_diff"), [("J2KI", 2.0), ("JLSN", 3.0), ("JPLY", 3.0)])
def test_wg04_lossy_variants_close_to_uncompressed(samples_dir, kind, max_mean_diff):
    reference = open_run(samples_dir / "wg04_XA1_UNC.dcm").read_frame(0).astype(np.float64)
    run = open_run(samples_dir / f"wg04_XA1_{kind}.dcm")
    frame = run.read_frame(0).astype(np.float64)
    diff = np.abs(frame - reference).mean()
    assert 0.0 < diff < max_mean_diff
    assert np.corrcoef(frame.ravel(), reference.ravel())[0, 1] > 0.99


def test_jply_decodes_only_through_gdcm_fallback(samples_dir):
    run = open_run(samples_dir / "wg04_XA1_JPLY.dcm")
    run.read_frame(0)
    assert run.codec_usage == {GDCM_DIRECT: 1}
    assert run.layout.transfer_syntax == pydicom.uid.JPEGExtended12Bit


def test_cine_random_access_matches_sequential_reading(samples_dir):
    run = open_run(samples_dir / "rubo_0002_XA_jpegbaseline_96f.dcm")
    wanted = [0, 47, 95]
    sequential = dict(run.iter_frames(indices=wanted))
    assert sorted(sequential) == wanted
    for index in wanted:
        assert np.array_equal(run.read_frame(index), sequential[index])
    assert not np.array_equal(sequential[0], sequential[95])  # a real cine: frames differ
    with pytest.raises(IndexError):
        run.read_frame(96)


def test_dataset_in_memory_equals_file(samples_dir):
    path = samples_dir / "orthanc_KarstenHilbertRF.dcm"
    from_file = open_run(path).read_frame(0)
    from_memory = open_run(pydicom.dcmread(path)).read_frame(0)
    assert np.array_equal(from_file, from_memory)
    assert from_file.shape == (464, 512)  # non-square: rows x columns kept apart
