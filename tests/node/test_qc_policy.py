"""The node's QC policy (processing.qc: mark | withhold | off) on a run with low-quality frames:
the SEG, the SR and the SeriesDescription each policy gives; every object dciodvfy-clean."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pydicom
import pytest

from dicom_node.config import ProcessingConfig, load_node_config
from dicom_node.errors import NotSegmentable
from dicom_node.isolation import _unpack
from dicom_node.node import Node
from dicom_node.pipeline import ModelPipeline, qc_frame_counts
from dicom_node.spool import StoredInstance
from segmentation.inference.config import InferenceConfig
from segmentation.inference.engine import InferenceEngine
from segmentation.qc.store import save_quality_model
from testkit.node import base_config, journal_counts, make_xa, send, wait_until, write_config
from tests.dicom.checks import (
    PRIVATE_SCHEME_WARNING,
    SOURCE_INHERITED_WARNINGS,
    reread,
    validate,
)
from tests.segmentation.conftest import make_model_folder
from tests.segmentation.test_qc_assess import make_qc

CPU = InferenceConfig(backend="eager", device="cpu")
FRAMES = 5
FLAGGED = 2
ALLOWED = (*SOURCE_INHERITED_WARNINGS, PRIVATE_SCHEME_WARNING)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _stored(path, ds) -> StoredInstance:
    return StoredInstance(id=1, path=path, kind="image", sop_instance_uid=str(ds.SOPInstanceUID),
                          sop_class_uid=str(ds.SOPClassUID), study_instance_uid=str(ds.StudyInstanceUID),
                          frames=int(ds.NumberOfFrames), size_bytes=path.stat().st_size)


def sr_frames(sr: pydicom.Dataset) -> dict[int, dict]:
    """Per measured frame: its certainty (%) and the 99TAVISEG codes of its measurement group."""
    out: dict[int, dict] = {}

    def walk(items) -> None:
        for item in items:
            children = list(item.get("ContentSequence", []))
            ids = [re.fullmatch(r"aortic root, frame (\d+)", str(c.get("TextValue", ""))) for c in children]
            ids = [m for m in ids if m]
            if ids:
                entry = out.setdefault(int(ids[0].group(1)), {"certainty": None, "qc": []})
                for c in children:
                    name = c.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in c else ""
                    if name == "Certainty of Finding":
                        entry["certainty"] = float(c.MeasuredValueSequence[0].NumericValue)
                    code = c.get("ConceptCodeSequence")
                    if code and code[0].CodingSchemeDesignator == "99TAVISEG":
                        entry["qc"].append(str(code[0].CodeValue))
            walk(children)

    walk(sr.ContentSequence)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A model folder with QC data whose flag_below flags exactly FLAGGED of the run's frames."""
    tmp = tmp_path_factory.mktemp("qcpolicy")
    folder = make_model_folder(tmp / "model", size=64)
    engine = InferenceEngine.from_folder(folder, device="cpu", backend="eager", host_threads=0)
    ds = make_xa(tmp / "run.dcm", frames=FRAMES, size=64, seed=3)
    qc = make_qc(engine, flag_below=0.0, frames=ds.pixel_array)
    save_quality_model(folder, qc)
    probe = ModelPipeline(ProcessingConfig(model_folder=folder, inference=CPU, outputs=("seg", "sr"), qc="mark"))
    _seg, sr = [o.dataset for o in probe.process(_stored(tmp / "run.dcm", ds))]
    quality = sorted(v["certainty"] / 100 for v in sr_frames(sr).values())
    assert len(quality) == FRAMES and quality[FLAGGED - 1] < quality[FLAGGED], quality
    save_quality_model(folder, dataclasses.replace(qc, flag_below=(quality[FLAGGED - 1] + quality[FLAGGED]) / 2))
    return folder, tmp / "run.dcm", ds, tmp


def run_policy(setup, policy: str, outputs=("seg", "sr")):
    return {o.kind: o.dataset for o in run_objects(setup, policy, outputs)}


def run_objects(setup, policy: str, outputs=("seg", "sr")):
    folder, path, ds, _ = setup
    pipeline = ModelPipeline(ProcessingConfig(model_folder=folder, inference=CPU, outputs=outputs, qc=policy))
    return pipeline.process(_stored(path, ds))


def seg_masks(seg: pydicom.Dataset) -> np.ndarray:
    return reread(seg).pixel_array.reshape(FRAMES, 64, 64).astype(bool)


def test_mark_segments_every_frame_and_names_the_uncertain_ones(setup):
    out = run_policy(setup, "mark")
    seg, sr = out["seg"], out["sr"]
    text = f"AI outline, {FLAGGED} of {FRAMES} frames uncertain"
    assert seg.SeriesDescription == text and seg.ContentDescription == text
    frames = sr_frames(sr)
    flagged = sorted(n for n, v in frames.items() if "QC-UNCERTAIN" in v["qc"])
    assert len(flagged) == FLAGGED
    assert all(v["certainty"] is not None for v in frames.values())
    off = run_policy(setup, "off")["seg"]
    assert np.array_equal(seg_masks(seg), seg_masks(off))  # marking changes no outline
    validate(seg, setup[3], "seg-mark", allowed=ALLOWED)
    validate(sr, setup[3], "sr-mark", allowed=ALLOWED)


