"""TID 1500 measurement report, GSPS outline and burned-in Secondary Capture: dciodvfy, bytes
round trip, and the content a reader would rely on."""

from __future__ import annotations

import io

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest

from segmentation.dicom.calibration import CalibrationSource, calibrate
from segmentation.dicom.overlay import (
    build_burned_in_capture,
    build_presentation_state,
    outline_polylines,
)
from segmentation.dicom.seg import build_segmentation
from segmentation.dicom.sop_classes import MULTIFRAME_GRAYSCALE_BYTE_SC, XRF_IMAGE
from segmentation.dicom.sr import CALIBRATION_CODES, build_measurement_report, measure_frames
from segmentation.errors import DicomWriteError
from tests.dicom import derive
from tests.dicom.checks import (
    PRIVATE_SCHEME_WARNING,
    SOURCE_INHERITED_WARNINGS,
    reread,
    to_bytes,
    validate,
)

ALGORITHM = {"algorithm_name": "taviseg-test", "algorithm_version": "1.2.3"}
ROWS, COLUMNS = 40, 48


def source(n=3, **attributes):
    ds = derive.xa_dataset(derive.cine(n, ROWS, COLUMNS, bits=12), bits_stored=12, **attributes)
    frames = np.frombuffer(ds.PixelData, dtype="<u2").reshape(n, ROWS, COLUMNS)
    del ds.PixelData
    return ds, frames


def seg_for(header, masks, frames, **kwargs):
    return build_segmentation(header, masks, frame_numbers=frames, series_number=901,
                              series_description="Aortic root (AI)", **ALGORITHM, **kwargs)


def report(header, seg, measurements, calibration):
    return build_measurement_report(header, seg, measurements, calibration=calibration,
                                    series_number=902, series_description="Aortic root area",
                                    **ALGORITHM)


@pytest.mark.parametrize(
    ("attributes", "unit", "code"),
    [
        ({"PixelSpacing": [0.2, 0.25]}, "mm2", "CAL-PIXSPACING"),
        ({"ImagerPixelSpacing": [0.3, 0.3]}, "mm2", "CAL-IPS-DETECTOR"),
        ({}, "{pixels}", "CAL-PIXELS"),
    ],
)
def test_measurement_report(tmp_path, attributes, unit, code):
    header, _ = source(**attributes)
    masks = derive.disc_masks(3, ROWS, COLUMNS)
    seg = seg_for(header, masks, [1, 2, 3])
    calibration = calibrate(header)
    assert CALIBRATION_CODES[calibration.source] == code
    measurements = measure_frames(masks, [1, 2, 3], [0.9, 0.5, 0.75])
    sr = report(header, seg, measurements, calibration)
    assert sr.StudyInstanceUID == header.StudyInstanceUID and sr.SeriesNumber == 902

    back = hd.sr.srread(io.BytesIO(to_bytes(sr)))
    groups = back.content.get_planar_roi_measurement_groups()
    assert len(groups) == 3
    for k, group in enumerate(groups):
        area, certainty = group.get_measurements()
        assert area.name.meaning == "Area" and area.unit.value == unit
        pixels = int(masks[k].sum())
        expected = pixels * 0.2 * 0.25 if "PixelSpacing" in attributes else (
            pixels * 0.09 if "ImagerPixelSpacing" in attributes else pixels)
        assert area.value == pytest.approx(expected)
        assert area.method.value == code and area.method.scheme_designator == "99TAVISEG"
        assert certainty.value == pytest.approx([90.0, 50.0, 75.0][k]) and certainty.unit.value == "%"
        reference = group.referenced_segmentation_frame
        assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert list(reference.referenced_frame_numbers) == [k + 1]
        assert not reference.referenced_segment_numbers  # frame given: no segment number allowed
        source_image = reference.source_image_for_segmentation
        assert source_image.referenced_sop_instance_uid == header.SOPInstanceUID
        assert list(source_image.referenced_frame_numbers) == [k + 1]
    validate(sr, tmp_path, "sr", allowed=(PRIVATE_SCHEME_WARNING,))


def test_report_requires_a_seg_frame_for_every_measured_frame():
    header, _ = source()
    masks = derive.disc_masks(3, ROWS, COLUMNS)
    seg = seg_for(header, masks, [1, 2, 3], keep_empty_frames=False)
    with pytest.raises(DicomWriteError, match="keep_empty_frames"):
        report(header, seg, measure_frames(masks, [1, 2, 3]), calibrate(header))
    with pytest.raises(DicomWriteError, match="not in"):
        report(header, seg, [measure_frames(masks, [1, 2, 3], [1.5, 0, 0])[0]], calibrate(header))


def test_outline_polylines_are_closed_pixel_coordinates():
    mask = np.zeros((ROWS, COLUMNS), dtype=bool)
    mask[10:20, 5:25] = True
    mask[30:35, 30:40] = True
    lines = outline_polylines(mask)
    assert len(lines) == 2
    for line in lines:
        assert np.array_equal(line[0], line[-1])
        assert line.min() >= 0.5 and line[:, 0].max() <= COLUMNS and line[:, 1].max() <= ROWS
    areas = sorted(cv2.contourArea((line - 0.5).astype(np.float32)) for line in lines)
    assert areas == pytest.approx([36.0, 171.0])  # polygon through the boundary pixel centres
    assert outline_polylines(np.zeros((4, 4), dtype=bool)) == []


