"""A non-editable install works from any folder: the code and the default configuration travel
in the wheel, nothing is read from the source tree.

The wheel is built offline (``--no-build-isolation``, with the set-up's setuptools) and installed
with ``--no-deps`` into a fresh virtual environment that borrows the project environment's
third-party packages through a ``.pth`` line (so torch is not installed twice). That ``.pth``
line does not run the project environment's own ``.pth`` files, so its editable finder, which
maps our packages to the source tree, is not loaded: every package of ours must come from the
wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from testkit.paths import REPO

OUR_PACKAGES = ("tavicore", "tavidata", "segmentation", "dicom_node", "training", "taviseg", "conf")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh environment with taviseg installed from a wheel; returns its bin folder."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # a copy: building in the checkout would leave build/ in it
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, check=True, capture_output=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (REPO / name).is_file() and not name.startswith(("tests/", "bench/", "docs/")):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(wheels), str(source)], check=True, cwd=root, timeout=300)
    (wheel,) = wheels.glob("taviseg-*.whl")
    env_dir = root / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    (purelib / "project_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install",
                    "--no-deps", "--no-index", "-q", str(wheel)], check=True, cwd=root, timeout=300)
    return env_dir / "bin"


def test_every_package_and_the_configuration_come_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    code = ("import importlib, json; "
            f"print(json.dumps({{n: importlib.import_module(n).__file__ for n in {OUR_PACKAGES!r}}}))")
    out = subprocess.run([str(installed / "python"), "-c", code], cwd=tmp_path, check=True, text=True,
                         capture_output=True, timeout=120).stdout
    files = __import__("json").loads(out)
    for name, file in files.items():
        assert str(REPO) not in file and "site-packages" in file, (name, file)
    conf = Path(files["conf"]).parent
    assert (conf / "node.yaml").is_file() and (conf / "phantom.yaml").is_file()
    assert sorted(p.name for p in (conf / "train").glob("*.yaml")) == sorted(
        p.name for p in (REPO / "conf" / "train").glob("*.yaml"))


def test_phantom_runs_from_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(installed / "taviseg"), "phantom", "--preset", "tiny", "--out", "cohort"],
                            cwd=tmp_path, env=env, text=True, capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = (tmp_path / "cohort" / "manifest.csv").read_text().splitlines()
    assert len(manifest) == 1 + 16  # tiny preset: 4 patients x 1 run x 4 frames
    assert (tmp_path / "cohort" / "stats.json").is_file()
