"""TID 1500 Measurement Report of the aortic root: :func:`build_measurement_report`.

A Comprehensive 3D SR (highdicom) in the source's study, own series, with one Planar ROI
measurement group (TID 1410) per measured source frame. Each group

* references its region as a frame of the aortic-root SEG (ReferencedSegmentationFrame,
  segment 1) whose source image is the angiography frame;
* holds the root area (SCT 42798000 "Area") in mm2, or in UCUM ``{pixels}`` when the run is
  uncalibrated, with the calibration rule as the measurement method (coding scheme
  ``99TAVISEG``, codes in :data:`CALIBRATION_CODES`);
* holds the model's confidence for the frame as "Certainty of Finding" (DCM 111012) in %
  (with QC data: the calibrated quality, P(frame Dice >= 0.8), see docs/qc.md);
* for frames the quality control singled out, a qualitative evaluation "Outline quality
  control" (scheme ``99TAVISEG``): uncertain, withheld, or no aortic root in view.

The algorithm is the device observer and the measurements' algorithm identification; the model
variant that produced the masks (``onnx-int8``, ``onnx``, ``eager``...: the engine's backend name)
is one of its Algorithm Parameters (DCM 111002), ``model variant: NAME``.
Procedure reported: Aortography (SCT 54640009).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from segmentation.dicom.calibration import Calibration, CalibrationSource
from segmentation.dicom.header import no_patient_data_warnings, reference_header
from segmentation.dicom.seg import AORTIC_ROOT, DEFAULT_MANUFACTURER, referenced_frames
from segmentation.errors import DicomWriteError

logger = logging.getLogger(__name__)

#: Private coding scheme of the calibration-rule codes used as measurement method.
CODING_SCHEME = "99TAVISEG"
#: CalibrationSource -> code value (SH, at most 16 characters) in :data:`CODING_SCHEME`.
CALIBRATION_CODES: dict[CalibrationSource, str] = {
    CalibrationSource.OBJECT_PIXEL_SPACING_IN_CENTER_OF_BEAM: "CAL-OBJ-BEAM",
    CalibrationSource.PIXEL_SPACING: "CAL-PIXSPACING",
    CalibrationSource.MAGNIFICATION_FACTOR: "CAL-IPS-ERMF",
    CalibrationSource.SOURCE_DISTANCES: "CAL-IPS-SOD-SID",
    CalibrationSource.IMAGER_PIXEL_SPACING: "CAL-IPS-DETECTOR",
    CalibrationSource.CONFIGURED_DEFAULT: "CAL-DEFAULT",
    CalibrationSource.PIXEL_UNITS: "CAL-PIXELS",
}
AREA = ("42798000", "SCT", "Area")
CERTAINTY_OF_FINDING = ("111012", "DCM", "Certainty of Finding")
AORTOGRAPHY = ("54640009", "SCT", "Aortography")
#: Quality-control evaluation of a frame's outline (scheme 99TAVISEG): name and values.
QC_EVALUATION = ("QC-OUTLINE", CODING_SCHEME, "Outline quality control")
QC_VALUES: dict[str, tuple[str, str, str]] = {
    "uncertain": ("QC-UNCERTAIN", CODING_SCHEME, "Outline uncertain, review"),
    "withheld": ("QC-WITHHELD", CODING_SCHEME, "Outline withheld, low quality"),
    "no-root": ("QC-NO-ROOT", CODING_SCHEME, "No aortic root in view"),
}


@dataclass(frozen=True)
class FrameMeasurement:
    """What is reported for one source frame: its 1-based number, root pixels, confidence, and
    the quality-control note (None, or a key of :data:`QC_VALUES`)."""

    frame_number: int
    pixel_count: int
    confidence: float | None = None
    qc: str | None = None


def measure_frames(
    masks: np.ndarray,
    frame_numbers: Sequence[int],
    confidences: Sequence[float] | np.ndarray | None = None,
    qc_notes: Sequence[str | None] | None = None,
) -> list[FrameMeasurement]:
    """Count root pixels per frame.

    Takes masks (N, rows, columns), their 1-based source frame numbers and optional
    per-frame confidences in [0, 1] and QC notes (keys of :data:`QC_VALUES` or None).
    Returns one :class:`FrameMeasurement` per mask.
    Raises DicomWriteError when the lengths disagree.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim == 2:
        masks = masks[np.newaxis]
    if len(frame_numbers) != masks.shape[0]:
        raise DicomWriteError(f"{len(frame_numbers)} frame numbers for {masks.shape[0]} masks")
    if confidences is not None and len(confidences) != masks.shape[0]:
        raise DicomWriteError(f"{len(confidences)} confidences for {masks.shape[0]} masks")
    counts = masks.reshape(masks.shape[0], -1).sum(axis=1)
    return [
        FrameMeasurement(
            frame_number=int(n),
            pixel_count=int(c),
            confidence=None if confidences is None else float(confidences[i]),
            qc=None if qc_notes is None else qc_notes[i],
        )
        for i, (n, c) in enumerate(zip(frame_numbers, counts))
    ]


