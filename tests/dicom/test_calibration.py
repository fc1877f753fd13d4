"""Each calibration rule, in order, on derived headers (and through the reader)."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import uid

from segmentation.dicom.calibration import Calibration, CalibrationSource, calibrate
from segmentation.dicom.reader import open_run
from tests.dicom import derive


def header(**attributes):
    ds = derive.xa_dataset(derive.cine(2, 8, 8), **attributes)
    del ds.PixelData
    return ds


def test_rule_1_object_pixel_spacing_per_frame_beats_everything():
    ds = derive.enhanced_xa(derive.cine(3, 8, 8), object_spacing=[(0.15, 0.15), (0.15, 0.15), (0.18, 0.17)],
                            shared_imager_spacing=(0.3, 0.3))
    ds.PixelSpacing = [0.5, 0.5]
    cal = calibrate(ds, number_of_frames=3)
    assert cal.source is CalibrationSource.OBJECT_PIXEL_SPACING_IN_CENTER_OF_BEAM
    assert cal.spacing_mm == (0.15, 0.15) and not cal.detector_plane
    assert cal.frame_spacing_mm == ((0.15, 0.15), (0.15, 0.15), (0.18, 0.17))
    assert cal.spacing_for(2) == (0.18, 0.17)
    assert cal.area(100, 2) == pytest.approx((100 * 0.18 * 0.17, "mm2"))


def test_rule_1_constant_per_frame_spacing_is_not_repeated():
    ds = derive.enhanced_xa(derive.cine(2, 8, 8), object_spacing=[(0.2, 0.2)] * 2)
    cal = calibrate(ds, number_of_frames=2)
    assert cal.spacing_mm == (0.2, 0.2) and cal.frame_spacing_mm is None


def test_rule_2_pixel_spacing_beats_imager_pixel_spacing():
    cal = calibrate(header(PixelSpacing=[0.25, 0.3], ImagerPixelSpacing=[0.4, 0.4],
                           EstimatedRadiographicMagnificationFactor=1.5))
    assert cal.source is CalibrationSource.PIXEL_SPACING and cal.spacing_mm == (0.25, 0.3)


def test_rule_3_imager_spacing_over_magnification():
    cal = calibrate(header(ImagerPixelSpacing=[0.2, 0.2], EstimatedRadiographicMagnificationFactor=1.25,
                           DistanceSourceToPatient=750, DistanceSourceToDetector=1000))
    assert cal.source is CalibrationSource.MAGNIFICATION_FACTOR
    assert cal.spacing_mm == pytest.approx((0.16, 0.16))


def test_rule_4_imager_spacing_times_source_distances():
    cal = calibrate(header(ImagerPixelSpacing=[0.2, 0.2], DistanceSourceToPatient=750,
                           DistanceSourceToDetector=1000))
    assert cal.source is CalibrationSource.SOURCE_DISTANCES
    assert cal.spacing_mm == pytest.approx((0.15, 0.15)) and not cal.detector_plane


def test_rule_5_imager_spacing_alone_is_flagged_detector_plane():
    cal = calibrate(header(ImagerPixelSpacing=[0.2, 0.2]))
    assert cal.source is CalibrationSource.IMAGER_PIXEL_SPACING
    assert cal.detector_plane and cal.spacing_mm == (0.2, 0.2)
    assert "detector" in cal.describe()


def test_rule_5_when_distances_are_implausible():
    cal = calibrate(header(ImagerPixelSpacing=[0.2, 0.2], DistanceSourceToPatient=1200,
                           DistanceSourceToDetector=1000))
    assert cal.source is CalibrationSource.IMAGER_PIXEL_SPACING


def test_rule_6_configured_default_then_rule_7_pixel_units():
    assert calibrate(header(), default_spacing_mm=0.390625) == Calibration(
        (0.390625, 0.390625), CalibrationSource.CONFIGURED_DEFAULT)
    assert calibrate(header(), default_spacing_mm=(0.3, 0.4)).spacing_mm == (0.3, 0.4)
    cal = calibrate(header())
    assert cal == Calibration(None, CalibrationSource.PIXEL_UNITS)
    assert not cal.calibrated and cal.area(1234) == (1234.0, "px2")


def test_invalid_values_fall_through_to_the_next_rule():
    cal = calibrate(header(PixelSpacing=[0, 0], ImagerPixelSpacing=[0.2, 0.2],
                           EstimatedRadiographicMagnificationFactor=0))
    assert cal.source is CalibrationSource.IMAGER_PIXEL_SPACING
    with pytest.raises(ValueError, match="default_spacing_mm"):
        calibrate(header(), default_spacing_mm=-1.0)


def test_descriptions_fit_a_dicom_long_string():
    assert all(len(source.description) <= 64 for source in CalibrationSource)


RULES_IN_FILES = [
    ("enhanced", CalibrationSource.OBJECT_PIXEL_SPACING_IN_CENTER_OF_BEAM, (0.1, 0.1)),
    ({"PixelSpacing": [0.25, 0.25], "ImagerPixelSpacing": [0.3, 0.3]}, CalibrationSource.PIXEL_SPACING,
     (0.25, 0.25)),
    ({"ImagerPixelSpacing": [0.3, 0.3], "EstimatedRadiographicMagnificationFactor": 1.5},
     CalibrationSource.MAGNIFICATION_FACTOR, (0.2, 0.2)),
    ({"ImagerPixelSpacing": [0.2, 0.2], "DistanceSourceToPatient": 800, "DistanceSourceToDetector": 1000},
     CalibrationSource.SOURCE_DISTANCES, (0.16, 0.16)),
    ({"ImagerPixelSpacing": [0.2, 0.2]}, CalibrationSource.IMAGER_PIXEL_SPACING, (0.2, 0.2)),
    ("default", CalibrationSource.CONFIGURED_DEFAULT, (0.3, 0.3)),
    ({}, CalibrationSource.PIXEL_UNITS, None),
]


@pytest.mark.parametrize(("attributes", "rule", "spacing"), RULES_IN_FILES, ids=lambda v: getattr(v, "value", None))
def test_reader_records_the_rule_it_used_on_derived_files(tmp_path, attributes, rule, spacing):
    if attributes == "enhanced":
        ds = derive.enhanced_xa(derive.cine(2, 8, 8), object_spacing=[(0.1, 0.1), (0.12, 0.12)])
    else:
        ds = derive.xa_dataset(derive.cine(2, 8, 8), **(attributes if isinstance(attributes, dict) else {}))
    path = derive.save(ds, tmp_path / "calibration.dcm", transfer_syntax=uid.ExplicitVRLittleEndian)
    run = open_run(path, default_spacing_mm=0.3 if attributes == "default" else None)
    assert run.calibration.source is rule
    assert run.calibration.detector_plane is (rule is CalibrationSource.IMAGER_PIXEL_SPACING)
    if spacing is None:
        assert run.calibration.spacing_mm is None
    else:
        assert np.allclose(run.calibration.spacing_mm, spacing)  # FL/DS values: compare loosely
    if attributes == "enhanced":
        assert np.allclose(run.calibration.frame_spacing_mm, [(0.1, 0.1), (0.12, 0.12)])
