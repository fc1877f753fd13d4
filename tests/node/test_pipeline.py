"""The model pipeline in-process: real engine + DICOM writers, deterministic output UIDs."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO

from dicom_node.config import ProcessingConfig, load_node_config
from dicom_node.errors import NodeConfigError, NotSegmentable
from dicom_node.pipeline import ModelPipeline, derive_uid, load_processor, model_fingerprint
from dicom_node.spool import StoredInstance
from segmentation.inference.config import ConfidenceConfig, InferenceConfig, PostprocessConfig
from testkit.fakes import ThresholdProcessor
from testkit.node import base_config, make_xa, write_config

CPU = InferenceConfig(backend="eager", device="cpu")


def _stored(path, ds) -> StoredInstance:
    return StoredInstance(id=1, path=path, kind="image", sop_instance_uid=str(ds.SOPInstanceUID),
                          sop_class_uid=str(ds.SOPClassUID), study_instance_uid=str(ds.StudyInstanceUID),
                          frames=int(ds.NumberOfFrames), size_bytes=path.stat().st_size)


def test_derived_uids_are_deterministic_and_distinct():
    a = derive_uid("1.2.3.4", "v1", "seg")
    assert a == derive_uid("1.2.3.4", "v1", "seg")
    assert len({a, derive_uid("1.2.3.4", "v2", "seg"), derive_uid("1.2.3.4", "v1", "sr"),
                derive_uid("1.2.3.5", "v1", "seg")}) == 4
    root = "1.2.826.0.1.3680043.10.54."
    assert derive_uid("1.2.3.4", "v1", "seg", root=root).startswith(root)
    assert len(a) <= 64


def test_model_pipeline_outputs_all_kinds_with_stable_uids(tmp_path, tiny_model):
    cfg = ProcessingConfig(model_folder=tiny_model, inference=CPU,
                           outputs=("seg", "sr", "gsps", "sc"), chunk_frames=2)
    pipeline = ModelPipeline(cfg)
    assert pipeline.version == model_fingerprint(tiny_model)
    ds = make_xa(tmp_path / "run.dcm", frames=3, size=80)
    first = pipeline.process(_stored(tmp_path / "run.dcm", ds))
    second = pipeline.process(_stored(tmp_path / "run.dcm", ds))
    assert [o.kind for o in first] == ["seg", "sr", "gsps", "sc"]
    assert [str(o.dataset.SOPInstanceUID) for o in first] == [str(o.dataset.SOPInstanceUID) for o in second]
    assert len({str(o.dataset.SeriesInstanceUID) for o in first}) == 4
    for out in first:
        buf = DicomBytesIO()
        out.dataset.save_as(buf, enforce_file_format=True)
        back = pydicom.dcmread(DicomBytesIO(buf.getvalue()))
        assert back.StudyInstanceUID == ds.StudyInstanceUID
    seg = first[0].dataset
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and int(seg.NumberOfFrames) == 3


def test_model_pipeline_skips_non_projection_images(tmp_path, tiny_model):
    pipeline = ModelPipeline(ProcessingConfig(model_folder=tiny_model, inference=CPU))
    ds = make_xa(frames=1, size=32)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.Modality = "OT"  # a screenshot, not an angiogram
    del ds.NumberOfFrames, ds.FrameIncrementPointer, ds.FrameTime
    ds.save_as(tmp_path / "sc.dcm", enforce_file_format=True)
    stored = StoredInstance(id=2, path=tmp_path / "sc.dcm", kind="image", sop_instance_uid=str(ds.SOPInstanceUID),
                            sop_class_uid=str(ds.SOPClassUID), study_instance_uid=str(ds.StudyInstanceUID),
                            frames=1, size_bytes=1)
    with pytest.raises(NotSegmentable):
        pipeline.process(stored)


def test_processor_loading_errors_are_config_errors(tmp_path):
    with pytest.raises(NodeConfigError, match="model_folder is not set"):
        load_processor(ProcessingConfig())
    with pytest.raises(NodeConfigError, match="not a model folder"):
        load_processor(ProcessingConfig(model_folder=tmp_path))
    with pytest.raises(NodeConfigError, match="processor_factory"):
        load_processor(ProcessingConfig(processor_factory="tests.node.nowhere:factory"))
    assert isinstance(load_processor(ProcessingConfig(processor_factory="testkit.fakes:threshold_processor")),
                      ThresholdProcessor)


def test_run_declaring_more_frames_than_it_holds_covers_only_real_frames(tmp_path, tiny_model):
    """A truncated cine (the header declares 500 frames, the Pixel Data holds 3): the frames that
    exist are segmented, the outputs reference only them, and the missing ones cost nothing."""
    cfg = ProcessingConfig(model_folder=tiny_model, inference=CPU,
                           outputs=("seg", "sr", "gsps", "sc"), chunk_frames=2)
    ds = make_xa(frames=3, size=48)
    ds.NumberOfFrames = 500
    ds.save_as(tmp_path / "run.dcm", enforce_file_format=True)
    stored = StoredInstance(id=3, path=tmp_path / "run.dcm", kind="image", sop_instance_uid=str(ds.SOPInstanceUID),
                            sop_class_uid=str(ds.SOPClassUID), study_instance_uid=str(ds.StudyInstanceUID),
                            frames=500, size_bytes=1)
    outputs = {o.kind: o.dataset for o in ModelPipeline(cfg).process(stored)}
    seg = outputs["seg"]
    assert int(seg.NumberOfFrames) == 3
    referenced = [int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
                  for item in seg.PerFrameFunctionalGroupsSequence]
    assert referenced == [1, 2, 3]
    assert int(outputs["sc"].NumberOfFrames) == 3


def _probabilities(tiny_model, path):
    """The tiny model's probability maps of a file's frames, straight from a raw engine."""
    from segmentation.dicom.reader import open_run
    from segmentation.inference.engine import InferenceEngine

    run = open_run(path)
    frames = np.stack([f for _, f in run.iter_frames()])
    raw = InferenceEngine.from_folder(tiny_model, backend="eager", device="cpu",
                                      postprocess=PostprocessConfig(keep_largest_component=False, fill_holes=False))
    return raw.predict(frames, bits_stored=run.bits_stored, return_probabilities=True).probabilities


def test_inference_section_of_the_node_config_reaches_the_engine(tmp_path, tiny_model):
    """processing.inference in node.yaml (post-processing, confidence, host threads, folds) is
    what the node's engine runs with: the masks it produces are the configured threshold alone,
    where the defaults (largest component + fill holes) give other masks."""
    ds = make_xa(tmp_path / "run.dcm", frames=2, size=64)
    probs = _probabilities(tiny_model, tmp_path / "run.dcm")
    threshold = float(np.median(probs))  # half the pixels on: many components, many holes
    inference = {"backend": "eager", "device": "cpu", "host_threads": 0, "folds": [0],
                 "postprocess": {"threshold": threshold, "keep_largest_component": False, "fill_holes": False},
                 "confidence": {"margin_fraction": 0.2, "flag_below": 0.3}}
    data = base_config(tmp_path / "state", processing={"processor_factory": None, "model_folder": str(tiny_model),
                                                       "inference": inference})
    cfg = load_node_config(write_config(tmp_path / "node.yaml", data))
    assert isinstance(cfg.processing.inference, InferenceConfig)
    pipeline = load_processor(cfg.processing, onnx_cache_dir=tmp_path / "cache")
    engine = pipeline.engine
    assert engine.postprocess == PostprocessConfig(threshold=threshold, keep_largest_component=False, fill_holes=False)
    assert engine.confidence_config == ConfidenceConfig(margin_fraction=0.2, flag_below=0.3)
    assert (engine.host_threads, engine.folds, engine.backend_name) == (0, (0,), "eager")

    from segmentation.dicom.reader import open_run

    _, masks, _ = pipeline._predict(open_run(tmp_path / "run.dcm"))
    expected = probs >= np.float32(threshold)
    assert masks.shape == expected.shape and 0.3 < masks.mean() < 0.7
    np.testing.assert_array_equal(masks, expected)
    default = ModelPipeline(ProcessingConfig(
        model_folder=tiny_model, inference=InferenceConfig(backend="eager", device="cpu",
                                                           postprocess=PostprocessConfig(threshold=threshold))))
    _, default_masks, _ = default._predict(open_run(tmp_path / "run.dcm"))
    assert not np.array_equal(default_masks, expected)  # the switches change the output
    assert str(ds.SOPInstanceUID) == str(open_run(tmp_path / "run.dcm").sop_instance_uid)


def test_onnx_cache_folder_of_the_inference_section_wins_over_the_node_default(tmp_path, tiny_model):
    own = tmp_path / "own-cache"
    cfg = ProcessingConfig(model_folder=tiny_model, inference=InferenceConfig(
        backend="onnx", device="cpu", onnx_cache_dir=own))
    ModelPipeline(cfg, onnx_cache_dir=tmp_path / "node-cache")
    assert any(own.rglob("*.onnx")) and not (tmp_path / "node-cache").exists()
    ModelPipeline(ProcessingConfig(model_folder=tiny_model, inference=InferenceConfig(backend="onnx", device="cpu")),
                  onnx_cache_dir=tmp_path / "node-cache")
    assert any((tmp_path / "node-cache").rglob("*.onnx"))
