"""`taviseg predict` writes the per-frame quality (predictions.csv) and the run verdicts (summary.json)."""

from __future__ import annotations

import csv
import json

import cv2
import pytest

from segmentation.inference.config import InferenceConfig
from segmentation.inference.engine import InferenceEngine
from segmentation.predict import predict_paths
from segmentation.qc.store import NOT_AVAILABLE, save_quality_model
from tests.segmentation.conftest import make_model_folder, smooth_frames
from tests.segmentation.test_qc_assess import make_qc

CPU = InferenceConfig(device="cpu", backend="eager", host_threads=0)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def images(folder):
    folder.mkdir()
    for i, img in enumerate(smooth_frames(3, 64, 64, seed=4)):
        cv2.imwrite(str(folder / f"f{i}.png"), img)
    return folder


def read_rows(out):
    with (out / "predictions.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_predict_without_qc_data_says_not_available(tmp_path):
    model = make_model_folder(tmp_path / "m", size=64)
    predict_paths([images(tmp_path / "in")], model, tmp_path / "out", CPU, spacing_mm=(0.5, 0.5))
    rows = read_rows(tmp_path / "out")
    assert len(rows) == 3 and all(r["quality"] == NOT_AVAILABLE and r["flagged"] == "" for r in rows)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["quality_available"] is False and summary["median_quality"] is None


def test_predict_writes_quality_flags_and_reasons(tmp_path):
    model = make_model_folder(tmp_path / "m", size=64)
    engine = InferenceEngine.from_folder(model, device="cpu", backend="eager", host_threads=0)
    save_quality_model(model, make_qc(engine, flag_below=1.0))  # every frame flagged
    predict_paths([images(tmp_path / "in")], model, tmp_path / "out", CPU, spacing_mm=(0.5, 0.5))
    rows = read_rows(tmp_path / "out")
    assert all(0.0 <= float(r["quality"]) <= 1.0 and r["flagged"] == "1" for r in rows)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["quality_available"] is True and summary["flagged"] == 3
    assert summary["median_quality"] == pytest.approx(sorted(float(r["quality"]) for r in rows)[1], abs=1e-4)
