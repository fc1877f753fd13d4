"""The phantom generator: deterministic, fast, moving, and statistically like real TAVI frames."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tavidata.phantom import PhantomConfig, generate_run, patient_seed
from tavidata.phantom.config import STAGES
from tavidata.phantom.stats import frame_stats, summarize


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    cfg = PhantomConfig(size=192, frames_per_run=(3, 3))
    a = generate_run(cfg, 1234, 0)
    b = generate_run(cfg, 1234, 0)
    assert a.frames.tobytes() == b.frames.tobytes()
    assert a.masks.tobytes() == b.masks.tobytes()
    assert a.meta == b.meta
    c = generate_run(cfg, 1235, 0)
    d = generate_run(cfg, 1234, 1)
    assert not np.array_equal(a.frames, c.frames) and not np.array_equal(a.frames, d.frames)
    assert patient_seed(cfg, 0) == patient_seed(cfg, 0) != patient_seed(dataclasses.replace(cfg, seed=1), 0)


def test_run_shapes_types_and_masks_follow_the_motion() -> None:
    cfg = PhantomConfig(size=256, frames_per_run=(6, 6), frame_stride=(2, 2))
    run = generate_run(cfg, 77, 0)
    assert run.frames.shape == run.masks.shape == (6, 256, 256)
    assert run.frames.dtype == np.uint8 and run.masks.dtype == bool
    assert run.spacing_mm == pytest.approx((390.625 / 256, 390.625 / 256))
    assert run.stage in STAGES and run.meta["difficulty"] in ("easy", "medium", "hard")
    # cardiac + respiratory motion: the mask moves between frames, its size hardly changes
    centroids = np.array([np.argwhere(m).mean(axis=0) for m in run.masks])
    shifts = np.linalg.norm(centroids - centroids[0], axis=1)
    assert shifts.max() > 0.5
    areas = run.masks.reshape(6, -1).mean(axis=1)
    assert areas.max() / areas.min() < 1.3
    # the mask follows the contrast in every frame: darker inside than in a ring around it
    for f, m in zip(run.frames, run.masks):
        assert frame_stats(f, m, run.spacing_mm[0]).contrast > 5.0


def test_every_stage_can_be_drawn_with_its_devices() -> None:
    cfg = PhantomConfig(size=160, frames_per_run=(1, 1))
    seen = {}
    for stage in STAGES:
        run = generate_run(cfg, 99, 0, stage=stage)
        assert run.stage == stage
        seen[stage] = run.meta["devices"]
    assert seen["positioning"].get("delivery_system") and seen["deployment"].get("delivery_system")
    assert "released" in seen["deployment"]
    with pytest.raises(ValueError, match="unknown stage 'implant'.*overview"):
        generate_run(cfg, 99, 0, stage="implant")


def test_statistics_match_real_tavi_frames() -> None:
    """Measured on real frames: mean ~130, std ~36, root 20-35 darker, 7-14 % of the frame,
    upper half, often leaving at the top edge, 43-86 mm wide (generous bounds here)."""
    cfg = PhantomConfig(size=512, frames_per_run=(2, 2), seed=3)
    stats = []
    for p in range(14):
        run = generate_run(cfg, patient_seed(cfg, p), 0)
        stats += [frame_stats(f, m, run.spacing_mm[0]) for f, m in zip(run.frames, run.masks)]
    s = summarize(stats)
    assert 110 <= s["mean"]["median"] <= 150
    assert 25 <= s["std"]["median"] <= 48
    assert 18 <= s["contrast"]["median"] <= 40
    assert np.mean([x.contrast > 8 for x in stats]) >= 0.9
    assert 0.05 <= s["area_fraction"]["median"] <= 0.15
    assert all(0.02 <= x.area_fraction <= 0.25 for x in stats)
    assert np.mean([x.touches_top for x in stats]) >= 0.5
    assert s["centroid_row_fraction"]["median"] < 0.5
    assert 43 <= s["width_mm"]["median"] <= 86
