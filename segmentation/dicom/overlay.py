"""Overlays for PACS viewers that cannot show a SEG on projection images.

Two forms, chosen by configuration (the node sends none, one or both):

* :func:`build_presentation_state`: a Grayscale Softcopy Presentation State (highdicom.pr)
  drawing the root outline as closed POLYLINE graphics (PIXEL units, pixel centres at
  +0.5) on a "AORTIC_ROOT" graphic layer, one Graphic Annotation per source frame with a
  root, each referencing the source image and that frame. The source's first window
  (WindowCenter/Width) is kept as the Softcopy VOI LUT, or the full BitsStored range.
* :func:`build_burned_in_capture`: ONE Multi-frame Grayscale Byte Secondary Capture per run
  (a cine stays a cine in any viewer; a single-frame source gives a one-frame object), each
  frame the source frame windowed to 8 bits with the outline burned in white (255) over a
  black (0) halo so it shows on bright and dark backgrounds. It references the
  source frames (SourceImageSequence) and is clearly labelled DERIVED/SECONDARY; being
  a picture, it is for viewing only, never for measurement.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from segmentation.dicom.header import (
    body_part,
    no_patient_data_warnings,
    reference_header,
    references_frames,
    source_frame_count,
)
from segmentation.dicom.seg import DEFAULT_MANUFACTURER
from segmentation.dicom.sop_classes import MULTIFRAME_GRAYSCALE_BYTE_SC
from segmentation.errors import DicomWriteError

logger = logging.getLogger(__name__)

LAYER_NAME = "AORTIC_ROOT"
#: Recommended layer colour (CIELab of a saturated yellow) and grayscale value.
LAYER_CIELAB = (97.0, -21.0, 94.0)


def outline_polylines(mask: np.ndarray, *, tolerance_px: float = 0.75) -> list[np.ndarray]:
    """Closed outlines of every connected region of a 2-D mask.

    Takes a bool mask and the polygon simplification tolerance in pixels. Returns a list of
    (n, 2) float arrays of (column, row) in DICOM PIXEL units (pixel centres at +0.5), first
    point repeated at the end; regions smaller than 3 outline points are skipped.
    """
    contours, _ = cv2.findContours(
        np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    lines = []
    for contour in contours:
        if tolerance_px > 0:
            contour = cv2.approxPolyDP(contour, tolerance_px, True)
        points = contour.reshape(-1, 2).astype(np.float64) + 0.5
        if len(points) < 3:
            continue
        lines.append(np.vstack([points, points[:1]]))
    return lines


def _check(header: Dataset, masks: np.ndarray, frame_numbers: Sequence[int]) -> np.ndarray:
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim == 2:
        masks = masks[np.newaxis]
    if masks.ndim != 3 or masks.shape[1:] != (int(header.Rows), int(header.Columns)):
        raise DicomWriteError(
            f"masks of shape {masks.shape} do not match the source {header.Rows}x{header.Columns}"
        )
    if len(frame_numbers) != masks.shape[0]:
        raise DicomWriteError(f"{len(frame_numbers)} frame numbers for {masks.shape[0]} masks")
    available = source_frame_count(header) or 1
    bad = [n for n in frame_numbers if not 1 <= int(n) <= available]
    if bad:
        raise DicomWriteError(f"frame numbers {bad} outside the source's frames 1..{available}")
    return masks


def _source_window(source: Dataset, bits_stored: int) -> tuple[float, float]:
    """First WindowCenter/WindowWidth of the source, else the full stored range."""
    center, width = source.get("WindowCenter"), source.get("WindowWidth")
    try:
        center_value = float(center[0] if isinstance(center, Sequence) and not isinstance(center, str) else center)
        width_value = float(width[0] if isinstance(width, Sequence) and not isinstance(width, str) else width)
        if width_value >= 1:
            return center_value, width_value
    except (TypeError, ValueError, IndexError):
        pass  # absent or malformed: fall back to the stored range below
    top = float(2**bits_stored)
    return top / 2.0, top


# The output-series keywords below (frame_numbers ... manufacturer) repeat those of
# seg.build_segmentation and sr.build_measurement_report on purpose: each builder is a public
# entry point called with the same keywords (dicom_node.pipeline, benches, tests); bundling them
# in one options object would change every caller for no change in meaning.
def build_presentation_state(
    source_header: Dataset,
    masks: np.ndarray,
    *,
    frame_numbers: Sequence[int],
    algorithm_name: str,
    algorithm_version: str,
    series_number: int,
    series_description: str,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    manufacturer: str = DEFAULT_MANUFACTURER,
) -> Dataset:
    """Build a GSPS outlining the aortic root on every frame that has one.

    Takes the source header, masks (N, rows, columns), their 1-based source frame numbers,
    the algorithm name/version and the output series number/description. Returns a
    highdicom GrayscaleSoftcopyPresentationState. Raises DicomWriteError for inconsistent
    inputs or a highdicom failure.
    """
    import highdicom as hd

    header = reference_header(source_header)
    masks = _check(header, masks, frame_numbers)
    multi_frame = references_frames(header)
    reference = _pr_reference(header)
    layer = hd.pr.GraphicLayer(
        layer_name=LAYER_NAME,
        order=1,
        description=f"Aortic root outline ({algorithm_name} {algorithm_version})"[:64],
        display_color=hd.color.CIELabColor(*LAYER_CIELAB),
    )
    annotations = []
    outlined = 0
    for mask, number in zip(masks, frame_numbers):
        lines = outline_polylines(mask)
        if not lines:
            continue
        outlined += 1
        annotations.append(
            hd.pr.GraphicAnnotation(
                referenced_images=[reference],
                graphic_layer=layer,
                referenced_frame_number=int(number) if multi_frame else None,
                graphic_objects=[
                    hd.pr.GraphicObject(
                        graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                        graphic_data=line,
                        units=hd.pr.AnnotationUnitsValues.PIXEL,
                    )
                    for line in lines
                ],
            )
        )
    bits = int(source_header.get("BitsStored") or 8)
    center, width = _source_window(source_header, bits)
    inverse = str(header.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    try:
        with no_patient_data_warnings():
            gsps = hd.pr.GrayscaleSoftcopyPresentationState(
                referenced_images=[reference],
                series_instance_uid=series_instance_uid or generate_uid(),
                series_number=series_number,
                sop_instance_uid=sop_instance_uid or generate_uid(),
                instance_number=instance_number,
                manufacturer=manufacturer,
                manufacturer_model_name="taviseg aortic root outline",
                software_versions=f"{algorithm_name} {algorithm_version}"[:64],
                device_serial_number="1",
                content_label="AORTIC_ROOT",
                content_description="Aortic root outline (AI)",
                graphic_annotations=annotations or None,
                graphic_layers=[layer],
                voi_lut_transformations=[
                    hd.pr.SoftcopyVOILUTTransformation(window_center=center, window_width=width)
                ],
                presentation_lut_transformation=hd.PresentationLUTTransformation(
                    presentation_lut_shape=(
                        hd.PresentationLUTShapeValues.INVERSE
                        if inverse
                        else hd.PresentationLUTShapeValues.IDENTITY
                    )
                ),
                series_description=series_description[:64],
            )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomWriteError(
            f"highdicom could not build the GSPS for {header.SOPInstanceUID}: {exc}"
        ) from exc
    gsps.BodyPartExamined = body_part(source_header)  # else dciodvfy asks for Laterality
    logger.info(
        "GSPS %s for %s: outline on %d of %d frame(s)",
        gsps.SOPInstanceUID, header.SOPInstanceUID, outlined, len(frame_numbers),
    )
    return gsps


def _pr_reference(header: Dataset) -> Dataset:
    """The referenced image as highdicom.pr reads it.

    highdicom assumes multi-frame images carry enhanced functional groups and reads the
    Modality LUT from them; classic XA/XRF have none (and no Modality LUT is to be applied
    to them), so the copy gets an empty shared functional group item. Only UIDs, Rows,
    Columns and the Image Pixel description reach the output.
    """
    from highdicom._standard_utils import is_multiframe_image

    reference = Dataset()
    reference.update(header)
    if is_multiframe_image(reference) and "SharedFunctionalGroupsSequence" not in reference:
        reference.SharedFunctionalGroupsSequence = [Dataset()]
    if "SamplesPerPixel" not in reference:
        reference.SamplesPerPixel = 1
    return reference


def _to_byte(frame: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window (DICOM PS3.3 C.11.2.1.2 form) to 0..255."""
    low = center - 0.5 - (width - 1) / 2.0
    scaled = (frame.astype(np.float32) - low) / max(width - 1, 1.0) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def burn_outline(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Draw the mask's outline on an 8-bit frame: white line over a black halo.

    The line is 1 px wide per 512 px of the shorter image side (2 px on 1024-px frames),
    the halo one pixel wider on each side.
    """
    out = frame.copy()
    width = max(1, int(round(min(frame.shape[:2]) / 512)))
    lines = [np.rint(line - 0.5).astype(np.int32).reshape(-1, 1, 2) for line in outline_polylines(mask)]
    if lines:
        cv2.polylines(out, lines, isClosed=True, color=0, thickness=width + 2)
        cv2.polylines(out, lines, isClosed=True, color=255, thickness=width)
    return out


# Same output-series keywords as build_presentation_state (see the note there).
def build_burned_in_capture(
    source_header: Dataset,
    frames: Iterable[np.ndarray],
    masks: np.ndarray,
    *,
    frame_numbers: Sequence[int],
    algorithm_name: str,
    algorithm_version: str,
    series_number: int,
    series_description: str,
    bits_stored: int | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    manufacturer: str = DEFAULT_MANUFACTURER,
) -> Dataset:
    """Build a Multi-frame Grayscale Byte Secondary Capture with the outline burned in.

    Takes the source header, the source frames (an iterable of 2-D arrays in the order of
    ``frame_numbers``, e.g. from ProjectionRun.read_frame; consumed one at a time), masks
    (N, rows, columns), 1-based frame numbers, the algorithm name/version, the series
    number/description and the frames' bit depth (default: the header's BitsStored).
    Returns the dataset (with file meta, Explicit VR Little Endian).
    Raises DicomWriteError when frames and masks disagree in number or size.
    """
    header = reference_header(source_header)
    masks = _check(header, masks, frame_numbers)
    rows, columns = int(header.Rows), int(header.Columns)
    bits = int(bits_stored or source_header.get("BitsStored") or 8)
    center, width = _source_window(source_header, bits)
    pixel_data = bytearray()
    count = 0
    for frame, mask in zip(frames, masks):
        frame = np.asarray(frame)
        if frame.shape != (rows, columns):
            raise DicomWriteError(f"frame {count} has shape {frame.shape}, expected {(rows, columns)}")
        pixel_data += burn_outline(_to_byte(frame, center, width), mask).tobytes()
        count += 1
    if count != masks.shape[0]:
        raise DicomWriteError(f"{count} frames for {masks.shape[0]} masks")
    if len(pixel_data) % 2:
        pixel_data += b"\x00"

    ds = Dataset()
    ds.update(header)
    for keyword in ("SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID", "NumberOfFrames",
                    "InstanceNumber", "SeriesNumber", "LossyImageCompressionRatio",
                    "LossyImageCompressionMethod", "LossyImageCompression", "Modality"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPClassUID = MULTIFRAME_GRAYSCALE_BYTE_SC
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description[:64]
    ds.InstanceNumber = instance_number
    ds.Modality = "OT"
    ds.BodyPartExamined = body_part(source_header)
    ds.ConversionType = "WSD"
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = "taviseg aortic root outline"[:64]
    ds.SoftwareVersions = f"{algorithm_name} {algorithm_version}"[:64]
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = (
        f"Source frames windowed to 8 bits (center {center:g}, width {width:g}) with the "
        f"aortic root outline of {algorithm_name} {algorithm_version} burned in"
    )[:1024]
    ds.BurnedInAnnotation = "NO"
    ds.PatientOrientation = header.get("PatientOrientation", "")
    ds.ContentDate, ds.ContentTime = _now()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PresentationLUTShape = "IDENTITY"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.NumberOfFrames = count
    if count > 1:
        ds.FrameIncrementPointer = 0x00182002  # FrameLabelVector
        ds.FrameLabelVector = [f"source frame {int(n)}" for n in frame_numbers]
    ds.SourceImageSequence = DicomSequence([_source_item(header, frame_numbers)])
    ds.PixelData = bytes(pixel_data)
    ds["PixelData"].VR = "OB"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    logger.info(
        "burned-in SC %s for %s: %d frame(s)", ds.SOPInstanceUID, header.SOPInstanceUID, count
    )
    return ds


def _source_item(header: Dataset, frame_numbers: Sequence[int]) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    if references_frames(header):
        item.ReferencedFrameNumber = [int(n) for n in frame_numbers]
    purpose = Dataset()
    purpose.CodeValue = "121322"
    purpose.CodingSchemeDesignator = "DCM"
    purpose.CodeMeaning = "Source image for image processing operation"
    item.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
    return item


def _now() -> tuple[str, str]:
    now = datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")
