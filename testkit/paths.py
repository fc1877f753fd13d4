"""Where things are for tests and benches: the repository, free ports, the real DICOM samples."""

from __future__ import annotations

import os
import socket
from pathlib import Path

#: The repository root (the folder holding pyproject.toml).
REPO = Path(__file__).resolve().parent.parent
#: Environment variable naming the folder of real DICOM samples (with MANIFEST.tsv).
SAMPLES_ENV = "TAVISEG_DICOM_SAMPLES"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the OS picks it; no fixed ports in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples_path() -> Path | None:
    """Folder of the real DICOM samples: $TAVISEG_DICOM_SAMPLES or ../shared/dicom-samples."""
    env = os.environ.get(SAMPLES_ENV)
    path = Path(env) if env else REPO.parent / "shared" / "dicom-samples"
    return path if (path / "MANIFEST.tsv").is_file() else None
