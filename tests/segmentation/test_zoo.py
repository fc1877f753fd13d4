"""Model zoo: every architecture x encoder builds offline; names, padding, encoder weights."""

from __future__ import annotations

import pytest
import torch

from segmentation.errors import ModelError
from segmentation.models.zoo import (
    ARCHITECTURES,
    ENCODERS,
    PAPER_ENCODERS,
    SMALL_ENCODERS,
    build_model,
    count_parameters,
    load_encoder_weights,
    padded_input_size,
)


def test_every_pair_builds_offline_with_paper_parameter_counts():
    """All 6 x 10 pairs build with encoder_weights=None; small encoders also run forward."""
    counts = {}
    for arch in ARCHITECTURES:
        for enc in PAPER_ENCODERS + SMALL_ENCODERS:
            model = build_model(arch, enc)
            counts[(arch, enc)] = count_parameters(model)
            if enc in SMALL_ENCODERS and enc != "resnet34":
                with torch.inference_mode():
                    y = model.eval()(torch.rand(1, 1, 64, 64))
                assert y.shape == (1, 1, 64, 64)
            del model
    assert len(counts) == len(ARCHITECTURES) * len(ENCODERS) == 60
    # docs/benchmark.md, Table 2 corrections (smp 0.6.0, in_channels 1, classes 1)
    assert round(counts[("manet", "efficientnet-b4")] / 1e6, 2) == 25.63
    assert round(counts[("pspnet", "se_resnext101_32x4d")] / 1e6, 2) == 47.69
    assert round(counts[("unetplusplus", "se_resnext101_32x4d")] / 1e6, 2) == 72.38
    assert round(counts[("linknet", "efficientnet-b4")] / 1e6, 2) == 17.86


def test_unknown_names_are_rejected_with_the_valid_ones():
    with pytest.raises(ModelError, match="unknown architecture 'unet3d'.*manet, pspnet, unetplusplus"):
        build_model("unet3d", "resnet18")
    with pytest.raises(ModelError, match="unknown encoder 'resnet9'.*efficientnet-b0.*tu-regnetx_120.*mobilenet_v2"):
        build_model("fpn", "resnet9")


def test_aliases_and_class_names_are_accepted():
    model = build_model("DeepLabV3Plus", "timm-regnetx_120")
    assert type(model).__name__ == "DeepLabV3Plus"
    assert type(model.encoder).__name__ == "TimmUniversalEncoder"


def test_padded_input_size():
    assert padded_input_size("manet", 624) == 640
    assert padded_input_size("unetplusplus", 512) == 512
    assert padded_input_size("fpn", 896) == 896
    assert padded_input_size("pspnet", 624) == 624
    with pytest.raises(ModelError):
        padded_input_size("fpn", 0)


def test_624_is_padded_not_refused_for_unetplusplus(tmp_path):
    """624 px: the raw model refuses it; the engine pads to 640 and crops back."""
    import numpy as np

    from segmentation.inference.engine import InferenceEngine
    from tests.segmentation.conftest import make_model_folder

    model = build_model("unetplusplus", "resnet18").eval()
    with pytest.raises(RuntimeError, match="divisible by 32"):
        model(torch.rand(1, 1, 624, 624))
    folder = make_model_folder(tmp_path / "m", arch="unetplusplus", size=624)
    engine = InferenceEngine.from_folder(folder, backend="eager", batch_size=1)
    frame = np.random.default_rng(0).integers(0, 256, (700, 650), dtype=np.uint8)
    pred = engine.predict(frame, return_probabilities=True)
    assert engine.spec.padded_size == 640
    assert pred.masks.shape == (1, 700, 650)
    assert pred.probabilities.shape == (1, 700, 650)


def test_encoder_weights_from_pth_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    src = build_model("fpn", "resnet18", in_channels=3)
    torch.save(src.encoder.state_dict(), tmp_path / "enc.pth")
    save_file({f"encoder.{k}": v.contiguous() for k, v in src.encoder.state_dict().items()},
              str(tmp_path / "enc.safetensors"))
    # 3-channel encoder into a 3-channel model: exact copy
    model = build_model("linknet", "resnet18", in_channels=3, encoder_weights_path=tmp_path / "enc.pth")
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v)
    # into a 1-channel model: the first conv is summed over its input channels
    gray = build_model("linknet", "resnet18", encoder_weights_path=tmp_path / "enc.safetensors")
    assert torch.allclose(gray.encoder.conv1.weight, src.encoder.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(gray.encoder.layer1[0].conv1.weight, src.encoder.layer1[0].conv1.weight)


def test_encoder_weights_mismatch_is_a_clear_error(tmp_path):
    torch.save(build_model("fpn", "resnet34").encoder.state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ModelError, match="encoder weights do not fit ResNetEncoder.*unexpected keys"):
        build_model("fpn", "resnet18", encoder_weights_path=tmp_path / "r34.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read weights"):
        load_encoder_weights(build_model("fpn", "resnet18"), tmp_path / "junk.pth")
    with pytest.raises(ModelError, match="not found"):
        load_encoder_weights(build_model("fpn", "resnet18"), tmp_path / "missing.pth")
