"""Fixtures of the node tests: a tiny model folder (random weights, LinkNet/ResNet-18, 64 px)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A real model folder the node's ModelPipeline loads; fast on CPU (64 px input)."""
    import torch

    from segmentation.models.folder import ModelSpec, save_model_folder
    from segmentation.models.zoo import build_model

    torch.manual_seed(0)
    model = build_model("linknet", "resnet18")
    spec = ModelSpec(architecture="linknet", encoder="resnet18", input_size=64, folds=(0,),
                     provenance={"purpose": "node tests, random weights"})
    return save_model_folder(tmp_path_factory.mktemp("model") / "tiny", spec, {0: model.state_dict()})
