"""Model folder: round trip, format versions, malformed folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segmentation.errors import ModelError
from segmentation.inference.engine import InferenceEngine
from segmentation.models.folder import (
    AORTIC_ROOT,
    FORMAT_VERSION,
    ModelSpec,
    load_model_folder,
    save_model_folder,
)
from segmentation.models.zoo import build_model
from tests.segmentation.conftest import make_state, smooth_frames


def test_round_trip_gives_identical_predictions(tmp_path):
    torch.manual_seed(3)
    model = build_model("fpn", "mobilenet_v2").eval()
    spec = ModelSpec(architecture="FPN", encoder="mobilenet_v2", input_size=64, threshold=0.4,
                     provenance={"dataset": "phantom-tiny", "metrics": {"dice": 0.9}})
    save_model_folder(tmp_path / "m", spec, {2: model.state_dict()})
    mf = load_model_folder(tmp_path / "m")
    assert mf.spec.architecture == "fpn" and mf.folds == (2,)
    assert mf.spec.threshold == 0.4 and mf.spec.provenance["metrics"]["dice"] == 0.9
    assert mf.spec.segment.type == AORTIC_ROOT and mf.spec.segment.category.value == "91723000"
    x = torch.rand(2, 1, 64, 64)
    with torch.inference_mode():
        assert torch.equal(mf.build(2)(x), model(x))
    assert len(mf.weights_hash(2)) == 64


def test_folder_is_self_describing(tmp_path):
    """config.json carries everything inference needs; nothing else is read."""
    path = save_model_folder(tmp_path / "m", ModelSpec(architecture="linknet", encoder="resnet18", input_size=80),
                             {0: make_state("linknet", "resnet18", seed=0)})
    data = json.loads((path / "config.json").read_text())
    assert data["format"] == "taviseg-model" and data["format_version"] == FORMAT_VERSION
    for key in ("architecture", "encoder", "input_size", "in_channels", "normalization", "threshold",
                "segment", "provenance", "folds"):
        assert key in data
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "fold_0.safetensors"]
    engine = InferenceEngine.from_folder(path, backend="eager")
    pred = engine.predict(smooth_frames(1, 90, 70))
    assert pred.masks.shape == (1, 90, 70)


@pytest.mark.parametrize("version,word", [(FORMAT_VERSION + 1, "newer"), (0, "older")])
def test_other_format_versions_are_refused_naming_both(tmp_path, version, word):
    path = save_model_folder(tmp_path / "m", ModelSpec(architecture="linknet", encoder="resnet18", input_size=64),
                             {0: make_state("linknet", "resnet18", seed=0)})
    data = json.loads((path / "config.json").read_text())
    data["format_version"] = version
    (path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=f"version {version} \\({word}.*reads format version {FORMAT_VERSION}"):
        load_model_folder(path)


def test_malformed_folders(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_model_folder(tmp_path)
    path = save_model_folder(tmp_path / "m", ModelSpec(architecture="linknet", encoder="resnet18", input_size=64),
                             {0: make_state("linknet", "resnet18", seed=0)})
    with pytest.raises(ModelError, match="already exists"):
        save_model_folder(path, ModelSpec(architecture="linknet", encoder="resnet18", input_size=64),
                          {0: make_state("linknet", "resnet18", seed=0)})
    data = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**data, "treshold": 0.3}))
    with pytest.raises(ModelError, match="treshold: unknown key \\(did you mean 'threshold'"):
        load_model_folder(path)
    (path / "config.json").write_text(json.dumps({**data, "encoder": "resnet9"}))
    with pytest.raises(ModelError, match="unknown encoder 'resnet9'"):
        load_model_folder(path)
    (path / "config.json").write_text(json.dumps({**data, "folds": [0, 1]}))
    with pytest.raises(ModelError, match="weights of fold 1 missing"):
        load_model_folder(path)
    (path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="no fold 3; folds present: \\[0\\]"):
        InferenceEngine.from_folder(path, backend="eager", folds=[3])


def test_weights_that_do_not_fit_are_refused(tmp_path):
    with pytest.raises(ModelError, match="does not fit linknet/resnet18"):
        save_model_folder(tmp_path / "m", ModelSpec(architecture="linknet", encoder="resnet18", input_size=64),
                          {0: make_state("linknet", "resnet34", seed=0)})
    path = save_model_folder(tmp_path / "ok", ModelSpec(architecture="linknet", encoder="resnet18", input_size=64),
                             {0: make_state("linknet", "resnet18", seed=0)})
    data = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**data, "in_channels": 3}))
    with pytest.raises(ModelError, match="weights do not fit linknet/resnet18 with 3 input channel"):
        load_model_folder(path).build(0)
    assert np.isfinite(load_model_folder(tmp_path / "ok").spec.threshold)


def test_writing_the_same_weights_again_keeps_the_file_and_its_hash(tmp_path):
    """safetensors orders its metadata at random: rewriting unchanged weights (a training
    command run again over finished folds) must not change the file, whose SHA-256 names the
    weights for the QC data and the int8 variant; changed weights are written."""
    spec = ModelSpec(architecture="linknet", encoder="resnet18", input_size=64)
    state = make_state("linknet", "resnet18", seed=0)
    folder = save_model_folder(tmp_path / "m", spec, {0: state})
    path = folder / "fold_0.safetensors"
    before, stamp = load_model_folder(folder).weights_hash(0), path.stat().st_mtime_ns
    for _ in range(3):
        save_model_folder(folder, spec, {0: {k: v.clone() for k, v in state.items()}}, overwrite=True)
    assert path.stat().st_mtime_ns == stamp and load_model_folder(folder).weights_hash(0) == before
    key = next(k for k, v in state.items() if v.is_floating_point())
    changed = {**state, key: state[key] + 1.0}
    save_model_folder(folder, spec, {0: changed}, overwrite=True)
    assert load_model_folder(folder).weights_hash(0) != before
    assert torch.equal(load_model_folder(folder).state_dict(0)[key], changed[key])
