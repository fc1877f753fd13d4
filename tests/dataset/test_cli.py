"""``taviseg dataset``: import -> check -> split -> info through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from tavidata.format import Dataset
from taviseg.cli import main
from tests.dataset.synthetic import box_mask, frame


def _release(src: Path, names: list[str]) -> Path:
    for i, name in enumerate(names):
        (src / "images").mkdir(parents=True, exist_ok=True)
        (src / "masks").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(src / "images" / f"{name}.png"), frame(i))
        cv2.imwrite(str(src / "masks" / f"{name}.png"), box_mask(0, 8, 0, 8 + i % 4).astype(np.uint8) * 255)
    return src


def test_import_check_split_info(tmp_path, capsys):
    src = _release(tmp_path / "rel", [f"P{p:03d}_{f:04d}" for p in range(6) for f in range(p % 3 + 1)])
    out = tmp_path / "ds"
    assert main(["dataset", "import", "release", str(src), "--out", str(out), "--spacing-mm", "0.25"]) == 0
    assert "imported 12 frames, 6 patients" in capsys.readouterr().out
    assert Dataset.load(out).records[0].spacing_mm == (0.25, 0.25)

    assert main(["dataset", "check", str(out)]) == 0
    assert "problems: none" in capsys.readouterr().out

    assert main(["dataset", "split", str(out), "--k", "3", "--seed", "1"]) == 0
    assert "3 folds, 6 patients" in capsys.readouterr().out
    assert main(["dataset", "split", str(out), "--k", "3"]) == 1  # written once
    assert "already exist" in capsys.readouterr().err
    assert main(["dataset", "split", str(out), "--k", "2", "--force", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["folds"]) == 2

    assert main(["dataset", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["frames"], info["patients"], info["splits"]["k"]) == (12, 6, 2)
    assert info["first_image_size"] == [32, 32]
    assert main(["dataset", "info", str(out)]) == 0
    assert "splits: k=2" in capsys.readouterr().out

    Dataset.load(out).records[0].mask.unlink()
    assert main(["dataset", "check", str(out), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [p["kind"] for p in report["problems"]] == ["missing_mask"]


def test_import_errors_and_config_file(tmp_path, capsys):
    src = _release(tmp_path / "rel", ["P001_0000", "scan-notes"])
    out = tmp_path / "ds"
    assert main(["dataset", "import", "release", str(src), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "scan-notes.png" in err and "--skip-unmatched" in err
    cfg = tmp_path / "import.yaml"
    cfg.write_text("release:\n  skip_unmatched: true\n  name: from-yaml\n")
    assert main(["dataset", "import", "release", str(src), "--out", str(out), "--config", str(cfg)]) == 0
    assert "skipped:" in capsys.readouterr().out
    assert Dataset.load(out).meta["name"] == "from-yaml"
    assert main(["dataset", "import", "release", str(src), "--out", str(out), "--overwrite",
                 "--set", "skip_unmatchd=true"]) == 1
    assert "did you mean 'skip_unmatched'" in capsys.readouterr().err
