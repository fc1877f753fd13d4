"""Node configuration: the shipped file loads; mistakes stop start-up with a clear message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dicom_node.config import load_node_config
from tavicore.config import CONF_DIR, ConfigError
from testkit.node import base_config, write_config
from tests.conftest import REPO


def test_shipped_config_loads_with_absolute_paths():
    cfg = load_node_config(CONF_DIR / "node.yaml")
    assert cfg.ae_title == "TAVISEG"
    assert cfg.bind_address == "127.0.0.1"
    assert cfg.limits.max_pdu_size == 0 and cfg.limits.fast_pdu_reader is True
    assert cfg.state_dir.is_absolute() and "~" not in str(cfg.state_dir)
    assert cfg.processing.outputs == ("seg", "sr", "sc")  # what the viewer tests support (README)


def test_deploy_config_loads():
    cfg = load_node_config(REPO / "deploy" / "node.yaml")
    assert cfg.destinations and cfg.destinations[0].ae_title
    assert cfg.state_dir == Path("/var/lib/taviseg/node")


def test_relative_paths_resolve_against_the_file(tmp_path):
    path = write_config(tmp_path / "n.yaml", base_config(Path("state")))
    cfg = load_node_config(path)
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.journal_path == tmp_path / "state" / "journal.sqlite"
    assert cfg.results_dir == tmp_path / "state" / "results"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"portt": 1}, "did you mean 'port'"),
        ({"ae_title": "A\\B"}, "invalid AE title"),
        ({"ae_title": "X" * 17}, "invalid AE title"),
        ({"port": 70000}, "out of range"),
        ({"allowed_callers": []}, "allowed_callers is empty"),
        ({"other_objects": "drop"}, "allowed: 'keep', 'refuse'"),
        ({"processing": {"outputs": ["seg", "pdf"]}}, "invalid kind"),
        ({"processing": {"outputs": ["sr"]}}, "must include 'seg'"),
        ({"processing": {"uid_root": "1.2.x."}}, "uid_root"),
        ({"processing": {"device": "cpu", "batch_size": 4}},
         "processing.device: inference settings belong in the processing.inference section"),
        ({"processing": {"tta": True}}, "move processing.tta -> processing.inference.tta"),
        ({"processing": {"inference": {"bakend": "eager"}}},
         "processing.inference.bakend: unknown key"),
        ({"processing": {"inference": {"postprocess": {"threshold": 1.5}}}},
         "processing.inference.postprocess.threshold"),
        ({"processing": {"inference": {"host_threads": -1}}}, "processing.inference.host_threads"),
        ({"tls": {"enabled": True}}, "cert_file"),
        ({"destinations": [{"name": "a", "ae_title": "P", "host": "h", "port": 1},
                           {"name": "a", "ae_title": "Q", "host": "h", "port": 2}]}, "duplicate"),
        ({"limits": {"max_frames": 0}}, "limits.max_frames"),
    ],
)
def test_invalid_settings_are_named(tmp_path, change, message):
    data = base_config(tmp_path / "state")
    data.update(change)
    path = write_config(tmp_path / "n.yaml", data)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_node_config(path)


def test_serve_refuses_a_bad_file_with_the_key_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ae_title: TAVISEG\nportt: 11112\n")
    proc = subprocess.run([sys.executable, "-m", "taviseg", "serve", "--config", str(bad)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "portt: unknown key (did you mean 'port'?)" in proc.stderr


def test_deploy_orthanc_example_matches_the_node_example():
    orthanc = json.loads((REPO / "deploy" / "orthanc.json").read_text())
    node = yaml.safe_load((REPO / "deploy" / "node.yaml").read_text())
    modality = orthanc["DicomModalities"]["taviseg"]
    assert (modality["AET"], modality["Port"], modality["AllowStore"]) == (node["ae_title"], node["port"], True)
    assert orthanc["LuaScripts"][0].endswith("route-to-taviseg.lua")
    assert orthanc["DicomAet"] in {c["ae_title"] for c in node["allowed_callers"]}
    assert node["destinations"][0]["ae_title"] == orthanc["DicomAet"]
    assert node["destinations"][0]["port"] == orthanc["DicomPort"]
    lua = (REPO / "deploy" / "route-to-taviseg.lua").read_text()
    assert f"NODE_AET = '{node['ae_title']}'" in lua


def test_predict_evaluate_and_node_share_one_inference_schema():
    """One InferenceConfig: conf/inference.yaml (predict), processing.inference (node) and the
    inference section of evaluate.yaml; the shipped node file documents every key with the
    same defaults as conf/inference.yaml."""
    import inspect
    from typing import get_type_hints

    from dicom_node.config import ProcessingConfig
    from segmentation.inference.config import INFERENCE_KEYS, InferenceConfig, load_inference_config
    from segmentation.predict import predict_paths
    from training.evaluate import EvaluateConfig

    assert get_type_hints(ProcessingConfig)["inference"] is InferenceConfig
    assert get_type_hints(EvaluateConfig)["inference"] is InferenceConfig
    assert get_type_hints(predict_paths)["config"] == InferenceConfig | None
    assert "config" in inspect.signature(predict_paths).parameters
    node = load_node_config(CONF_DIR / "node.yaml").processing.inference
    assert node == load_inference_config() == InferenceConfig()
    shipped = yaml.safe_load((CONF_DIR / "node.yaml").read_text())["processing"]
    assert set(shipped["inference"]) == INFERENCE_KEYS == set(yaml.safe_load((CONF_DIR / "inference.yaml").read_text()))
    assert not INFERENCE_KEYS & set(shipped) - {"inference"}  # no inference key outside its section
    deploy = load_node_config(REPO / "deploy" / "node.yaml").processing.inference
    assert deploy.postprocess.fill_holes and deploy.host_threads == 2


def test_override_of_an_inference_switch_reaches_the_config(tmp_path):
    path = write_config(tmp_path / "n.yaml", base_config(tmp_path / "state"))
    cfg = load_node_config(path, overrides={"processing.inference.postprocess.fill_holes": False,
                                            "processing.inference.onnx_cache_dir": "cache"})
    assert cfg.processing.inference.postprocess.fill_holes is False
    assert cfg.processing.inference.onnx_cache_dir == tmp_path / "cache"  # relative to the file
