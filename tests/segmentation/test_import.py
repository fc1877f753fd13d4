"""Import of whole-model checkpoints saved the authors' way (torch.save(model))."""

from __future__ import annotations

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from segmentation.errors import ModelError
from segmentation.inference.engine import InferenceEngine
from segmentation.inference.preprocess import IMAGENET_MEAN, IMAGENET_STD
from segmentation.models.checkpoint_import import import_checkpoints, inspect_checkpoint
from segmentation.models.folder import load_model_folder
from taviseg.cli import main as cli_main
from tests.segmentation.conftest import smooth_frames


def _authors_model(seed: int) -> torch.nn.Module:
    """As in the authors' train_fold_dataset.py: 3 channels, sigmoid activation."""
    torch.manual_seed(seed)
    model = smp.MAnet(encoder_name="resnet18", encoder_weights=None, in_channels=3, classes=1, activation="sigmoid")
    with torch.no_grad():
        model.segmentation_head[0].weight.mul_(20.0)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    models = [_authors_model(s) for s in (0, 1)]
    paths = []
    for k, m in enumerate(models):
        paths.append(d / f"fold_{k + 1}" / "best_model.pth")
        paths[-1].parent.mkdir()
        torch.save(m, paths[-1])
    return models, paths


def test_inspect_identifies_architecture_encoder_channels(checkpoints):
    _, paths = checkpoints
    info = inspect_checkpoint(paths[0])
    assert (info.architecture, info.encoder, info.in_channels) == ("manet", "resnet18", 3)
    assert info.class_name == "MAnet" and info.smp_name == "manet-resnet18"
    assert info.activation == "sigmoid" and len(info.sha256) == 64


def test_import_then_predict_matches_the_original_models(checkpoints, tmp_path):
    models, paths = checkpoints
    folder = import_checkpoints(paths, tmp_path / "imported", input_size=64)
    mf = load_model_folder(folder)
    assert mf.folds == (0, 1) and mf.spec.in_channels == 3 and mf.spec.normalization == "imagenet"
    assert mf.spec.provenance["checkpoints"][1]["file"] == "best_model.pth"
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        for fold, model in enumerate(models):
            assert torch.allclose(torch.sigmoid(mf.build(fold)(x)), model(x), atol=1e-6)
    # the engine reproduces the authors' preprocessing: gray -> RGB, /255, ImageNet mean/std
    frame = smooth_frames(1, 64, 64)[0]
    rgb = np.repeat(frame[None].astype(np.float32) / 255.0, 3, axis=0)
    rgb = (rgb - np.array(IMAGENET_MEAN, np.float32)[:, None, None]) / np.array(IMAGENET_STD, np.float32)[:, None, None]
    with torch.inference_mode():
        expected = np.mean([m(torch.from_numpy(rgb[None]))[0, 0].numpy() for m in models], axis=0)
    engine = InferenceEngine.from_folder(folder, backend="eager")
    got = engine.predict(frame, return_probabilities=True).probabilities[0]
    assert np.abs(got - expected).max() < 1e-5


def test_restricted_loader_runs_no_code_from_the_file(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.makedirs, (str(marker),))

    torch.save({"payload": Evil(), "w": torch.zeros(1)}, tmp_path / "evil.pth")
    with pytest.raises(ModelError, match="needs|architecture|encoder"):
        inspect_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()


def test_bare_state_dict_needs_names_and_unknown_encoder_is_listed(tmp_path, checkpoints):
    models, _ = checkpoints
    torch.save(models[0].state_dict(), tmp_path / "sd.pth")
    with pytest.raises(ModelError, match="give --arch"):
        inspect_checkpoint(tmp_path / "sd.pth")
    info = inspect_checkpoint(tmp_path / "sd.pth", architecture="manet", encoder="resnet18")
    assert info.in_channels == 3
    torch.manual_seed(0)
    other = smp.Linknet(encoder_name="resnet50", encoder_weights=None, in_channels=3, classes=1)
    other.name = "link-efficientnet-b7"
    torch.save(other, tmp_path / "b7.pth")
    with pytest.raises(ModelError, match="unknown encoder 'efficientnet-b7'; valid encoders"):
        inspect_checkpoint(tmp_path / "b7.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ModelError, match="restricted loader cannot read.*--trust-pickle"):
        inspect_checkpoint(tmp_path / "junk.pth")


def test_cli_model_import_and_info(checkpoints, tmp_path, capsys):
    _, paths = checkpoints
    out = tmp_path / "cli-model"
    assert cli_main(["model", "import", str(paths[0]), "--out", str(out), "--input-size", "96"]) == 0
    assert cli_main(["model", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "manet" in text and "resnet18" in text and "input size     96" in text and "SCT 8128003" in text
    assert cli_main(["model", "import", str(paths[0]), "--out", str(out)]) == 1  # exists
    assert "already exists" in capsys.readouterr().err


def test_checkpoint_from_an_older_library_with_missing_modules(tmp_path, monkeypatch):
    """Old smp pickles name classes that no longer exist (e.g. efficientnet_pytorch): stubs stand in."""
    import sys
    import types

    fake = types.ModuleType("efficientnet_pytorch_legacy")

    class EfficientNet(torch.nn.Module):
        pass

    EfficientNet.__module__ = fake.__name__
    EfficientNet.__qualname__ = "EfficientNet"
    fake.EfficientNet = EfficientNet
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    model = _authors_model(5)
    model.encoder.__class__ = EfficientNet  # the pickle now names a class of a missing package
    torch.save(model, tmp_path / "old.pth")
    monkeypatch.delitem(sys.modules, fake.__name__)
    info = inspect_checkpoint(tmp_path / "old.pth")
    assert (info.architecture, info.encoder) == ("manet", "resnet18")
    folder = import_checkpoints([tmp_path / "old.pth"], tmp_path / "m", input_size=64)
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(torch.sigmoid(load_model_folder(folder).build(0)(x)), _authors_model(5)(x), atol=1e-6)
