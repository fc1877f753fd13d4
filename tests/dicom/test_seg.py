"""DICOM SEG from classic XA/XRF, Secondary Capture and Enhanced XA sources: dciodvfy-clean,
read back exactly with highdicom, no borrowed Frame of Reference."""

from __future__ import annotations

import copy
import io

import highdicom as hd
import numpy as np
import pydicom
import pytest

from segmentation.dicom import sop_classes
from segmentation.dicom.seg import build_segmentation, referenced_frames
from segmentation.errors import DicomWriteError
from tests.dicom import derive
from tests.dicom.checks import SOURCE_INHERITED_WARNINGS, to_bytes, validate

ALGORITHM = {"algorithm_name": "taviseg-test", "algorithm_version": "1.2.3"}


def build(source, masks, frame_numbers, **kwargs):
    kwargs = {"series_number": 901, "series_description": "Aortic root (AI)", **ALGORITHM, **kwargs}
    return build_segmentation(source, masks, frame_numbers=frame_numbers, **kwargs)


def read_back(seg) -> hd.seg.Segmentation:
    return hd.seg.segread(io.BytesIO(to_bytes(seg)))


def source_header(n=4, rows=32, columns=40, **attributes):
    ds = derive.xa_dataset(derive.cine(n, rows, columns), **attributes)
    del ds.PixelData
    return ds


def assert_no_borrowed_geometry(seg):
    assert "FrameOfReferenceUID" not in seg
    assert "DimensionOrganizationType" not in seg
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PlaneOrientationSequence" in shared:  # the image plane groups OHIF needs: identity, never the patient's
        assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert float(shared.PixelMeasuresSequence[0].SliceThickness) == 1.0
    for item in seg.PerFrameFunctionalGroupsSequence:
        assert "PlanePositionSequence" not in item
    pointers = [d.DimensionIndexPointer for d in seg.DimensionIndexSequence]
    assert pydicom.tag.Tag("ImagePositionPatient") not in pointers


def test_multiframe_xa_seg_reads_back_exactly_with_empty_frames_kept(tmp_path):
    source = source_header()
    masks = derive.disc_masks(4, 32, 40)
    before = copy.deepcopy(source)
    seg = build(source, masks, [1, 2, 3, 4])
    assert source == before, "the source header must not be modified"
    assert int(seg.NumberOfFrames) == 4 and seg.SegmentationType == "BINARY"
    assert referenced_frames(seg) == [1, 2, 3, 4]
    assert_no_borrowed_geometry(seg)
    temporal = [int(i.FrameContentSequence[0].TemporalPositionIndex)
                for i in seg.PerFrameFunctionalGroupsSequence]
    assert temporal == [1, 2, 3, 4]
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert (seg.SeriesNumber, seg.SeriesDescription) == (901, "Aortic root (AI)")
    assert seg.PatientID == source.PatientID

    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "aortic root" and segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "8128003"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("taviseg-test", "1.2.3")
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"

    back = read_back(seg)
    pixels = back.get_pixels_by_source_frame(source.SOPInstanceUID, [1, 2, 3, 4],
                                             ignore_spatial_locations=True)
    assert np.array_equal(pixels[..., 0].astype(bool), masks)
    assert not masks[1].any()  # the empty frame survived
    validate(seg, tmp_path, "seg-xa")


def test_subset_of_frames_references_the_real_source_frames(tmp_path):
    source = source_header(n=6)
    masks = derive.disc_masks(3, 32, 40)
    seg = build(source, masks, [2, 5, 6])
    assert referenced_frames(seg) == [2, 5, 6]
    pixels = read_back(seg).get_pixels_by_source_frame(source.SOPInstanceUID, [5, 6, 2],
                                                       ignore_spatial_locations=True)
    assert np.array_equal(pixels[..., 0].astype(bool), masks[[1, 2, 0]])
    validate(seg, tmp_path, "seg-subset")


def test_empty_frames_can_be_omitted():
    source = source_header()
    seg = build(source, derive.disc_masks(4, 32, 40), [1, 2, 3, 4], keep_empty_frames=False)
    assert referenced_frames(seg) == [1, 3, 4]


def test_fractional_seg(tmp_path):
    source = source_header(n=2)
    masks = derive.disc_masks(2, 32, 40)
    probabilities = np.linspace(0, 1, 2 * 32 * 40, dtype=np.float32).reshape(2, 32, 40)
    seg = build(source, masks, [1, 2], fractional=probabilities)
    assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentationFractionalType == "PROBABILITY"
    pixels = read_back(seg).get_pixels_by_source_frame(
        source.SOPInstanceUID, [1, 2], ignore_spatial_locations=True, rescale_fractional=True)
    assert np.abs(pixels[..., 0] - probabilities).max() <= 1 / 255 + 1e-6
    validate(seg, tmp_path, "seg-fractional")


def test_invalid_patient_sex_is_sanitised(tmp_path):
    with pytest.warns(UserWarning, match="Invalid value for VR CS"):
        source = source_header(n=2, PatientSex="?")
    seg = build(source, derive.disc_masks(2, 32, 40), [1, 2])
    assert seg.PatientSex == ""
    validate(seg, tmp_path, "seg-sex")


