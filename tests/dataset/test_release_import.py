"""The release importer: images/ + masks/ with matching names -> data set."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tavicore.config import ConfigError
from tavidata.errors import DatasetError
from tavidata.format import PAPER_PIXEL_SPACING_MM, Dataset
from tests.dataset.synthetic import box_mask, frame
from training.importers import ReleaseImportConfig, import_release
from training.importers.masks import mask_from_array


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


@pytest.fixture
def release(tmp_path: Path) -> tuple[Path, dict]:
    """A release folder with four encodings of masks and three image formats."""
    src = tmp_path / "release"
    expected = {}
    m1 = box_mask(2, 10, 3, 20)
    _write(src / "images" / "P001_0000.png", frame(1))
    _write(src / "masks" / "P001_0000.png", m1.astype(np.uint8))  # 0/1
    expected[("P001", "run01", 0)] = (frame(1), m1)
    m2 = box_mask(5, 30, 0, 7)
    _write(src / "images" / "P001_0001.png", frame(2))
    _write(src / "masks" / "P001_0001.png", m2.astype(np.uint8) * 255)  # 0/255
    expected[("P001", "run01", 1)] = (frame(2), m2)
    m3 = box_mask(0, 32, 16, 32)
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[m3] = (0, 0, 255)  # BGR: pure red in RGB
    _write(src / "images" / "12_34.bmp", frame(3))
    _write(src / "masks" / "12_34.png", colour)  # other extension than the image
    expected[("12", "run01", 34)] = (frame(3), m3)
    m4 = box_mask(10, 12, 10, 12)
    _write(src / "images" / "P003_run2_0005.tiff", frame(4))
    _write(src / "masks" / "P003_run2_0005.tiff", m4.astype(np.uint8) * 255)
    expected[("P003", "run2", 5)] = (frame(4), m4)
    return src, expected


def test_imports_every_encoding_and_name(release, tmp_path):
    src, expected = release
    result = import_release(src, tmp_path / "out")
    assert (result.frames, result.patients, result.runs) == (4, 3, 3)
    ds = Dataset.load(tmp_path / "out")
    assert sorted(ds.patients) == ["12", "P001", "P003"]
    got = {(r.patient_id, r.run_id, r.frame_index): r for r in ds}
    assert set(got) == set(expected)
    for key, (image, mask) in expected.items():
        rec = got[key]
        np.testing.assert_array_equal(Dataset.read_image(rec), image)
        np.testing.assert_array_equal(Dataset.read_mask(rec), mask)
        assert rec.spacing_mm == (PAPER_PIXEL_SPACING_MM, PAPER_PIXEL_SPACING_MM)
    assert ds.meta["name"] == "release"
    assert ds.meta["source"]["importer"] == "release"


def test_unmatched_name_is_an_error_naming_the_file_or_skipped(release, tmp_path):
    src, _ = release
    bad = _write(src / "images" / "notes_scan.png", frame(9))
    _write(src / "masks" / "notes_scan.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(DatasetError, match="notes_scan.png.*does not match"):
        import_release(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert not list(tmp_path.glob(".out.partial-*"))
    result = import_release(src, tmp_path / "out", ReleaseImportConfig(skip_unmatched=True))
    assert result.skipped == (bad,)
    assert result.frames == 4


def test_missing_mask_names_the_image(release, tmp_path):
    src, _ = release
    (src / "masks" / "P001_0001.png").unlink()
    with pytest.raises(DatasetError, match=r"P001_0001\.png: no mask"):
        import_release(src, tmp_path / "out")


def test_size_mismatch_names_both_files_and_sizes(release, tmp_path):
    src, _ = release
    _write(src / "masks" / "P001_0000.png", np.zeros((16, 20), np.uint8))
    with pytest.raises(DatasetError, match=r"P001_0000\.png: mask size 20x16 differs .* size 32x32"):
        import_release(src, tmp_path / "out")


def test_duplicate_frame_number_names_both_files(release, tmp_path):
    src, _ = release
    _write(src / "images" / "P001_01.png", frame(7))
    _write(src / "masks" / "P001_01.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(DatasetError, match=r"frame 1 is also given by .*P001_"):
        import_release(src, tmp_path / "out")


def test_pattern_without_frame_numbers_by_sorted_name(tmp_path):
    src = tmp_path / "rel"
    for i, stem in enumerate(["caseA-z", "caseA-b", "caseB-q"]):
        _write(src / "images" / f"{stem}.png", frame(i))
        _write(src / "masks" / f"{stem}.png", np.zeros((32, 32), np.uint8))
    cfg = ReleaseImportConfig(pattern=r"case(?P<patient>[A-Z])-\w+")
    import_release(src, tmp_path / "out", cfg)
    ds = Dataset.load(tmp_path / "out")
    got = {(r.patient_id, r.frame_index): Dataset.read_image(r) for r in ds}
    np.testing.assert_array_equal(got[("A", 0)], frame(1))  # caseA-b sorts before caseA-z
    np.testing.assert_array_equal(got[("A", 1)], frame(0))
    np.testing.assert_array_equal(got[("B", 0)], frame(2))


def test_pattern_must_have_a_patient_group():
    with pytest.raises(ConfigError, match="patient"):
        ReleaseImportConfig(pattern=r"(?P<frame>\d+)")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        ReleaseImportConfig(pattern=r"(?P<patient>")


def test_existing_output_needs_overwrite(release, tmp_path):
    src, _ = release
    import_release(src, tmp_path / "out")
    with pytest.raises(DatasetError, match="already exists"):
        import_release(src, tmp_path / "out")
    (src / "images" / "P003_run2_0005.tiff").unlink()
    result = import_release(src, tmp_path / "out", overwrite=True)
    assert result.frames == 3 and len(Dataset.load(tmp_path / "out")) == 3
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a taviseg data set"):
        import_release(src, foreign, overwrite=True)
    assert (foreign / "keep.txt").exists()


def test_mask_colour_selects_one_class(tmp_path):
    src = tmp_path / "rel"
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[0:10, :] = (0, 255, 0)  # green (BGR)
    colour[20:32, :] = (0, 0, 255)  # red (BGR)
    _write(src / "images" / "P1_0.png", frame(0))
    _write(src / "masks" / "P1_0.png", colour)
    import_release(src, tmp_path / "out", ReleaseImportConfig(mask_color=(255, 0, 0)))
    mask = Dataset.read_mask(Dataset.load(tmp_path / "out").records[0])
    np.testing.assert_array_equal(mask, box_mask(20, 32, 0, 32))


def test_mask_decoding_rules():
    jpeg_like = np.array([[0, 3, 120], [130, 250, 255]], np.uint8)
    np.testing.assert_array_equal(mask_from_array(jpeg_like), [[0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(mask_from_array(np.array([[0, 1]], np.uint8)), [[0, 1]])
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 1, 3] = 255
    np.testing.assert_array_equal(mask_from_array(rgba), [[0, 1], [0, 0]])
    with pytest.raises(DatasetError, match="grayscale"):
        mask_from_array(jpeg_like, color=(255, 0, 0))