def _concept(triple: tuple[str, str, str]):  # -> highdicom.sr.CodedConcept
    from highdicom.sr import CodedConcept

    return CodedConcept(value=triple[0], scheme_designator=triple[1], meaning=triple[2])


def calibration_method(source: CalibrationSource):  # -> highdicom.sr.CodedConcept
    """The measurement-method code of a calibration rule (scheme 99TAVISEG)."""
    return _concept((CALIBRATION_CODES[source], CODING_SCHEME, source.description))


def _seg_frame_lookup(segmentation: Dataset) -> dict[int, int]:
    """Source frame number -> SEG frame number (single-frame sources: {1: 1})."""
    lookup: dict[int, int] = {}
    for seg_frame, source_frame in enumerate(referenced_frames(segmentation), start=1):
        lookup[source_frame if source_frame is not None else 1] = seg_frame
    return lookup


def build_measurement_report(
    source_header: Dataset,
    segmentation: Dataset,
    measurements: Sequence[FrameMeasurement],
    *,
    calibration: Calibration,
    algorithm_name: str,
    algorithm_version: str,
    series_number: int,
    series_description: str,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    manufacturer: str = DEFAULT_MANUFACTURER,
    model_variant: str | None = None,
) -> Dataset:
    """Build the TID 1500 report of per-frame root areas for one run.

    Takes the source header, the SEG built for it (every measured frame must have a SEG
    frame: keep empty frames), one :class:`FrameMeasurement` per reported frame, the run's
    :class:`Calibration`, the algorithm's name and version and the output series number and
    description; ``model_variant`` (the engine's backend name, e.g. ``onnx-int8``), when given,
    is recorded as an algorithm parameter. Returns a highdicom Comprehensive3DSR (a pydicom Dataset).
    Raises DicomWriteError for a frame without SEG frame, a confidence outside [0, 1], or
    a highdicom failure.
    """
    import highdicom as hd
    from highdicom.sr import CodedConcept

    header = reference_header(source_header)
    if not measurements:
        raise DicomWriteError("no frame measurements to report")
    # The SEG references frames exactly when the source is a multi-frame image; so does the SR.
    multi_frame = referenced_frames(segmentation)[0] is not None
    seg_frames = _seg_frame_lookup(segmentation)
    algorithm = hd.sr.AlgorithmIdentification(
        name=algorithm_name, version=algorithm_version,
        parameters=[f"model variant: {model_variant}"] if model_variant else None,
    )
    method = calibration_method(calibration.source)
    finding = _concept(AORTIC_ROOT)
    groups = []
    for item in measurements:
        seg_frame = seg_frames.get(item.frame_number)
        if seg_frame is None:
            raise DicomWriteError(
                f"source frame {item.frame_number} has no SEG frame "
                f"(SEG covers {sorted(seg_frames)}); build the SEG with keep_empty_frames=True"
            )
        area, unit = calibration.area(item.pixel_count, item.frame_number - 1)
        unit_concept = (
            CodedConcept("mm2", "UCUM", "square millimeter")
            if unit == "mm2"
            else CodedConcept("{pixels}", "UCUM", "pixels")
        )
        values = [
            hd.sr.Measurement(
                name=_concept(AREA),
                value=area,
                unit=unit_concept,
                method=method,
                algorithm_id=algorithm,
            )
        ]
        if item.confidence is not None:
            if not (math.isfinite(item.confidence) and 0.0 <= item.confidence <= 1.0):
                raise DicomWriteError(
                    f"confidence {item.confidence!r} of frame {item.frame_number} not in [0, 1]"
                )
            values.append(
                hd.sr.Measurement(
                    name=_concept(CERTAINTY_OF_FINDING),
                    value=round(100.0 * item.confidence, 3),
                    unit=CodedConcept("%", "UCUM", "percent"),
                    algorithm_id=algorithm,
                )
            )
        evaluations = None
        if item.qc is not None:
            if item.qc not in QC_VALUES:
                raise DicomWriteError(f"QC note {item.qc!r} of frame {item.frame_number}; valid: {sorted(QC_VALUES)}")
            evaluations = [
                hd.sr.QualitativeEvaluation(name=_concept(QC_EVALUATION), value=_concept(QC_VALUES[item.qc]))
            ]
        source_image = hd.sr.SourceImageForSegmentation(
            referenced_sop_class_uid=header.SOPClassUID,
            referenced_sop_instance_uid=header.SOPInstanceUID,
            referenced_frame_numbers=[item.frame_number] if multi_frame else None,
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(),
                    identifier=f"aortic root, frame {item.frame_number}",
                ),
                referenced_segment=hd.sr.ReferencedSegmentationFrame(
                    sop_class_uid=segmentation.SOPClassUID,
                    sop_instance_uid=segmentation.SOPInstanceUID,
                    frame_number=seg_frame,
                    segment_number=1,
                    source_image=source_image,
                ),
                finding_type=finding,
                measurements=values,
                qualitative_evaluations=evaluations,
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[algorithm_name, algorithm_version]),
            name=algorithm_name[:64],
            manufacturer_name=manufacturer,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_concept(AORTOGRAPHY),
        imaging_measurements=groups,
    )
    try:
        with no_patient_data_warnings():
            sr = hd.sr.Comprehensive3DSR(
                evidence=[header, segmentation],
                content=report,
                series_instance_uid=series_instance_uid or generate_uid(),
                series_number=series_number,
                sop_instance_uid=sop_instance_uid or generate_uid(),
                instance_number=instance_number,
                manufacturer=manufacturer,
                is_complete=True,
                series_description=series_description[:64],
                coding_schemes=[
                    hd.coding_schemes.CodingSchemeIdentificationItem(
                        designator=CODING_SCHEME,
                        name="taviseg calibration rules",
                        responsible_organization="taviseg",
                    )
                ],
            )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomWriteError(
            f"highdicom could not build the SR for {header.SOPInstanceUID}: {exc}"
        ) from exc
    _drop_segment_numbers_beside_frames(sr.ContentSequence)
    logger.info(
        "SR %s for %s: %d frame(s), calibration %s",
        sr.SOPInstanceUID, header.SOPInstanceUID, len(groups), calibration.source.value,
    )
    return sr


def _drop_segment_numbers_beside_frames(content: Sequence[Dataset]) -> None:
    """Remove ReferencedSegmentNumber where ReferencedFrameNumber selects the SEG frame.

    highdicom writes both; PS3.3 (SOP Instance Reference Macro) allows the segment number
    only when no frame number is given, and dciodvfy reports it as an error. With one
    segment, the frame identifies the segment too.
    """
    for item in content:
        for reference in item.get("ReferencedSOPSequence", []):
            if "ReferencedFrameNumber" in reference and "ReferencedSegmentNumber" in reference:
                del reference.ReferencedSegmentNumber
        if "ContentSequence" in item:
            _drop_segment_numbers_beside_frames(item.ContentSequence)
