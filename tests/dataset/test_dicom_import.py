"""The DICOM importer: X-ray runs paired with SEG objects by their references."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from tavidata.errors import DatasetError
from tavidata.format import PAPER_PIXEL_SPACING_MM, Dataset
from tests.dataset.dicom_fixtures import make_sc, make_seg, make_xa, save
from tests.dataset.synthetic import box_mask, frame
from training.importers import DicomImportConfig, import_dicom
from training.importers.dicom import to_uint8
from training.importers.dicom_seg import read_segmentation


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.stack([frame(seed + i) for i in range(n)])


@pytest.fixture
def xa_with_seg(tmp_path: Path):
    """A 4-frame XA whose SEG annotates frames 1 and 3 (1-based), plus unrelated files."""
    src = tmp_path / "dicom"
    xa = make_xa(_frames(4), patient_id="PAT-SECRET-42")
    m1, m3 = box_mask(2, 9, 4, 30), box_mask(20, 31, 0, 5)
    seg = make_seg(xa, [(1, 1, m1), (3, 1, m3)])
    save(xa, src / "run" / "XA0001")
    save(seg, src / "seg" / "SEG0001")
    (src / "README.txt").write_text("not DICOM")
    return src, xa, {0: m1, 2: m3}


def test_multi_frame_xa_with_hand_built_seg(xa_with_seg, tmp_path):
    src, xa, masks = xa_with_seg
    result = import_dicom(src, tmp_path / "out")
    assert (result.frames, result.patients, result.runs) == (2, 1, 1)
    assert src / "README.txt" in result.skipped
    ds = Dataset.load(tmp_path / "out")
    assert ds.patients == ["P001"]
    assert [r.frame_index for r in ds] == [0, 2]
    for rec in ds:
        np.testing.assert_array_equal(Dataset.read_image(rec), frame(rec.frame_index))
        np.testing.assert_array_equal(Dataset.read_mask(rec), masks[rec.frame_index])
        assert rec.spacing_mm == pytest.approx((0.2, 0.2))  # 0.3 mm / magnification 1.5
    run = ds.meta["runs"][0]
    assert run["sop_instance_uid"] == xa.SOPInstanceUID
    assert "magnification" in run["spacing_source"]
    for path in (tmp_path / "out").rglob("*"):  # no identifying value in the data set
        if path.is_file():
            assert b"PAT-SECRET-42" not in path.read_bytes()
            assert "PAT-SECRET-42" not in str(path)


def test_all_frames_get_empty_masks_where_unsegmented(xa_with_seg, tmp_path):
    src, _, masks = xa_with_seg
    cfg = DicomImportConfig(frames="all", spacing_mm=0.5, patient_ids="dicom")
    import_dicom(src, tmp_path / "out", cfg)
    ds = Dataset.load(tmp_path / "out")
    assert ds.patients == ["PAT-SECRET-42"]
    assert [r.frame_index for r in ds] == [0, 1, 2, 3]
    for rec in ds:
        expected = masks.get(rec.frame_index, np.zeros((32, 32), bool))
        np.testing.assert_array_equal(Dataset.read_mask(rec), expected)
        assert rec.spacing_mm == (0.5, 0.5)


def test_highdicom_seg_of_a_single_frame_source(tmp_path):
    src = tmp_path / "dicom"
    sc = make_sc(frame(7), patient_id="PAT-2")
    mask = box_mask(5, 20, 10, 12)
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Aortic root",
        segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical structure"),
        segmented_property_type=hd.sr.CodedConcept("91723000", "SCT", "Anatomical structure"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation([sc], mask[None], "BINARY", [desc], generate_uid(), 5, generate_uid(), 1,
                              "test", "model", "1", "sn")
    save(sc, src / "sc.dcm")
    seg.save_as(src / "seg.dcm")
    result = import_dicom(src, tmp_path / "out")
    ds = Dataset.load(tmp_path / "out")
    assert result.frames == 1
    np.testing.assert_array_equal(Dataset.read_mask(ds.records[0]), mask)
    np.testing.assert_array_equal(Dataset.read_image(ds.records[0]), frame(7))
    assert ds.records[0].spacing_mm == (PAPER_PIXEL_SPACING_MM, PAPER_PIXEL_SPACING_MM)  # no header spacing


def test_missing_source_is_named_or_skipped(tmp_path):
    src = tmp_path / "dicom"
    xa = make_xa(_frames(2))
    save(make_seg(xa, [(1, 1, box_mask(0, 3, 0, 3))]), src / "orphan.dcm")
    other = make_xa(_frames(2, seed=50), patient_id="B")
    save(other, src / "b_xa.dcm")
    save(make_seg(other, [(2, 1, box_mask(0, 3, 0, 3))]), src / "b_seg.dcm")
    with pytest.raises(DatasetError, match=rf"orphan\.dcm: referenced source .*{xa.SOPInstanceUID}"):
        import_dicom(src, tmp_path / "out")
    result = import_dicom(src, tmp_path / "out", DicomImportConfig(skip_unmatched=True))
    assert result.skipped == (src / "orphan.dcm",)
    assert [r.frame_index for r in Dataset.load(tmp_path / "out")] == [1]


def test_patients_pseudonymised_and_runs_ordered(tmp_path):
    src = tmp_path / "dicom"
    for pid, series in (("alpha", 2), ("alpha", 1), ("beta", 1)):
        xa = make_xa(_frames(1, seed=series * 10 + len(pid)), patient_id=pid, series_number=series)
        save(xa, src / f"{pid}_{series}.dcm")
        save(make_seg(xa, [(1, 1, box_mask(0, 2, 0, 2))]), src / f"{pid}_{series}_seg.dcm")
    import_dicom(src, tmp_path / "out")
    ds = Dataset.load(tmp_path / "out")
    runs = {(r["patient_id"], r["run_id"]): r for r in ds.meta["runs"]}
    assert sorted(ds.patients) == ["P001", "P002"]
    alpha = [p for (p, run), r in runs.items() if run == "run02"][0]  # only alpha has two runs
    first = pydicom.dcmread(src / "alpha_1.dcm", stop_before_pixels=True).SOPInstanceUID
    assert runs[(alpha, "run01")]["sop_instance_uid"] == first  # series 1 before series 2
    import_dicom(src, tmp_path / "again")  # deterministic pseudonyms
    assert json.loads((tmp_path / "again" / "dataset.json").read_text())["runs"] == ds.meta["runs"]


def test_segment_selection_and_fractional(tmp_path):
    xa = make_xa(_frames(1))
    a, b = box_mask(0, 5, 0, 5), box_mask(10, 15, 10, 15)
    seg = make_seg(xa, [(1, 1, a), (1, 2, b)], segments=((1, "Catheter"), (2, "aortic_root")))
    masks = read_segmentation(seg, ("aortic root",))
    assert masks.segment_numbers == (2,)
    np.testing.assert_array_equal(masks.frames[(xa.SOPInstanceUID, 1)], b)
    with pytest.raises(DatasetError, match=r"no segment labelled like.*Catheter"):
        read_segmentation(seg, ("aorta",))
    prob = np.zeros((32, 32), np.uint8)
    prob[0:4, 0:4] = 200
    prob[4:8, 0:4] = 100
    frac = make_seg(xa, [(1, 1, prob)], seg_type="FRACTIONAL")
    frac = pydicom.dcmread(save(frac, tmp_path / "frac.dcm"))
    got = read_segmentation(frac, ("aorta",)).frames[(xa.SOPInstanceUID, 1)]
    np.testing.assert_array_equal(got, box_mask(0, 4, 0, 4))  # >= 127.5 of 255


def test_seg_frame_number_out_of_range(tmp_path):
    src = tmp_path / "dicom"
    xa = make_xa(_frames(2))
    save(xa, src / "xa.dcm")
    save(make_seg(xa, [(5, 1, box_mask(0, 2, 0, 2))]), src / "seg.dcm")
    with pytest.raises(DatasetError, match=r"frame\(s\) \[5\].*which has 2 frame"):
        import_dicom(src, tmp_path / "out")


def test_to_uint8_scales_high_bit_depth_and_inverts_monochrome1():
    out = to_uint8(np.array([[0, 4095], [2048, 1024]], np.uint16), 12, monochrome1=True)
    np.testing.assert_array_equal(out, [[255, 0], [127, 191]])
    signed = to_uint8(np.array([[-2048, 2047]], np.int16), 12, signed=True)
    np.testing.assert_array_equal(signed, [[0, 255]])


def test_twelve_bit_monochrome1_run_is_imported_dark_vessels_dark(tmp_path):
    src = tmp_path / "dicom"
    stored = np.array([[[0, 4095] * 16] * 32], np.uint16)  # 1 frame, alternating columns
    xa = make_xa(stored, bits_stored=12, photometric="MONOCHROME1")
    save(xa, src / "xa.dcm")
    save(make_seg(xa, [(1, 1, box_mask(0, 1, 0, 1))]), src / "seg.dcm")
    import_dicom(src, tmp_path / "out")
    image = Dataset.read_image(Dataset.load(tmp_path / "out").records[0])
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image[0, :4], [255, 0, 255, 0])  # inverted, scaled to 8 bits


@pytest.mark.samples
def test_real_jpeg_xa_run_with_a_seg(samples_dir, tmp_path):
    """A real 96-frame JPEG-baseline XA cine, annotated on frames 10 and 50 by a SEG."""
    sample = samples_dir / "rubo_0002_XA_jpegbaseline_96f.dcm"
    src = tmp_path / "dicom"
    src.mkdir()
    (src / "xa.dcm").symlink_to(sample)
    header = pydicom.dcmread(sample, stop_before_pixels=True)
    rows, cols = int(header.Rows), int(header.Columns)
    m10 = box_mask(100, 300, 50, 200, size=(rows, cols))
    m50 = box_mask(0, 40, 0, cols, size=(rows, cols))
    save(make_seg(header, [(10, 1, m10), (50, 1, m50)]), src / "seg.dcm")
    result = import_dicom(src, tmp_path / "out")
    assert (result.frames, result.runs) == (2, 1)
    ds = Dataset.load(tmp_path / "out")
    reference = pydicom.pixels.pixel_array(sample, index=9)
    got = {r.frame_index: r for r in ds}
    assert set(got) == {9, 49}
    image = Dataset.read_image(got[9])
    assert image.shape == (rows, cols) and image.dtype == np.uint8
    assert np.abs(image.astype(int) - reference.astype(int)).max() <= 2  # decoder rounding only
    np.testing.assert_array_equal(Dataset.read_mask(got[9]), m10)
    np.testing.assert_array_equal(Dataset.read_mask(got[49]), m50)
