"""Routing on SOP Class and Modality together."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset

from segmentation.dicom import sop_classes as sc
from segmentation.dicom.sop_classes import InputKind, classify, explain, sop_class_name


def header(sop_class: str, modality: str | None, *, rows: bool = True) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    if modality is not None:
        ds.Modality = modality
    if rows:
        ds.Rows, ds.Columns = 8, 8
    return ds


@pytest.mark.parametrize(
    ("sop_class", "modality", "expected"),
    [
        (sc.XA_IMAGE, "XA", InputKind.IMAGE),
        (sc.ENHANCED_XA_IMAGE, "XA", InputKind.IMAGE),
        (sc.XRF_IMAGE, "RF", InputKind.IMAGE),
        (sc.ENHANCED_XRF_IMAGE, "RF", InputKind.IMAGE),
        (sc.XA_IMAGE, None, InputKind.IMAGE),  # Modality missing: the SOP class decides
        (sc.XA_IMAGE, "CT", InputKind.UNSUPPORTED),  # inconsistent object
        (sc.SECONDARY_CAPTURE_IMAGE, "XA", InputKind.IMAGE),  # the WG-04 case
        (sc.SECONDARY_CAPTURE_IMAGE, "RF", InputKind.IMAGE),
        (sc.MULTIFRAME_GRAYSCALE_WORD_SC, "XA", InputKind.IMAGE),
        (sc.SECONDARY_CAPTURE_IMAGE, "OT", InputKind.UNSUPPORTED),
        (sc.SECONDARY_CAPTURE_IMAGE, None, InputKind.UNSUPPORTED),
        ("1.2.840.10008.5.1.4.1.1.2", "CT", InputKind.UNSUPPORTED),  # CT image
        ("1.2.840.10008.5.1.4.1.1.66.4", "SEG", InputKind.UNSUPPORTED),  # our own output
        ("1.2.840.10008.5.1.4.1.1.13.1.1", "XA", InputKind.UNSUPPORTED),  # X-Ray 3D Angiographic
    ],
)
def test_images_are_routed_on_sop_class_and_modality(sop_class, modality, expected):
    assert classify(header(sop_class, modality)) is expected


@pytest.mark.parametrize(
    "sop_class",
    [
        "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
        "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
        "1.2.840.10008.5.1.4.1.1.9.1.1",  # 12-lead ECG waveform
        "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    ],
)
def test_non_image_objects_are_recognised_and_named(sop_class):
    ds = header(sop_class, "SR", rows=False)
    assert classify(ds) is InputKind.NON_IMAGE
    reason = explain(ds)
    assert sop_class in reason and "not an image" in reason
    assert pydicom.uid.UID(sop_class).name in reason


def test_unknown_class_without_pixels_is_non_image_and_explanations_list_alternatives():
    assert classify(header("1.2.3.4", None, rows=False)) is InputKind.NON_IMAGE
    reason = explain(header("1.2.840.10008.5.1.4.1.1.2", "CT"))
    assert "X-Ray Angiographic Image Storage" in reason and "Modality CT" in reason


def test_input_sop_classes_cover_projection_and_secondary_capture():
    assert sc.PROJECTION_IMAGE_SOP_CLASSES < sc.INPUT_IMAGE_SOP_CLASSES
    assert sc.SECONDARY_CAPTURE_IMAGE in sc.INPUT_IMAGE_SOP_CLASSES
    assert sop_class_name(sc.XRF_IMAGE).startswith("X-Ray Radiofluoroscopic Image Storage")
    assert sop_class_name(None) == "(no SOP Class UID)"
