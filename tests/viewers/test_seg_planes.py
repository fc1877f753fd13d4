"""The SEG variant OHIF needs (``image_plane_groups=True``, see segmentation.dicom.seg) is still
a valid, exactly readable SEG of the XA run: dciodvfy finds no error, highdicom reads back the
masks frame by frame, no Frame of Reference is written, every frame references its source
frame; an uncalibrated run gets no image plane groups (no spacing to state)."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np

from segmentation.dicom.seg import build_segmentation, referenced_frames
from testkit.viewers import build_viewer_study
from tests.peers import run_dciodvfy

ALGORITHM = {"algorithm_name": "taviseg-test", "algorithm_version": "1"}


def test_plane_groups_seg_is_valid_and_reads_back(tmp_path):
    study = build_viewer_study(n_frames=4, rows=64, columns=80)
    seg = study.seg_planes
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert "FrameOfReferenceUID" not in seg
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    # build_viewer_study's run: ImagerPixelSpacing 0.3 mm, SID 1200, SOD 800 -> 0.2 mm at the isocentre
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.2, 0.2]
    assert referenced_frames(seg) == [1, 2, 3, 4]
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    errors, _, output = run_dciodvfy(path)
    assert errors == [], output
    back = hd.seg.segread(io.BytesIO(path.read_bytes()))
    pixels = back.get_pixels_by_source_frame(study.source.SOPInstanceUID, [1, 2, 3, 4],
                                             ignore_spatial_locations=True)
    assert np.array_equal(pixels[..., 0].astype(bool), study.masks)


def test_uncalibrated_run_gets_no_plane_groups():
    study = build_viewer_study(n_frames=2, rows=32, columns=40)
    source = study.source.copy()
    for keyword in ("ImagerPixelSpacing", "PixelSpacing", "DistanceSourceToDetector",
                    "DistanceSourceToPatient", "EstimatedRadiographicMagnificationFactor"):
        if keyword in source:
            delattr(source, keyword)
    seg = build_segmentation(source, study.masks, frame_numbers=[1, 2], series_number=905,
                             series_description="x", image_plane_groups=True, **ALGORITHM)
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert "PlaneOrientationSequence" not in shared and "PixelMeasuresSequence" not in shared
