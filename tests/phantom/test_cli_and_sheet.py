"""``taviseg phantom`` on the tiny preset, and the contact sheet."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from tavidata.format import Dataset
from tavidata.phantom.contact_sheet import OUTLINE_BGR, make_contact_sheet
from tavidata.phantom.stats import frame_stats, summarize
from taviseg.cli import main


def test_cli_tiny_preset(tmp_path, capsys) -> None:
    out = tmp_path / "cohort"
    assert main(["phantom", "--preset", "tiny", "--out", str(out), "--seed", "7", "--no-progress", "--dicom"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "phantom tiny: 4 patients, 4 runs, 16 frames at 256x256 px" in printed
    data = Dataset.load(out)
    assert len(data) == 16 and data.patients == ["P001", "P002", "P003", "P004"]
    assert {r.stage for r in data.records} <= {"overview", "positioning", "deployment", "control"}
    assert json.loads((out / "dataset.json").read_text())["config"]["seed"] == 7
    assert len(json.loads((out / "runs.json").read_text())) == 4
    assert len(list((out / "dicom").glob("*/*.dcm"))) == 4
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] >= 256
    # stats.json: the statistics of each run's middle frame, as measured again from the written PNGs
    stats = json.loads((out / "stats.json").read_text())
    middles = []
    for pid in data.patients:
        records = sorted((r for r in data.records if r.patient_id == pid), key=lambda r: r.frame_index)
        mid = records[len(records) // 2]
        middles.append(frame_stats(Dataset.read_image(mid), Dataset.read_mask(mid), mid.spacing_mm[0]))
    again = summarize(middles)
    assert stats["summary"].keys() == again.keys() and "the 4 runs" in stats["measured"]
    for name, values in again.items():
        assert stats["summary"][name] == pytest.approx(values, rel=1e-5), name  # spacing as written in the manifest
    assert 110 <= stats["summary"]["mean"]["median"] <= 150 and stats["real_tavi_ranges"]["mean"] == [110, 150]
    assert f"mean {again['mean']['median']:.0f} (" in printed and "leaving the field at the top in" in printed
    # refuses to overwrite without --overwrite; unknown preset -> exit 1 with the valid names
    assert main(["phantom", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 1
    assert main(["phantom", "--preset", "huge", "--out", str(tmp_path / "x"), "--no-progress"]) == 1
    assert "valid presets: tiny" in capsys.readouterr().err


def test_contact_sheet_draws_outlines(tmp_path) -> None:
    image = np.full((100, 100), 120, np.uint8)
    mask = np.zeros((100, 100), bool)
    mask[20:60, 30:70] = True
    path = make_contact_sheet([(image, mask, "a"), (image, None, "b"), (image, mask, "")], tmp_path / "s.png",
                              columns=2, tile=64)
    sheet = cv2.imread(str(path))
    assert sheet.shape == (128, 128, 3)
    green = np.all(np.abs(sheet.astype(int) - OUTLINE_BGR) < 40, axis=2)
    assert green[:64, :64].any() and not green[:64, 64:].any()
    with pytest.raises(ValueError, match="no frames"):
        make_contact_sheet([], tmp_path / "e.png")
