"""Checks shared by the DICOM writer tests: bytes round trip and dciodvfy verdicts."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from tests.peers import run_dciodvfy

#: dciodvfy warnings about values the output copies from a real source header (patient and
#: study attributes must match the source's study, so they are not "fixed"), and about our
#: private coding scheme of calibration rules (dciodvfy knows no private schemes).
SOURCE_INHERITED_WARNINGS = (
    "needed to build DICOMDIR",  # source has no StudyID / StudyTime
    "Retired Person Name form",  # source PatientName without '^'
)
PRIVATE_SCHEME_WARNING = "Unrecognized defined term = <99TAVISEG>"


def to_bytes(ds: Dataset) -> bytes:
    """Encode ``ds`` as a DICOM file (preamble, file meta) in memory."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def reread(ds: Dataset) -> Dataset:
    """``ds`` written to bytes and read back with pydicom."""
    return pydicom.dcmread(io.BytesIO(to_bytes(ds)))


def validate(ds: Dataset, tmp_path: Path, name: str, *, allowed: tuple[str, ...] = ()) -> list[str]:
    """Run dciodvfy on ``ds``; assert no errors and no warnings beyond ``allowed`` substrings.

    Returns the (allowed) warnings so a test can assert on them.
    """
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(to_bytes(ds))
    errors, warnings, output = run_dciodvfy(path)
    assert errors == [], f"dciodvfy errors for {name}:\n{output}"
    unexpected = [w for w in warnings if not any(a in w for a in allowed)]
    assert unexpected == [], f"dciodvfy warnings for {name}:\n{output}"
    return warnings
