"""Shared test fixtures: real-peer helpers, sample files, free loopback ports."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

import training  # noqa: F401  (first: turns off Albumentations' version check over the network)

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: scripts/test.sh has just installed every peer: a missing one is then a failure, not a skip.
PEERS_REQUIRED = IN_CI or os.environ.get("TAVISEG_REQUIRE_PEERS", "") == "1"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the OS picks it; no fixed ports in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_tool(name: str) -> str:
    """Path of an external program; skip the test locally, fail it in CI, when it is missing."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        msg = f"{name} is not installed (bash scripts/setup.sh installs it)"
        if PEERS_REQUIRED:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def samples_path() -> Path | None:
    """Folder of the real DICOM samples: $TAVISEG_DICOM_SAMPLES or ../shared/dicom-samples."""
    env = os.environ.get("TAVISEG_DICOM_SAMPLES")
    path = Path(env) if env else REPO.parent / "shared" / "dicom-samples"
    return path if (path / "MANIFEST.tsv").is_file() else None


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The real angiography samples; skipped with a clear message when absent (failed in CI)."""
    path = samples_path()
    if path is None:
        msg = (
            "real DICOM samples not found: set TAVISEG_DICOM_SAMPLES or place them in "
            "../shared/dicom-samples (with MANIFEST.tsv)"
        )
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path
