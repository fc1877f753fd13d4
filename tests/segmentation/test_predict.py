"""``predict_paths`` / ``taviseg predict``: images, data sets, DICOM runs -> PNGs, CSV, SEG."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from segmentation import metrics
from segmentation.errors import InferenceError
from segmentation.inference.config import InferenceConfig
from segmentation.predict import predict_paths
from tavidata.format import DatasetWriter
from taviseg.cli import main as cli_main
from tests.segmentation.conftest import smooth_frames

EAGER = InferenceConfig(backend="eager", device="cpu", batch_size=3)


def _rows(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_predict_on_images(linknet_folder, tmp_path):
    frames = smooth_frames(3, 90, 70, seed=7)
    for i, f in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"frame{i}.png"), f)
    cv2.imwrite(str(tmp_path / "deep.png"), (frames[0].astype(np.uint16) * 257))  # 16-bit PNG
    summary = predict_paths([tmp_path / "frame0.png", tmp_path / "frame1.png", tmp_path / "frame2.png",
                             tmp_path / "deep.png"], linknet_folder, tmp_path / "out", EAGER, spacing_mm=(0.5, 0.25))
    assert summary.frames == 4 and summary.sources == 4 and summary.backend == "eager"
    rows = _rows(summary.csv_path)
    assert [r["name"] for r in rows] == ["frame0", "frame1", "frame2", "deep"]
    for r in rows:
        mask = cv2.imread(str(tmp_path / "out" / "masks" / f"{r['name']}.png"), cv2.IMREAD_UNCHANGED) > 0
        assert mask.shape == (90, 70)
        assert int(r["area_px"]) == mask.sum()
        assert float(r["area_mm2"]) == pytest.approx(mask.sum() * 0.125, rel=1e-5)
        assert 0.0 <= float(r["confidence"]) <= 1.0 and r["dice"] == ""
        overlay = cv2.imread(str(tmp_path / "out" / "overlays" / f"{r['name']}.png"))
        assert overlay.shape == (90, 70, 3)
        if mask.any():  # the predicted outline is drawn in green
            assert ((overlay[..., 1] == 255) & (overlay[..., 0] == 0)).any()
    deep = cv2.imread(str(tmp_path / "out" / "masks" / "deep.png"), cv2.IMREAD_UNCHANGED)
    first = cv2.imread(str(tmp_path / "out" / "masks" / "frame0.png"), cv2.IMREAD_UNCHANGED)
    assert metrics.dice(deep > 0, first > 0) > 0.98  # the same picture in 16 bits
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["frames"] == 4


def test_predict_on_a_dataset_writes_metrics(linknet_folder, tmp_path):
    frames = smooth_frames(4, 80, 80, seed=8)
    rng = np.random.default_rng(8)
    with DatasetWriter(tmp_path / "ds", name="random") as w:
        for i, f in enumerate(frames):
            gt = np.zeros((80, 80), bool)
            r, c = rng.integers(10, 40, 2)
            gt[r:r + 30, c:c + 25] = True
            w.add(f"P{i // 2}", "run01", i % 2, f, gt, spacing_mm=(0.4, 0.3))
    summary = predict_paths([tmp_path / "ds"], linknet_folder, tmp_path / "out", EAGER)
    rows = _rows(summary.csv_path)
    assert summary.frames == 4 == summary.frames_with_ground_truth and len(rows) == 4
    from tavidata.format import Dataset

    ds = Dataset.load(tmp_path / "ds")
    for rec, row in zip(ds.records, rows):
        assert row["name"] == rec.frame_id.replace("/", "_")
        pred = cv2.imread(str(tmp_path / "out" / "masks" / f"{row['name']}.png"), cv2.IMREAD_UNCHANGED) > 0
        gt = Dataset.read_mask(rec)
        assert float(row["dice"]) == pytest.approx(metrics.dice(pred, gt), rel=1e-5)
        if pred.any():
            assert float(row["assd_mm"]) == pytest.approx(metrics.assd_mm(pred, gt, (0.4, 0.3)), rel=1e-5)
            assert float(row["hd95_mm"]) >= float(row["assd_mm"])
        assert row["spacing_row_mm"] == "0.4" and row["spacing_col_mm"] == "0.3"
    assert summary.mean_dice == pytest.approx(np.mean([float(r["dice"]) for r in rows]), rel=1e-6)


def test_predict_on_a_dicom_run_writes_a_seg(linknet_folder, tmp_path, samples_dir):
    import pydicom

    src = samples_dir / "wg04_XA1_J2KI.dcm"
    summary = predict_paths([src], linknet_folder, tmp_path / "out", EAGER)
    assert summary.frames >= 1 and len(summary.seg_files) == 1
    seg = pydicom.dcmread(summary.seg_files[0])
    source = pydicom.dcmread(src, stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "8128003"
    rows = _rows(summary.csv_path)
    assert rows[0]["spacing_source"] and int(rows[0]["rows"]) == source.Rows


def test_bad_inputs_are_named(linknet_folder, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InferenceError, match="notes.txt: unsupported input"):
        predict_paths([tmp_path / "notes.txt"], linknet_folder, tmp_path / "out", EAGER)
    with pytest.raises(InferenceError, match="missing.png: no such file"):
        predict_paths([tmp_path / "missing.png"], linknet_folder, tmp_path / "out", EAGER)


def test_cli_predict(linknet_folder, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), smooth_frames(1, 64, 64, seed=9)[0])
    cv2.imwrite(str(tmp_path / "gt.png"), np.full((64, 64), 255, np.uint8))
    (tmp_path / "gts").mkdir()
    cv2.imwrite(str(tmp_path / "gts" / "a.png"), np.full((64, 64), 255, np.uint8))
    code = cli_main(["predict", str(tmp_path / "a.png"), "--model", str(linknet_folder), "--out",
                     str(tmp_path / "out"), "--backend", "eager", "--set", "postprocess.fill_holes=false",
                     "--gt-dir", str(tmp_path / "gts"), "--spacing-mm", "0.39"])
    assert code == 0
    assert "1 frames from 1 sources" in capsys.readouterr().out
    row = _rows(tmp_path / "out" / "predictions.csv")[0]
    pred = cv2.imread(str(tmp_path / "out" / "masks" / "a.png"), cv2.IMREAD_UNCHANGED) > 0
    assert float(row["dice"]) == pytest.approx(metrics.dice(pred, np.ones((64, 64), bool)), rel=1e-5)
    assert cli_main(["predict", str(tmp_path / "a.png"), "--model", str(tmp_path), "--out",
                     str(tmp_path / "o2")]) == 1
    assert "not a taviseg model folder" in capsys.readouterr().err
    assert cli_main(["predict", str(tmp_path / "a.png"), "--model", str(linknet_folder), "--out",
                     str(tmp_path / "o3"), "--set", "postprocess.fill_hole=false"]) == 1
    assert "unknown key" in capsys.readouterr().err
