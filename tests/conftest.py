"""Shared test fixtures: real-peer helpers, sample files, free loopback ports."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import training  # noqa: F401 - first: turns off Albumentations' version check over the network
from testkit.paths import REPO, free_port, samples_path  # noqa: F401 - re-exported to the tests

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: scripts/test.sh has just installed every peer: a missing one is then a failure, not a skip.
PEERS_REQUIRED = IN_CI or os.environ.get("TAVISEG_REQUIRE_PEERS", "") == "1"


def require_tool(name: str) -> str:
    """Path of an external program; skip the test locally, fail it in CI, when it is missing."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        msg = f"{name} is not installed (bash scripts/setup.sh installs it)"
        if PEERS_REQUIRED:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The real angiography samples. Their absence fails the test, in CI and everywhere else:
    the suite's DICOM claims rest on them (set TAVISEG_DICOM_SAMPLES or use ../shared/dicom-samples)."""
    path = samples_path()
    if path is None:
        pytest.fail(
            "real DICOM samples not found: set TAVISEG_DICOM_SAMPLES to their folder (with "
            "MANIFEST.tsv) or place them in ../shared/dicom-samples beside the repository"
        )
    return path
