"""The one configuration loader (tavicore/config.py, on pydantic): strict, typed, readable errors."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from tavicore.config import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    parse_override,
    read_yaml,
    setting,
    to_dict,
)
from tavicore.errors import TavisegError


class Device(enum.Enum):
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class Optim:
    name: Literal["adam", "radam", "rmsprop"] = "adam"
    lr: float = setting(1e-3, gt=0.0, le=1.0, doc="learning rate")


@dataclass(frozen=True)
class Train:
    epochs: int = setting(35, ge=1)
    input_size: Literal[512, 640, 896] = 512
    optim: Optim = field(default_factory=Optim)
    folds: list[int] = setting(default_factory=lambda: [0, 1], ge=0, le=4)
    spacing: tuple[float, float] = (0.39, 0.39)
    sizes: tuple[int, ...] = ()
    weights: Optional[Path] = None  # noqa: UP045 - the loader reads typing.Optional too
    amp: bool = False
    device: Device = Device.CPU
    note: str | None = None
    extra: dict[str, float] = field(default_factory=dict)
    maybe: list[int] | None = None


@dataclass(frozen=True)
class Peer:
    host: str
    port: int = setting(104, ge=1, le=65535)
    tls: Optim | None = None

    def __post_init__(self) -> None:
        if self.host == "localhost" and self.port == 104:
            raise ConfigError(f"peer {self.host}:{self.port} is this node")
        if self.host == "":
            raise TypeError("host is empty")


@dataclass(frozen=True)
class Node:
    peers: tuple[Peer, ...] = ()
    batch: int | Literal["auto"] = setting("auto", ge=1)
    folds: tuple[int, ...] | None = setting(None, ge=0, le=4)
    color: tuple[int, int, int] | None = None
    out: str | Path | None = None
    counts: dict[str, int] = field(default_factory=dict)
    ratios: tuple[float, ...] = setting((0.5,), gt=0.0, lt=1.0)
    modes: tuple[Literal["a", "b"], ...] = ()
    devices: list[Device] = field(default_factory=list)


@dataclass(frozen=True)
class Required:
    root: Path
    k: int = 5

    def __post_init__(self) -> None:
        if self.k > 10:
            raise ValueError(f"k={self.k} is too large for root {self.root}")


def test_defaults_and_full_conversion():
    assert from_dict(Train, None) == Train()
    cfg = from_dict(Train, {
        "epochs": 3, "input_size": 896, "optim": {"name": "rmsprop", "lr": "1e-4"},
        "folds": [4], "spacing": [0.5, 1], "sizes": [1, 2, 3], "weights": "w/enc.safetensors",
        "amp": True, "device": "cuda", "note": None, "extra": {"a": 1},
    })
    assert cfg.optim == Optim("rmsprop", 1e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.spacing == (0.5, 1.0) and isinstance(cfg.spacing[1], float)
    assert cfg.sizes == (1, 2, 3) and cfg.weights == Path("w/enc.safetensors")
    assert cfg.device is Device.CUDA and cfg.extra == {"a": 1.0}
    assert from_dict(Train, to_dict(cfg)) == cfg  # round trip through plain values


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"^epoch: unknown key \(did you mean 'epochs'\?\); valid keys: amp, "):
        from_dict(Train, {"epoch": 3})
    with pytest.raises(ConfigError, match=r"optim\.learning_rate: unknown key; valid keys: lr, name"):
        from_dict(Train, {"optim": {"learning_rate": 1}})


@pytest.mark.parametrize("data, message", [
    ({"epochs": "3"}, r"epochs: expected an integer, got str '3'"),
    ({"epochs": 3.0}, r"epochs: expected an integer, got float"),
    ({"epochs": True}, r"epochs: expected an integer, got bool"),
    ({"amp": "yes"}, r"amp: expected true/false"),
    ({"amp": 1}, r"amp: expected true/false"),
    ({"optim": {"lr": "fast"}}, r"optim\.lr: expected a number, got str 'fast'"),
    ({"optim": "adam"}, r"optim: expected a mapping for Optim, got str"),
    ({"folds": 3}, r"folds: expected a list, got int 3"),
    ({"folds": [0, "1"]}, r"folds\[1\]: expected an integer"),
    ({"spacing": [0.5]}, r"spacing: expected 2 items, got 1"),
    ({"weights": 3}, r"weights: expected Path \| None, got int 3"),
    ({"note": 3}, r"note: expected str \| None, got int 3"),
    ({"extra": [1]}, r"extra: expected a mapping"),
    ({"maybe": 3}, r"maybe: expected list\[int\] \| None, got int 3"),
    ({"extra": {"a": "b"}}, r"extra\.a: expected a number"),
])
def test_wrong_type_names_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Train, data)


@pytest.mark.parametrize("data, message", [
    ({"epochs": 0}, r"epochs: value 0 is out of range \(must be >= 1\)"),
    ({"optim": {"lr": 0}}, r"optim\.lr: value 0\.0 is out of range \(must be > 0\.0\)"),
    ({"optim": {"lr": 2}}, r"optim\.lr: value 2\.0 is out of range \(must be <= 1\.0\)"),
    ({"folds": [0, 5]}, r"folds\[1\]: value 5 is out of range \(must be <= 4\)"),
])
def test_out_of_range(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Train, data)


def test_literal_and_enum_list_the_allowed_values():
    with pytest.raises(ConfigError, match=r"optim\.name: invalid value 'sgd'; allowed: 'adam', 'radam', 'rmsprop'"):
        from_dict(Train, {"optim": {"name": "sgd"}})
    with pytest.raises(ConfigError, match=r"input_size: invalid value 624; allowed: 512, 640, 896"):
        from_dict(Train, {"input_size": 624})
    with pytest.raises(ConfigError, match=r"device: invalid value 'tpu'; allowed: 'cpu', 'cuda'"):
        from_dict(Train, {"device": "tpu"})
    assert from_dict(Train, {"device": "CUDA"}).device is Device.CUDA  # member name accepted


def test_literal_is_type_strict():
    with pytest.raises(ConfigError, match="input_size: invalid value 512.0"):
        from_dict(Train, {"input_size": 512.0})  # a float must not pass as the int 512
    cfg = from_dict(Train, {"input_size": 640})
    assert cfg.input_size == 640 and type(cfg.input_size) is int


@dataclass(frozen=True)
class Switches:
    orthanc: Literal["auto", "yes", "no"] = "auto"
    mode: Literal["on", "off", "never"] = "never"
    strict: Literal["true", "false", "auto"] = "auto"


@pytest.mark.parametrize("text, field_name, expected", [
    ("orthanc=no", "orthanc", "no"), ("orthanc=yes", "orthanc", "yes"), ("orthanc=off", "orthanc", "no"),
    ("mode=off", "mode", "off"), ("mode=on", "mode", "on"), ("strict=false", "strict", "false"),
])
def test_yaml_boolean_words_reach_a_literal_of_words(text, field_name, expected):
    """YAML 1.1 reads `no`/`yes`/`off` as booleans: a Literal of words takes them back as its word."""
    key, value = parse_override(text)
    assert isinstance(value, bool)
    assert getattr(from_dict(Switches, {key: value}), field_name) == expected


def test_a_boolean_is_not_a_literal_without_its_word():
    with pytest.raises(ConfigError, match=r"input_size: invalid value True; allowed: 512, 640, 896"):
        from_dict(Train, {"input_size": True})


def test_required_key_and_post_init_errors():
    with pytest.raises(ConfigError, match="root: required key is missing"):
        from_dict(Required, {})
    with pytest.raises(ConfigError, match=r"data\.yaml: Required: k=11 is too large"):
        from_dict(Required, {"root": "x", "k": 11}, source="data.yaml")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        from_dict(Required, [1, 2])


def test_errors_are_domain_errors():
    with pytest.raises(TavisegError):
        from_dict(Train, {"epochs": -1})
    assert issubclass(ConfigError, ValueError)


def test_load_config_file_section_and_overrides(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("train:\n  epochs: 10\n  optim:\n    name: radam\n    lr: 1e-3\nother: 1\n")
    cfg = load_config(path, Train, section="train", overrides={"optim.lr": 1e-5, "folds": [2]})
    assert (cfg.epochs, cfg.optim.name, cfg.optim.lr, cfg.folds) == (10, "radam", 1e-5, [2])
    assert read_yaml(path)["train"]["optim"]["lr"] == "1e-3"  # file untouched, YAML 1.1 string
    with pytest.raises(ConfigError, match=rf"{path}: optim\.lr: value 5\.0 is out of range"):
        load_config(path, Train, section="train", overrides={"optim.lr": 5})
    with pytest.raises(ConfigError, match=rf"{path}: optim\.lrr: unknown key \(did you mean 'lr'\?\)"):
        load_config(path, Train, section="train", overrides={"optim.lrr": 5})
    with pytest.raises(ConfigError, match="section 'eval' is missing"):
        load_config(path, Train, section="eval")
    with pytest.raises(ConfigError, match="section 'other' must be a mapping"):
        load_config(path, Train, section="other")


def test_missing_malformed_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.yaml", Train)
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, Train)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(listing, Train)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty, Train) == Train()


def test_overrides_parsing_and_application():
    assert parse_override("optim.lr=1e-4") == ("optim.lr", "1e-4")
    assert parse_override("folds=[1, 2]") == ("folds", [1, 2])
    assert parse_override(" amp = true") == ("amp", True)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("amp")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("=3")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_override("folds=[1,")
    data = {"optim": {"lr": 1}, "n": None}
    out = apply_overrides(data, {"optim.name": "radam", "n.m": 2})
    assert out == {"optim": {"lr": 1, "name": "radam"}, "n": {"m": 2}}
    assert data == {"optim": {"lr": 1}, "n": None}  # input not modified


def test_nested_lists_of_dataclasses_name_the_element():
    cfg = from_dict(Node, {"peers": [{"host": "a"}, {"host": "b", "port": 11112, "tls": {"lr": 0.5}}]})
    assert cfg.peers == (Peer("a"), Peer("b", 11112, Optim(lr=0.5)))
    assert from_dict(Node, {"peers": [cfg.peers[0]]}).peers == (Peer("a"),)  # instances pass as they are
    with pytest.raises(ConfigError, match=r"^peers\[1\]\.port: value 0 is out of range \(must be >= 1\)$"):
        from_dict(Node, {"peers": [{"host": "a"}, {"host": "b", "port": 0}]})
    with pytest.raises(ConfigError, match=r"^peers\[0\]\.host: required key is missing$"):
        from_dict(Node, {"peers": [{"port": 5}]})
    with pytest.raises(ConfigError, match=r"^peers\[0\]: expected a mapping for Peer, got str$"):
        from_dict(Node, {"peers": ["a"]})
    # inside an Optional dataclass, the nested key is named (not just "expected Optim | None")
    message = r"^peers\[0\]\.tls\.lrr: unknown key \(did you mean 'lr'\?\); valid keys: lr, name$"
    with pytest.raises(ConfigError, match=message):
        from_dict(Node, {"peers": [{"host": "a", "tls": {"lrr": 1}}]})
    with pytest.raises(ConfigError, match=r"^peers\[0\]\.tls: expected Optim \| None, got int 3$"):
        from_dict(Node, {"peers": [{"host": "a", "tls": 3}]})


def test_first_problem_in_field_order_unknown_keys_of_a_mapping_first():
    with pytest.raises(ConfigError, match=r"^zz: unknown key"):  # before the bad value of a field
        from_dict(Node, {"batch": 0, "peers": [{"host": "a", "port": "x"}], "zz": 1})
    with pytest.raises(ConfigError, match=r"^peers\[0\]\.zz: unknown key; valid keys: host, port, tls$"):
        from_dict(Node, {"peers": [{"host": "a", "port": "x", "zz": 1}], "batch": 0})
    with pytest.raises(ConfigError, match=r"^peers\[0\]\.port: expected an integer, got str 'x'$"):
        from_dict(Node, {"batch": 0, "peers": [{"host": "a", "port": "x"}]})  # peers is declared first


def test_post_init_errors_keep_their_words_and_get_the_key():
    with pytest.raises(ConfigError, match=r"^node\.yaml: peer localhost:104 is this node$"):
        from_dict(Node, {"peers": [{"host": "localhost"}]}, source="node.yaml")  # a ConfigError as raised
    with pytest.raises(ConfigError, match=r"^peers\[0\]: host is empty$"):
        from_dict(Node, {"peers": [{"host": ""}]})  # a TypeError, named by its key


def test_unions_first_member_that_fits_and_ranges_of_the_member():
    assert from_dict(Node, {"batch": 8}).batch == 8
    assert from_dict(Node, {"batch": "auto"}).batch == "auto"
    assert from_dict(Node, {"out": "x"}).out == "x"  # str before Path, as declared
    with pytest.raises(ConfigError, match=r"^batch: value 0 is out of range \(must be >= 1\)$"):
        from_dict(Node, {"batch": 0})
    with pytest.raises(ConfigError, match=r"^batch: expected int \| one of 'auto', got str 'many'$"):
        from_dict(Node, {"batch": "many"})
    with pytest.raises(ConfigError, match=r"^batch: expected int \| one of 'auto', got float 8\.0$"):
        from_dict(Node, {"batch": 8.0})
    with pytest.raises(ConfigError, match=r"^out: expected str \| Path \| None, got int 3$"):
        from_dict(Node, {"out": 3})
    assert from_dict(Node, {"folds": [0, 4]}).folds == (0, 4)
    with pytest.raises(ConfigError, match=r"^folds\[1\]: value 5 is out of range \(must be <= 4\)$"):
        from_dict(Node, {"folds": [0, 5]})
    with pytest.raises(ConfigError, match=r"^folds\[1\]: expected an integer, got str 'x'$"):
        from_dict(Node, {"folds": [0, "x"]})
    with pytest.raises(ConfigError, match=r"^color: expected 3 items, got 2$"):
        from_dict(Node, {"color": [255, 0]})


def test_containers_keys_and_elements():
    cfg = from_dict(Node, {"counts": {1: 2}, "ratios": ["0.25", 0.5], "modes": ["b"], "devices": ["cuda", "CPU"]})
    assert cfg.counts == {"1": 2}  # YAML int keys read as names
    assert cfg.ratios == (0.25, 0.5) and cfg.modes == ("b",) and cfg.devices == [Device.CUDA, Device.CPU]
    with pytest.raises(ConfigError, match=r"^ratios\[0\]: value 1\.0 is out of range \(must be < 1\.0\)$"):
        from_dict(Node, {"ratios": [1]})
    with pytest.raises(ConfigError, match=r"^ratios\[0\]: expected a number, got bool True$"):
        from_dict(Node, {"ratios": [True]})
    with pytest.raises(ConfigError, match=r"^modes\[0\]: invalid value 'c'; allowed: 'a', 'b'$"):
        from_dict(Node, {"modes": ["c"]})
    with pytest.raises(ConfigError, match=r"^devices\[1\]: invalid value 'tpu'; allowed: 'cpu', 'cuda'$"):
        from_dict(Node, {"devices": ["cpu", "tpu"]})
    with pytest.raises(ConfigError, match=r"^counts\.a: expected an integer, got float 1\.5$"):
        from_dict(Node, {"counts": {"a": 1.5}})
    with pytest.raises(ConfigError, match=r"^peers\[0\]\.host: expected a string, got int 3$"):
        from_dict(Node, {"peers": [{"host": 3}]})
