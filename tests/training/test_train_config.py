"""conf/train/*.yaml: every file loads and names zoo models; the paper's Table 2 in both readings;
config errors name the key, the bad value and the allowed ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tavicore.config import CONF_DIR, ConfigError
from training.config import load_train_config, resolve_train_config

TRAIN_CONF = CONF_DIR / "train"
PAPER_FILES = sorted(p for p in TRAIN_CONF.glob("*.yaml") if not p.name.startswith("cpu_"))
#: Table 2 rows whose printed encoder does not give the printed parameter count.
SWAPPED = {"unetplusplus": ("efficientnet-b4", "se_resnext101_32x4d"),
           "linknet": ("se_resnext101_32x4d", "efficientnet-b4"),
           "fpn": ("se_resnext101_32x4d", "efficientnet-b4"),
           "deeplabv3plus": ("se_resnext101_32x4d", "efficientnet-b4")}
TABLE2 = {  # architecture -> (input size, optimizer, lr)
    "unetplusplus": (896, "rmsprop", 1e-4), "linknet": (512, "rmsprop", 1e-3), "fpn": (512, "rmsprop", 1e-3),
    "pspnet": (512, "adam", 1e-3), "deeplabv3plus": (512, "rmsprop", 1e-4), "manet": (896, "rmsprop", 1e-3),
}


@pytest.mark.parametrize("path", sorted(TRAIN_CONF.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_loads_with_zoo_names(path: Path):
    from segmentation.models import zoo

    cfg = load_train_config(path)
    assert cfg.model.architecture in zoo.ARCHITECTURES and cfg.model.encoder in zoo.ENCODERS
    assert zoo.padded_input_size(cfg.model.architecture, cfg.model.input_size) % 32 == 0 or \
        cfg.model.architecture == "pspnet"


def test_paper_configs_cover_table2_in_both_readings():
    seen: dict[str, set[str]] = {}
    for path in PAPER_FILES:
        cfg = load_train_config(path)
        header = path.read_text().splitlines()[:3]
        reading = next(line for line in header if line.startswith("# Reading:"))
        arch = cfg.model.architecture
        assert (cfg.model.input_size, cfg.optim.name, cfg.optim.lr) == TABLE2[arch]
        assert cfg.epochs == 35 and cfg.batch_size == "auto" and cfg.augment.enabled
        seen.setdefault(arch, set()).add(cfg.model.encoder)
        if arch in SWAPPED:
            printed, implied = SWAPPED[arch]
            expected = "AS PRINTED" if cfg.model.encoder == printed else "PARAMETER COUNT"
            assert expected in reading, (path.name, reading)
        else:
            assert "BOTH readings agree" in reading
    assert set(seen) == set(TABLE2)
    for arch, encoders in seen.items():
        assert encoders == set(SWAPPED[arch]) if arch in SWAPPED else len(encoders) == 1


def test_cpu_tiny_builds_and_runs_a_forward_pass():
    from segmentation.models.zoo import build_model, padded_input_size

    cfg = load_train_config(TRAIN_CONF / "cpu_tiny.yaml")
    size = padded_input_size(cfg.model.architecture, cfg.model.input_size)
    assert size <= 128 and cfg.epochs == 2 and cfg.device == "cpu"
    model = build_model(cfg.model.architecture, cfg.model.encoder).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, size, size)).shape == (1, 1, size, size)


def test_defaults_are_the_papers_protocol():
    cfg = load_train_config(TRAIN_CONF / "manet_effb4_896.yaml")
    a = cfg.augment
    assert (a.hflip_p, a.affine_p, a.shift_limit, a.scale_limit, a.rotate_limit) == (0.5, 0.5, 0.0625, 0.1, 15)
    assert (a.noise_p, a.noise_var_limit, a.perspective_p, a.perspective_scale) == (0.2, (3, 10), 0.5, (0.05, 0.1))
    assert (a.brightness_contrast_p, a.brightness_limit, a.contrast_limit) == (0.9, 0.2, 0.2)
    assert (a.hsv_p, a.hue_shift_limit, a.sat_shift_limit, a.val_shift_limit) == (0.9, 20, 30, 20)
    assert cfg.amp and cfg.channels_last and cfg.loss == "dice"


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"epoch": 3}, r"epoch: unknown key \(did you mean 'epochs'\?\)"),
        ({"optim.name": "sgd"}, r"optim\.name: invalid value 'sgd'; allowed: 'adam', 'radam', 'rmsprop'"),
        ({"optim.lr": 0}, r"optim\.lr: value 0.* out of range"),
        ({"model.architecture": "unet"}, r"model\.architecture: unknown architecture 'unet'; valid .*manet"),
        ({"model.encoder": "resnet9"}, r"model\.encoder: unknown encoder 'resnet9'; valid .*resnet18"),
        ({"batch_size": 0}, r"batch_size: value 0 is out of range"),
        ({"batch_size": "big"}, r"batch_size: expected"),
        ({"augment.noise_var_limit": [10, 3]}, r"noise_var_limit: range 10.0..3.0 is reversed"),
        ({"augment.border_mode": "wrap"}, r"border_mode: invalid value 'wrap'"),
        ({"device": "tpu"}, r"device: 'tpu' is not one of"),
        ({"loss": "focal"}, r"loss: invalid value 'focal'; allowed: 'dice', 'dice_bce'"),
    ],
)
def test_config_errors_name_key_and_allowed_values(overrides, pattern):
    with pytest.raises(ConfigError) as info:
        load_train_config(TRAIN_CONF / "cpu_tiny.yaml", overrides=overrides)
    assert re.search(pattern, str(info.value)), str(info.value)
    assert "cpu_tiny.yaml" in str(info.value)


def test_overrides_and_missing_file(tmp_path):
    cfg = load_train_config(TRAIN_CONF / "cpu_tiny.yaml", overrides={"epochs": 5, "optim.lr": 1e-4,
                                                                     "batch_size": "auto"})
    assert (cfg.epochs, cfg.optim.lr, cfg.batch_size) == (5, 1e-4, "auto")
    assert cfg.model.architecture == "linknet" and cfg.epochs != load_train_config(TRAIN_CONF / "cpu_tiny.yaml").epochs
    with pytest.raises(ConfigError, match="not found.*shipped: .*cpu_tiny"):
        load_train_config(tmp_path / "nope.yaml")
    (tmp_path / "no_model.yaml").write_text("epochs: 3\n")
    with pytest.raises(ConfigError, match="model: required key is missing"):
        load_train_config(tmp_path / "no_model.yaml")


def test_a_shipped_configuration_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_train_config("cpu_tiny") == TRAIN_CONF / "cpu_tiny.yaml"
    assert resolve_train_config("cpu_tiny.yaml") == TRAIN_CONF / "cpu_tiny.yaml"
    assert load_train_config("cpu_tiny") == load_train_config(TRAIN_CONF / "cpu_tiny.yaml")
    own = tmp_path / "cpu_tiny.yaml"  # a file of the user's own wins over the shipped name
    own.write_text((TRAIN_CONF / "cpu_tiny.yaml").read_text().replace("epochs: 2", "epochs: 7"))
    assert resolve_train_config("cpu_tiny.yaml") == Path("cpu_tiny.yaml")
    assert load_train_config("cpu_tiny.yaml").epochs == 7
    with pytest.raises(ConfigError, match="not found"):
        resolve_train_config("sub/cpu_tiny.yaml")


def test_cli_reports_config_errors_with_exit_code_1(tmp_path, capsys):
    from taviseg.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {architecture: linknet, encoder: resnet18, input_size: 64}\noptim: {name: sgd}\n")
    code = main(["train", "--config", str(bad), "--data", str(tmp_path), "--out", str(tmp_path / "out")])
    assert code == 1
    assert "optim.name: invalid value 'sgd'" in capsys.readouterr().err
