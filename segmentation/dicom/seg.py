"""DICOM Segmentation of the aortic root for one projection run: :func:`build_segmentation`.

One SEG per source run, in the source's study, in its own series: one segment "aortic root"
(SNOMED CT 8128003, category Anatomical Structure 91723000), AUTOMATIC, with the algorithm
identification (name, version, family Artificial Intelligence). Every SEG frame references
its source frame (DerivationImageSequence/SourceImageSequence with ReferencedFrameNumber);
empty frames are kept by default, so SEG frame k is the k-th requested source frame.

highdicom 0.28.2 refuses classic XA/XRF sources (multi-frame without a Frame of Reference;
single-frame XRF without NumberOfFrames; PatientSex '?'). The workaround, applied to every
source highdicom treats as multi-frame:

1. build a header-only *proxy* of the source from the sanitised header
   (:func:`segmentation.dicom.header.reference_header`) with temporary geometry: a new
   FrameOfReferenceUID, a shared PlaneOrientation/PixelMeasures group and one PlanePosition
   per requested frame, spaced along highdicom's slice normal so its sort keeps our order;
2. let highdicom build the SEG from the proxy;
3. strip the temporary geometry from the result (FrameOfReferenceUID,
   PositionReferenceIndicator, PlaneOrientation, PixelMeasures, PlanePosition, the 3D
   DimensionOrganizationType), replace the ImagePositionPatient dimension with
   TemporalPositionIndex (FrameContentSequence; = source frame number), and rewrite each
   ReferencedFrameNumber to the real source frame number (omitted for sources without a
   Multi-frame module, where a frame reference is not allowed).

With ``image_plane_groups=True`` (the default; tests/viewers shows why) step 3 keeps, in the shared functional
groups, a Plane Orientation item with the identity cosines (1,0,0,0,1,0) and a Pixel Measures
item (PixelSpacing: the run's calibrated spacing, the one the SR's mm values use; a nominal
SliceThickness of 1 mm, which highdicom's reader requires), for calibrated sources only: no
Frame of Reference is written, the SEG stays aligned pixel for pixel with its source frames.
OHIF v3 (cornerstone3D's SEG adapter) refuses a SEG without both items (it reads
``PixelMeasuresSequence`` and ``PlaneOrientationSequence.ImageOrientationPatient`` and
compares the latter with the source's orientation, which it takes as the identity for an XA
image that has none); both macros may be present without a Frame of Reference and dciodvfy
accepts them (tests/viewers, scripts/viewer_matrix.py).

Single-frame-IOD sources (Secondary Capture) go through highdicom unchanged. The module checks
the result (frame count, references) and raises DicomWriteError if highdicom's output differs
from what the workaround expects, e.g. after a highdicom upgrade (it is pinned).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from segmentation.dicom.header import (
    no_patient_data_warnings,
    reference_header,
    references_frames,
    source_frame_count,
)
from segmentation.errors import DicomWriteError

logger = logging.getLogger(__name__)

#: SNOMED CT codes of the one segment (value, scheme, meaning).
AORTIC_ROOT = ("8128003", "SCT", "Aortic root")
ANATOMICAL_STRUCTURE = ("91723000", "SCT", "Anatomical Structure")
ARTIFICIAL_INTELLIGENCE = ("123110", "DCM", "Artificial Intelligence")
DEFAULT_MANUFACTURER = "taviseg"


def _code(triple: tuple[str, str, str]):  # -> highdicom.sr.CodedConcept
    from highdicom.sr import CodedConcept  # heavy import

    return CodedConcept(value=triple[0], scheme_designator=triple[1], meaning=triple[2])


def segment_description(algorithm_name: str, algorithm_version: str, *, label: str = "aortic root"):
    """The highdicom SegmentDescription of the aortic root segment (number 1, AUTOMATIC)."""
    import highdicom as hd

    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=_code(ANATOMICAL_STRUCTURE),
        segmented_property_type=_code(AORTIC_ROOT),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm_name,
            family=_code(ARTIFICIAL_INTELLIGENCE),
            version=algorithm_version,
        ),
        anatomic_regions=None,
    )


def _slice_normal() -> np.ndarray:
    from highdicom.spatial import VOLUME_INDEX_CONVENTION, get_normal_vector

    return np.asarray(
        get_normal_vector([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], index_convention=VOLUME_INDEX_CONVENTION)
    )


def _proxy(header: Dataset, n_frames: int) -> Dataset:
    """Header-only proxy of the source with temporary patient geometry (see module doc)."""
    proxy = Dataset()
    proxy.update(header)
    proxy.NumberOfFrames = n_frames
    proxy.FrameOfReferenceUID = generate_uid()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures = Dataset()
    measures.PixelSpacing = [1, 1]
    measures.SliceThickness = 1
    shared = Dataset()
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelMeasuresSequence = [measures]
    proxy.SharedFunctionalGroupsSequence = [shared]
    normal = _slice_normal()
    per_frame = []
    for index in range(n_frames):
        position = Dataset()
        position.ImagePositionPatient = [float(v) for v in normal * index]
        item = Dataset()
        item.PlanePositionSequence = [position]
        per_frame.append(item)
    proxy.PerFrameFunctionalGroupsSequence = per_frame
    return proxy


_TEMPORARY_ROOT = ("FrameOfReferenceUID", "PositionReferenceIndicator", "DimensionOrganizationType")
_TEMPORARY_GROUPS = ("PlaneOrientationSequence", "PixelMeasuresSequence", "PlanePositionSequence")


def _image_plane_groups(shared: Dataset, header: Dataset) -> None:
    """Identity Plane Orientation and Pixel Measures of a calibrated source (see module doc)."""
    from segmentation.dicom.calibration import calibrate

    calibration = calibrate(header, number_of_frames=source_frame_count(header) or 1)
    if calibration.spacing_mm is None:
        logger.warning("SEG of uncalibrated %s: no image plane groups (no pixel spacing to state)",
                       header.get("SOPInstanceUID", "?"))
        return
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = [orientation]
    measures = Dataset()
    measures.PixelSpacing = [round(float(v), 6) for v in calibration.spacing_mm]
    measures.SliceThickness = 1  # nominal: highdicom's reader requires it; no volume is implied
    shared.PixelMeasuresSequence = [measures]


def _strip_geometry(seg: Dataset, frame_numbers: Sequence[int], multi_frame_source: bool,
                    header: Dataset | None = None) -> None:
    """Remove the proxy's geometry and point every frame at its real source frame (with
    ``header``: keep the image-plane groups of ``header``, see module doc)."""
    for keyword in _TEMPORARY_ROOT:
        if keyword in seg:
            delattr(seg, keyword)
    for keyword in _TEMPORARY_GROUPS:
        if keyword in seg.SharedFunctionalGroupsSequence[0]:
            delattr(seg.SharedFunctionalGroupsSequence[0], keyword)
    if header is not None:
        _image_plane_groups(seg.SharedFunctionalGroupsSequence[0], header)
    position_pointer = Tag("ImagePositionPatient")
    dimensions = list(seg.DimensionIndexSequence)
    position_slot = [i for i, d in enumerate(dimensions) if d.DimensionIndexPointer == position_pointer]
    if len(position_slot) != 1:
        raise DicomWriteError("highdicom output has no ImagePositionPatient dimension to replace")
    temporal = dimensions[position_slot[0]]
    temporal.DimensionIndexPointer = Tag("TemporalPositionIndex")
    temporal.FunctionalGroupPointer = Tag("FrameContentSequence")
    temporal.DimensionDescriptionLabel = "Source frame (temporal position)"
    for item in seg.PerFrameFunctionalGroupsSequence:
        if "PlanePositionSequence" in item:
            del item.PlanePositionSequence
        source_item = item.DerivationImageSequence[0].SourceImageSequence[0]
        proxy_number = int(source_item.ReferencedFrameNumber)
        if not 1 <= proxy_number <= len(frame_numbers):
            raise DicomWriteError(f"highdicom referenced proxy frame {proxy_number} out of range")
        source_number = int(frame_numbers[proxy_number - 1])
        if multi_frame_source:
            source_item.ReferencedFrameNumber = source_number
        else:
            del source_item.ReferencedFrameNumber
        content = item.FrameContentSequence[0]
        values = list(content.DimensionIndexValues)
        values[position_slot[0]] = source_number
        content.DimensionIndexValues = values
        content.TemporalPositionIndex = source_number


def _check_inputs(header: Dataset, masks: np.ndarray, frame_numbers: Sequence[int],
                  fractional: np.ndarray | None) -> tuple[np.ndarray, list[int]]:
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[np.newaxis]
    if masks.ndim != 3:
        raise DicomWriteError(f"masks must be (N, rows, columns), got shape {masks.shape}")
    rows, columns = int(header.Rows), int(header.Columns)
    if masks.shape[1:] != (rows, columns):
        raise DicomWriteError(
            f"mask size {masks.shape[1:]} differs from the source image {rows}x{columns}"
        )
    numbers = [int(n) for n in frame_numbers]
    if len(numbers) != masks.shape[0] or not numbers:
        raise DicomWriteError(
            f"{len(numbers)} frame numbers for {masks.shape[0]} masks (need one per mask, >= 1)"
        )
    if len(set(numbers)) != len(numbers):
        raise DicomWriteError(f"frame numbers must be unique, got {numbers}")
    available = source_frame_count(header) or 1
    bad = [n for n in numbers if not 1 <= n <= available]
    if bad:
        raise DicomWriteError(f"frame numbers {bad} outside the source's frames 1..{available}")
    if fractional is not None:
        fractional = np.asarray(fractional, dtype=np.float32)
        if fractional.shape != masks.shape:
            raise DicomWriteError(
                f"fractional shape {fractional.shape} differs from masks {masks.shape}"
            )
        if not np.all(np.isfinite(fractional)) or fractional.min() < 0 or fractional.max() > 1:
            raise DicomWriteError("fractional values must be finite and within [0, 1]")
    return masks.astype(bool, copy=False), numbers


def build_segmentation(
    source_header: Dataset,
    masks: np.ndarray,
    *,
    frame_numbers: Sequence[int],
    algorithm_name: str,
    algorithm_version: str,
    series_number: int,
    series_description: str,
    fractional: np.ndarray | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    keep_empty_frames: bool = True,
    manufacturer: str = DEFAULT_MANUFACTURER,
    manufacturer_model_name: str = "taviseg aortic root segmentation",
    device_serial_number: str = "1",
    content_label: str = "AORTIC_ROOT",
    content_description: str = "Aortic root segmentation",
    image_plane_groups: bool = True,
) -> Dataset:
    """Build the aortic-root DICOM Segmentation of one source run.

    Takes the source header (no pixel data needed), masks (N, rows, columns) bool at the
    source's size, ``frame_numbers`` (1-based source frame of each mask), the algorithm's
    name and version, the output series number and description, and optionally
    ``fractional`` probabilities (N, rows, columns) in [0, 1]: then the SEG is FRACTIONAL
    (PROBABILITY, 8 bits) and ``masks`` only fix the shape. ``keep_empty_frames`` (default)
    keeps frames without any root so viewers stay aligned. ``image_plane_groups`` keeps
    identity Plane Orientation and Pixel Measures items for multi-frame sources, which OHIF
    v3 needs to show the SEG (see module doc).
    ``content_description`` (at most 64 characters kept) carries the node's quality-control
    verdict.
    Returns a highdicom Segmentation (a pydicom Dataset, ready for ``save_as``/C-STORE).
    Raises DicomWriteError for inconsistent inputs or a highdicom failure.
    """
    import highdicom as hd
    from highdicom._standard_utils import is_multiframe_image

    header = reference_header(source_header)
    masks, numbers = _check_inputs(header, masks, frame_numbers, fractional)
    use_proxy = is_multiframe_image(header)
    multi_frame_source = references_frames(header)
    if use_proxy:
        source = _proxy(header, len(numbers))
    else:
        if numbers != [1]:
            raise DicomWriteError(f"single-frame source: frame numbers must be [1], got {numbers}")
        source = header
    pixel_array = fractional if fractional is not None else masks.astype(np.uint8)
    seg_type = (
        hd.seg.SegmentationTypeValues.FRACTIONAL
        if fractional is not None
        else hd.seg.SegmentationTypeValues.BINARY
    )
    try:
        with no_patient_data_warnings():
            seg = hd.seg.Segmentation(
                source_images=[source],
                pixel_array=pixel_array,
                segmentation_type=seg_type,
                segment_descriptions=[segment_description(algorithm_name, algorithm_version)],
                series_instance_uid=series_instance_uid or generate_uid(),
                series_number=series_number,
                sop_instance_uid=sop_instance_uid or generate_uid(),
                instance_number=instance_number,
                manufacturer=manufacturer,
                manufacturer_model_name=manufacturer_model_name,
                software_versions=f"{algorithm_name} {algorithm_version}"[:64],
                device_serial_number=device_serial_number,
                fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
                content_label=content_label,
                content_description=content_description[:64],
                omit_empty_frames=not keep_empty_frames,
                series_description=series_description[:64],
            )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomWriteError(
            f"highdicom could not build the SEG for {header.SOPInstanceUID}: {exc}"
        ) from exc
    if use_proxy:
        _strip_geometry(seg, numbers, multi_frame_source, source_header if image_plane_groups else None)
    # No Frame of Reference: General Image's PatientOrientation (type 2C) is required; the
    # SEG's pixels are aligned with the source's, so the source's value applies.
    seg.PatientOrientation = header.get("PatientOrientation", "")
    expected = len(numbers) if keep_empty_frames else None
    if expected is not None and int(seg.NumberOfFrames) != expected:
        raise DicomWriteError(f"SEG has {seg.NumberOfFrames} frames, expected {expected}")
    logger.info(
        "SEG %s for %s: %d frame(s), %s, series %s",
        seg.SOPInstanceUID, header.SOPInstanceUID, int(seg.NumberOfFrames),
        seg.SegmentationType, series_number,
    )
    return seg


def referenced_frames(seg: Dataset) -> list[int | None]:
    """Source frame number referenced by each SEG frame (None where no frame is referenced)."""
    frames: list[int | None] = []
    for item in seg.PerFrameFunctionalGroupsSequence:
        source_item = item.DerivationImageSequence[0].SourceImageSequence[0]
        number = source_item.get("ReferencedFrameNumber")
        frames.append(int(number) if number is not None else None)
    return frames
