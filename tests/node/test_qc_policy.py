"""The node's QC policy (processing.qc: mark | withhold | off) on a run with low-quality frames:
the SEG, the SR and the SeriesDescription each policy gives; every object dciodvfy-clean."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pydicom
import pytest

from dicom_node.config import ProcessingConfig
from dicom_node.errors import NotSegmentable
from dicom_node.pipeline import ModelPipeline
from dicom_node.spool import StoredInstance
from segmentation.inference.config import InferenceConfig
from segmentation.inference.engine import InferenceEngine
from segmentation.qc.store import save_quality_model
from testkit.node import make_xa
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
    folder, path, ds, _ = setup
    pipeline = ModelPipeline(ProcessingConfig(model_folder=folder, inference=CPU, outputs=outputs, qc=policy))
    return {o.kind: o.dataset for o in pipeline.process(_stored(path, ds))}


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