def test_single_frame_xrf_without_number_of_frames(tmp_path):
    source = derive.xa_dataset(derive.cine(1, 24, 32), sop_class=sop_classes.XRF_IMAGE,
                               modality="RF", with_number_of_frames=False)
    del source.PixelData
    masks = derive.disc_masks(1, 24, 32)
    seg = build(source, masks, [1])
    assert referenced_frames(seg) == [None]  # no frame reference into a single-frame image
    assert_no_borrowed_geometry(seg)
    pixels = read_back(seg).get_pixels_by_source_instance([source.SOPInstanceUID],
                                                          ignore_spatial_locations=True)
    assert np.array_equal(pixels[0, ..., 0].astype(bool), masks[0])
    validate(seg, tmp_path, "seg-xrf")


def test_secondary_capture_source_uses_highdicom_directly(tmp_path):
    source = derive.xa_dataset(derive.cine(1, 24, 32), sop_class=sop_classes.SECONDARY_CAPTURE_IMAGE,
                               ConversionType="WSD")
    del source.PixelData
    masks = derive.disc_masks(1, 24, 32)
    seg = build(source, masks, [1])
    assert referenced_frames(seg) == [None]
    pixels = read_back(seg).get_pixels_by_source_instance([source.SOPInstanceUID],
                                                          ignore_spatial_locations=True)
    assert np.array_equal(pixels[0, ..., 0].astype(bool), masks[0])
    validate(seg, tmp_path, "seg-sc")


def test_enhanced_xa_source(tmp_path):
    source = derive.enhanced_xa(derive.cine(3, 24, 32), object_spacing=[(0.2, 0.2)] * 3)
    del source.PixelData
    masks = derive.disc_masks(3, 24, 32)
    seg = build(source, masks, [1, 2, 3])
    assert referenced_frames(seg) == [1, 2, 3]
    assert_no_borrowed_geometry(seg)
    pixels = read_back(seg).get_pixels_by_source_frame(source.SOPInstanceUID, [1, 2, 3],
                                                       ignore_spatial_locations=True)
    assert np.array_equal(pixels[..., 0].astype(bool), masks)
    validate(seg, tmp_path, "seg-exa")


@pytest.mark.parametrize(
    ("masks_shape", "frames", "message"),
    [
        ((2, 31, 40), [1, 2], "differs from the source"),
        ((2, 32, 40), [1], "frame numbers for 2 masks"),
        ((2, 32, 40), [1, 1], "unique"),
        ((2, 32, 40), [1, 9], "outside the source's frames"),
    ],
)
def test_inconsistent_inputs_are_refused(masks_shape, frames, message):
    with pytest.raises(DicomWriteError, match=message):
        build(source_header(), np.zeros(masks_shape, dtype=bool), frames)


@pytest.mark.samples
@pytest.mark.parametrize(
    ("name", "frames"),
    [
        ("rubo_0002_XA_jpegbaseline_96f.dcm", list(range(1, 97))),
        ("orthanc_KarstenHilbertRF.dcm", [1]),  # PatientSex '?', no NumberOfFrames
        ("wg04_XA1_JPLL.dcm", [1]),  # Secondary Capture, Modality XA
    ],
)
def test_real_samples(samples_dir, tmp_path, name, frames):
    source = pydicom.dcmread(samples_dir / name, stop_before_pixels=True)
    rng = np.random.default_rng(7)
    masks = rng.random((len(frames), source.Rows, source.Columns)) > 0.7
    masks[len(frames) // 2] = False
    seg = build(source, masks, frames)
    back = read_back(seg)
    if referenced_frames(seg)[0] is None:
        pixels = back.get_pixels_by_source_instance([source.SOPInstanceUID],
                                                    ignore_spatial_locations=True)[0][np.newaxis]
    else:
        pixels = back.get_pixels_by_source_frame(source.SOPInstanceUID, frames,
                                                 ignore_spatial_locations=True)
    assert np.array_equal(pixels[..., 0].astype(bool), masks)
    validate(seg, tmp_path, f"seg-{name}", allowed=SOURCE_INHERITED_WARNINGS)


def test_a_calibrated_run_gets_the_image_plane_groups_by_default(tmp_path):
    """What OHIF needs to draw the SEG (tests/viewers): identity orientation and the run's
    calibrated spacing in the shared groups, still no Frame of Reference."""
    frames = derive.cine(3, 32, 40)
    source = derive.xa_dataset(frames, ImagerPixelSpacing=[0.3, 0.3], EstimatedRadiographicMagnificationFactor=1.5)
    masks = np.zeros((3, 32, 40), bool)
    masks[:, 8:20, 10:30] = True
    seg = build(source, masks, [1, 2, 3])
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == pytest.approx([0.2, 0.2])
    assert "FrameOfReferenceUID" not in seg
    plain = build(source, masks, [1, 2, 3], image_plane_groups=False)
    assert "PixelMeasuresSequence" not in plain.SharedFunctionalGroupsSequence[0]
