"""Fixtures of the data-set tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dataset.synthetic import write_dataset


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    """Three patients with 2, 3 and 1 frames."""
    return write_dataset(tmp_path / "ds", {"P001": 2, "P002": 3, "P003": 1})
