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