def test_withhold_empties_the_uncertain_frames(setup):
    out = run_policy(setup, "withhold")
    seg, sr = out["seg"], out["sr"]
    assert seg.SeriesDescription == f"AI outline, {FLAGGED} of {FRAMES} frames uncertain"
    frames = sr_frames(sr)
    withheld = sorted(n for n, v in frames.items() if "QC-WITHHELD" in v["qc"])
    assert len(withheld) == FLAGGED
    masks = seg_masks(seg)
    marked = seg_masks(run_policy(setup, "mark")["seg"])
    for n in range(1, FRAMES + 1):
        if n in withheld:
            assert not masks[n - 1].any()
        else:
            assert np.array_equal(masks[n - 1], marked[n - 1])
    validate(seg, setup[3], "seg-withhold", allowed=ALLOWED)
    validate(sr, setup[3], "sr-withhold", allowed=ALLOWED)


def test_withhold_sends_no_seg_when_the_run_fails(setup):
    folder = setup[0]
    from segmentation.qc.store import load_quality_model

    qc = load_quality_model(folder)
    try:
        save_quality_model(folder, dataclasses.replace(qc, flag_below=1.0))  # every frame flagged
        with pytest.raises(NotSegmentable, match="withheld"):
            run_policy(setup, "withhold")
        out = run_policy(setup, "mark")  # mark still segments every frame, says the run failed
        assert out["seg"].SeriesDescription == f"AI outline, {FRAMES} of {FRAMES} frames uncertain (run failed QC)"
    finally:
        save_quality_model(folder, qc)


def test_off_is_the_plain_output(setup):
    out = run_policy(setup, "off")
    assert out["seg"].SeriesDescription == "AI aortic root segmentation"
    assert all(v["qc"] == [] for v in sr_frames(out["sr"]).values())
    validate(out["sr"], setup[3], "sr-off", allowed=ALLOWED)


def test_policy_is_checked_by_the_config():
    from tavicore.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="qc"):
        from_dict(ProcessingConfig, {"qc": "sometimes"}, source="node.yaml")
    assert ProcessingConfig().qc == "mark"


def test_the_seg_carries_the_frame_counts_of_each_policy(setup):
    marked = {o.kind: o.qc_frames for o in run_objects(setup, "mark")}
    assert marked["seg"] == {"accepted": FRAMES - FLAGGED, "marked": FLAGGED, "withheld": 0, "no_root": 0,
                             "run:pass": 1}
    assert marked["sr"] is None  # counted once per run
    withheld = {o.kind: o.qc_frames for o in run_objects(setup, "withhold")}
    assert withheld["seg"] == {"accepted": FRAMES - FLAGGED, "marked": 0, "withheld": FLAGGED, "no_root": 0,
                               "run:pass": 1}
    assert {o.kind: o.qc_frames for o in run_objects(setup, "off")}["seg"] is None


def test_frame_counts_no_root_and_a_withheld_run():
    flagged, reasons = [True, True, False, True], ["no contrast", None, None, None]
    assert qc_frame_counts(flagged, reasons, "mark", "pass") == {
        "accepted": 1, "marked": 2, "withheld": 0, "no_root": 1, "run:pass": 1}
    assert qc_frame_counts(flagged, reasons, "withhold", "fail", run_withheld=True) == {
        "accepted": 0, "marked": 0, "withheld": 3, "no_root": 1, "run:fail": 1}


def test_counts_cross_the_processing_process_boundary():
    """What the isolated child sends back keeps the counts, for outputs and for a withheld run."""
    ds = make_xa(frames=1, size=16)
    from dicom_node.isolation import _encode

    out = _unpack(("ok", [("seg", _encode(ds), {"marked": 2, "run:pass": 1}), ("sr", _encode(ds), None)]))
    assert [(o.kind, o.qc_frames) for o in out] == [("seg", {"marked": 2, "run:pass": 1}), ("sr", None)]
    with pytest.raises(NotSegmentable) as info:
        _unpack(("error", "not-segmentable", "NotSegmentable", "withheld", {"withheld": 5, "run:fail": 1}))
    assert info.value.qc_frames == {"withheld": 5, "run:fail": 1}
    with pytest.raises(NotSegmentable) as info:  # a reply without counts (a dose report)
        _unpack(("error", "not-segmentable", "NotSegmentable", "a dose report"))
    assert info.value.qc_frames is None


@pytest.mark.parametrize("policy, counted", [("mark", "marked"), ("withhold", "withheld")])
def test_node_metrics_count_marked_and_withheld_frames(setup, tmp_path, policy, counted):
    """A node with the QC model: after one run, /metrics counts its frames by QC outcome."""
    folder, _path, ds, _ = setup
    cfg = load_node_config(write_config(tmp_path / "node.yaml", base_config(
        tmp_path / "state", processing={"processor_factory": None, "model_folder": str(folder), "qc": policy,
                                        "outputs": ["seg", "sr"], "inference": {"backend": "eager", "device": "cpu"}},
    )))
    node = Node(cfg, processors=[ModelPipeline(cfg.processing)])
    node.start()
    try:
        assert send(node.scp.port, [ds]) == [0x0000]
        wait_until(lambda: journal_counts(cfg.state_dir)["done"] >= 1, 60, "the run processed")
        m = node.metrics
        assert m.value("qc_frames_total", outcome=counted) == FLAGGED
        assert m.value("qc_frames_total", outcome="accepted") == FRAMES - FLAGGED
        other = "withheld" if counted == "marked" else "marked"
        assert m.value("qc_frames_total", outcome=other) is None
        assert m.value("qc_runs_total", verdict="pass") == 1
    finally:
        node.stop()
