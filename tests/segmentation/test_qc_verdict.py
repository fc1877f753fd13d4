"""The run-level verdict: counts, pass/fail at half the frames flagged, text within 64 characters."""

from __future__ import annotations

import numpy as np

from segmentation.qc.verdict import run_verdict


def test_verdict_counts_and_text():
    q = np.array([0.9, 0.2, 0.95, 0.1, 0.85, 0.9, 0.9, 0.9])
    flagged = q < 0.5
    v = run_verdict(q, flagged, [None] * 8)
    assert (v.status, v.flagged, v.frames, v.no_root) == ("pass", 2, 8, 0)
    assert v.text == "AI outline, 2 of 8 frames uncertain"
    bad = run_verdict(q, np.array([True] * 4 + [False] * 4), [None] * 8)
    assert bad.status == "fail" and bad.text.endswith("(run failed QC)") and len(bad.text) <= 64
    none = run_verdict(q[:3], np.ones(3, bool), ["no contrast"] * 3)
    assert none.status == "fail" and none.text == "AI: no aortic root found in 3 frames"
    assert run_verdict(None, np.zeros(3, bool), [None] * 3).status == "unknown"
    assert run_verdict(q, flagged, [None] * 8).to_json_dict()["median_quality"] == float(np.median(q))


def test_verdict_text_of_a_single_frame():
    assert run_verdict(np.array([0.1]), np.array([True]), ["no contrast"]).text == "AI: no aortic root found in 1 frame"
    assert run_verdict(np.array([0.9]), np.array([False]), [None]).text == "AI outline, 0 of 1 frame uncertain"


def test_frames_without_a_root_are_counted_apart_from_the_uncertain_ones():
    # a run that starts before the injection: 2 frames answered "no root here", 1 uncertain outline
    q = np.array([0.1, 0.1, 0.3, 0.9, 0.9, 0.95, 0.9, 0.9])
    reasons = ["nothing segmented", "nothing segmented"] + [None] * 6
    v = run_verdict(q, q < 0.5, reasons)
    assert (v.status, v.flagged, v.no_root) == ("pass", 3, 2)
    assert v.text == "AI outline, 1 of 8 frames uncertain, 2 no root"
    long = run_verdict(np.full(40, 0.1), np.ones(40, bool), ["nothing segmented"] * 28 + [None] * 12)
    assert long.status == "fail" and long.text.startswith("AI outline, 12 of 40 frames uncertain, 28 no root")
    assert len(long.text) <= 64
