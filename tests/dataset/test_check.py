"""The checker: counts, coverage, and each problem kind reported with the right path."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tavidata.check import ProblemKind, check_dataset
from tavidata.errors import DatasetError
from tavidata.format import Dataset
from tavidata.splits import make_splits, save_splits
from tests.dataset.synthetic import write_dataset


def _rows(root: Path) -> list[dict]:
    with (root / "manifest.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _write_rows(root: Path, rows: list[dict]) -> None:
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _kinds(report) -> list[tuple[ProblemKind, str]]:
    return [(p.kind, p.path) for p in report.problems]


def test_clean_data_set_summary(small_dataset):
    report = check_dataset(small_dataset)
    assert report.ok, report.summary()
    assert (report.frames, report.patients, report.runs) == (6, 3, 1 * 3)
    assert report.frames_per_patient == {"min": 1, "median": 2.0, "max": 3}
    ds = Dataset.load(small_dataset)
    expected = np.mean([100.0 * Dataset.read_mask(r).mean() for r in ds])
    assert report.mask_coverage_pct == pytest.approx(expected)
    assert report.empty_masks == 0
    text = report.summary()
    assert "frames: 6" in text and "problems: none" in text
    assert report.to_dict()["ok"] is True


def test_each_file_problem_is_reported_with_its_path(small_dataset):
    root = small_dataset
    recs = {r.frame_id: r for r in Dataset.load(root)}
    missing = recs["P001/run01_0000"].mask
    missing.unlink()
    small = recs["P001/run01_0001"].mask
    cv2.imwrite(str(small), np.zeros((16, 20), np.uint8))
    grey = recs["P002/run01_0000"].mask
    values = np.zeros((32, 32), np.uint8)
    values[0, :3] = (0, 128, 255)
    values[1, 0] = 7
    cv2.imwrite(str(grey), values)
    broken = recs["P002/run01_0001"].image
    broken.write_bytes(b"\\x89PNG garbage")
    copy = recs["P003/run01_0000"].image
    shutil.copyfile(recs["P002/run01_0002"].image, copy)
    report = check_dataset(root)
    got = _kinds(report)
    assert (ProblemKind.MISSING_MASK, str(missing)) in got
    assert (ProblemKind.SIZE_MISMATCH, str(small)) in got
    assert (ProblemKind.NON_BINARY_MASK, str(grey)) in got
    assert (ProblemKind.UNREADABLE, str(broken)) in got
    assert (ProblemKind.DUPLICATE_FRAME, str(copy)) in got
    assert len(got) == 5, report.summary()
    msg = {p.kind: p.message for p in report.problems}
    assert "20x16" in msg[ProblemKind.SIZE_MISMATCH] and "32x32" in msg[ProblemKind.SIZE_MISMATCH]
    assert "[0, 7, 128, 255]" in msg[ProblemKind.NON_BINARY_MASK]
    assert str(recs["P002/run01_0002"].image) in msg[ProblemKind.DUPLICATE_FRAME]
    assert "ANOTHER PATIENT" in msg[ProblemKind.DUPLICATE_FRAME]
    assert not report.ok and "problems: 5" in report.summary()


def test_manifest_problems(small_dataset):
    root = small_dataset
    rows = _rows(root)
    rows[1]["patient_id"] = ""  # empty patient id
    rows[3]["patient_id"] = "P009"  # disagrees with the folder
    rows[5]["spacing_row_mm"] = "0"
    rows.append(dict(rows[2]))  # frame listed twice
    _write_rows(root, rows)
    report = check_dataset(root)
    got = _kinds(report)
    manifest = str(root / "manifest.csv")
    assert (ProblemKind.PATIENT_ID, f"{manifest}:3") in got
    assert (ProblemKind.PATIENT_ID, str(root / rows[3]["image"])) in got
    assert (ProblemKind.PATIENT_ID, str(root / rows[3]["mask"])) in got
    assert (ProblemKind.BAD_SPACING, f"{manifest}:7") in got
    assert (ProblemKind.DUPLICATE_RECORD, f"{manifest}:8") in got
    assert len(got) == 5, report.summary()
    dup = [p for p in report.problems if p.kind is ProblemKind.DUPLICATE_RECORD][0]
    assert "line 4" in dup.message


def test_missing_image_and_no_mask_in_manifest(small_dataset):
    rows = _rows(small_dataset)
    image = small_dataset / rows[0]["image"]
    image.unlink()
    rows[1]["mask"] = ""
    _write_rows(small_dataset, rows)
    got = _kinds(check_dataset(small_dataset))
    assert (ProblemKind.MISSING_IMAGE, str(image)) in got
    assert (ProblemKind.MISSING_MASK, str(small_dataset / rows[1]["image"])) in got


def test_unloadable_manifest_and_leaky_splits(tmp_path):
    root = write_dataset(tmp_path / "ds", {"P001": 2, "P002": 3, "P003": 1, "P004": 1})
    save_splits(make_splits(Dataset.load(root), k=2, seed=0, val_fraction=0.0), root)
    assert check_dataset(root).ok
    rows = [r for r in _rows(root) if r["patient_id"] != "P003"]
    _write_rows(root, rows)  # a patient disappeared after splitting
    report = check_dataset(root)
    assert _kinds(report) == [(ProblemKind.SPLITS, str(root / "splits.json"))]
    assert "P003" in report.problems[0].message
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "dataset.json").write_text('{"format": "taviseg-dataset", "version": 9}')
    report = check_dataset(bad)
    assert report.problems[0].kind is ProblemKind.MANIFEST and "version 9" in report.problems[0].message
    with pytest.raises(DatasetError, match="not found"):
        check_dataset(tmp_path / "nowhere")


def test_empty_masks_counted(tmp_path):
    root = write_dataset(tmp_path / "ds", {"A": 1})
    rec = Dataset.load(root).records[0]
    cv2.imwrite(str(rec.mask), np.zeros((32, 32), np.uint8))
    report = check_dataset(root)
    assert report.ok and report.empty_masks == 1 and report.mask_coverage_pct == 0.0