def test_presentation_state(tmp_path):
    header, _ = source(WindowCenter=2048, WindowWidth=4096)
    masks = derive.disc_masks(3, ROWS, COLUMNS)  # frame 2 is empty
    gsps = build_presentation_state(header, masks, frame_numbers=[1, 2, 3], series_number=903,
                                    series_description="Aortic root outline", **ALGORITHM)
    back = reread(gsps)
    assert back.SOPClassUID == pydicom.uid.GrayscaleSoftcopyPresentationStateStorage
    assert back.StudyInstanceUID == header.StudyInstanceUID
    annotations = back.GraphicAnnotationSequence
    frames = [int(a.ReferencedImageSequence[0].ReferencedFrameNumber) for a in annotations]
    assert frames == [1, 3]  # no outline where there is no root
    for annotation in annotations:
        assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
        assert annotation.GraphicLayer == "AORTIC_ROOT"
        graphic = annotation.GraphicObjectSequence[0]
        assert graphic.GraphicType == "POLYLINE" and graphic.GraphicAnnotationUnits == "PIXEL"
        points = np.asarray(graphic.GraphicData, dtype=float).reshape(-1, 2)
        assert np.array_equal(points[0], points[-1])
    voi = back.SoftcopyVOILUTSequence[0]
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (2048.0, 4096.0)
    assert back.PresentationLUTShape == "IDENTITY"
    validate(gsps, tmp_path, "gsps")


def test_presentation_state_of_monochrome1_single_frame_source(tmp_path):
    header = derive.xa_dataset(derive.cine(1, ROWS, COLUMNS), sop_class=XRF_IMAGE, modality="RF",
                               photometric="MONOCHROME1", with_number_of_frames=False)
    del header.PixelData
    masks = derive.disc_masks(1, ROWS, COLUMNS)
    gsps = build_presentation_state(header, masks, frame_numbers=[1], series_number=903,
                                    series_description="Aortic root outline", **ALGORITHM)
    back = reread(gsps)
    assert back.PresentationLUTShape == "INVERSE"
    assert "ReferencedFrameNumber" not in back.GraphicAnnotationSequence[0].ReferencedImageSequence[0]
    voi = back.SoftcopyVOILUTSequence[0]
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (128.0, 256.0)  # stored range
    validate(gsps, tmp_path, "gsps-mono1")


def test_burned_in_secondary_capture(tmp_path):
    header, frames = source()
    masks = derive.disc_masks(3, ROWS, COLUMNS)
    sc = build_burned_in_capture(header, iter(frames[[0, 2]]), masks[[0, 2]], frame_numbers=[1, 3],
                                 series_number=904, series_description="Aortic root burned in",
                                 **ALGORITHM)
    back = reread(sc)
    assert back.SOPClassUID == MULTIFRAME_GRAYSCALE_BYTE_SC
    assert back.StudyInstanceUID == header.StudyInstanceUID
    assert list(back.SourceImageSequence[0].ReferencedFrameNumber) == [1, 3]
    pixels = back.pixel_array
    assert pixels.shape == (2, ROWS, COLUMNS) and pixels.dtype == np.uint8
    windowed = np.clip(np.rint((frames[[0, 2]].astype(np.float32) + 0.5) / 4095 * 255), 0, 255)
    for k, mask in enumerate(masks[[0, 2]]):
        line = np.zeros((ROWS, COLUMNS), dtype=np.uint8)
        cv2.polylines(line, [np.rint(p - 0.5).astype(np.int32).reshape(-1, 1, 2)
                             for p in outline_polylines(mask)], True, 1, 1)
        assert (pixels[k][line == 1] == 255).all()  # the outline is burned in white
        far = cv2.dilate(line, np.ones((5, 5), np.uint8)) == 0
        assert np.abs(pixels[k][far].astype(int) - windowed[k][far]).max() <= 1  # untouched
    validate(sc, tmp_path, "sc-burned")
    with pytest.raises(DicomWriteError, match="frames for 2 masks"):
        build_burned_in_capture(header, iter(frames[:1]), masks[:2], frame_numbers=[1, 2],
                                series_number=904, series_description="x", **ALGORITHM)


@pytest.mark.samples
def test_outputs_for_a_real_cine_validate(samples_dir, tmp_path):
    from segmentation.dicom.reader import open_run

    run = open_run(samples_dir / "rubo_0002_XA_jpegbaseline_96f.dcm")
    numbers = [1, 48, 96]
    yy, xx = np.mgrid[: run.rows, : run.columns]
    masks = np.stack([(yy - 200) ** 2 + (xx - 250) ** 2 < (60 + 10 * k) ** 2 for k in range(3)])
    seg = seg_for(run.dataset, masks, numbers)
    sr = report(run.dataset, seg, measure_frames(masks, numbers, [0.8, 0.9, 0.7]), run.calibration)
    gsps = build_presentation_state(run.dataset, masks, frame_numbers=numbers, series_number=903,
                                    series_description="outline", **ALGORITHM)
    sc = build_burned_in_capture(run.dataset, (run.read_frame(n - 1) for n in numbers), masks,
                                 frame_numbers=numbers, bits_stored=run.bits_stored,
                                 series_number=904, series_description="burned in", **ALGORITHM)
    assert run.calibration.source is CalibrationSource.PIXEL_UNITS
    for name, ds in [("seg", seg), ("sr", sr), ("gsps", gsps), ("sc", sc)]:
        validate(ds, tmp_path, name, allowed=(*SOURCE_INHERITED_WARNINGS, PRIVATE_SCHEME_WARNING))
