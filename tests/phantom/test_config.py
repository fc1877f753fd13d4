"""Phantom presets: typed, validated, and rejecting bad keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from tavicore.config import ConfigError, from_dict
from tavidata.phantom.cohort import frame_plan
from tavidata.phantom.config import PhantomConfig, load_phantom_preset, preset_names


def test_presets_load_with_the_documented_sizes() -> None:
    assert {"tiny", "demo", "paper"} <= set(preset_names())
    tiny = load_phantom_preset("tiny")
    assert (tiny.patients, tiny.runs_per_patient, tiny.frames_per_run, tiny.size) == (4, 1, (4, 4), 256)
    paper = load_phantom_preset("paper")
    assert (paper.patients, paper.size) == (80, 1000)
    assert paper.pixel_spacing_mm == pytest.approx(0.390625)
    plan = frame_plan(paper)
    assert sum(map(sum, plan)) == paper.total_frames == 2854
    lo, hi = paper.frames_per_run
    assert all(lo <= n <= hi for runs in plan for n in runs)
    # default spacing keeps the paper's field of view at any size
    assert tiny.pixel_spacing_mm == pytest.approx(0.390625 * 1000 / 256)


def test_unknown_or_mistyped_keys_are_errors_naming_them(tmp_path: Path) -> None:
    bad = tmp_path / "phantom.yaml"
    bad.write_text("mine:\n  patients: 3\n  frame_per_run: [2, 4]\n")
    with pytest.raises(ConfigError, match="frame_per_run.*did you mean 'frames_per_run'"):
        load_phantom_preset("mine", path=bad)
    bad.write_text("mine:\n  patients: many\n")
    with pytest.raises(ConfigError, match="patients"):
        load_phantom_preset("mine", path=bad)
    bad.write_text("mine:\n  difficulty: {easy: 1.0, brutal: 2.0}\n")
    with pytest.raises(ConfigError, match="brutal"):
        load_phantom_preset("mine", path=bad)
    with pytest.raises(ConfigError, match="unknown phantom preset 'nope'.*tiny"):
        load_phantom_preset("nope")


def test_cross_field_checks() -> None:
    with pytest.raises(ConfigError, match="frames_per_run"):
        from_dict(PhantomConfig, {"frames_per_run": [5, 2]})
    with pytest.raises(ConfigError, match="total_frames"):
        from_dict(PhantomConfig, {"patients": 2, "frames_per_run": [2, 3], "total_frames": 50})
    with pytest.raises(ConfigError, match="must not all be zero"):
        from_dict(PhantomConfig, {"stages": {"overview": 0, "positioning": 0, "deployment": 0, "control": 0}})
    with pytest.raises(ConfigError, match="size"):
        from_dict(PhantomConfig, {"size": 32})
