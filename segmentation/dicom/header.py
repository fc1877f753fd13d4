"""Sanitised copies of a source image header for the writers (SEG, SR, GSPS, SC).

Real angiography headers carry values that strict libraries refuse (PatientSex '?', dates
with separators, over-long short strings) and much that an output object must not copy
(private groups, retired curves, mask subtraction sequences). Writers therefore never see the
received header: they get :func:`reference_header`, a new dataset holding only the patient,
study and source-image attributes outputs need, each value checked against its VR and
emptied (type 2) or dropped (type 3) when invalid. Only tags are logged, never values.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Callable, Iterator

from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from segmentation.errors import DicomWriteError

logger = logging.getLogger(__name__)

_DA = re.compile(r"^\d{8}$")
_TM = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_AS = re.compile(r"^\d{3}[DWMY]$")
_PATIENT_SEX = frozenset({"M", "F", "O"})


def _clean_text(limit: int) -> Callable[[object], str | None]:
    def clean(value: object) -> str | None:
        text = str(value).strip().replace("\\", " ")
        return text[:limit] if text else ""
    return clean


def _clean_pattern(pattern: re.Pattern[str]) -> Callable[[object], str | None]:
    def clean(value: object) -> str | None:
        text = str(value).strip()
        return text if pattern.match(text) else None
    return clean


def _clean_sex(value: object) -> str | None:
    text = str(value).strip().upper()
    return text if text in _PATIENT_SEX else None


def _clean_name(value: object) -> str | None:
    text = str(value).strip()
    return str(PersonName(text)) if len(text) <= 320 else None


#: keyword -> (type: 1, 2 or 3, cleaner). Type 1/2 attributes that are missing or invalid are
#: written empty (type 2) or refused (type 1); type 3 ones are dropped.
_PATIENT_STUDY: dict[str, tuple[int, Callable[[object], str | None]]] = {
    "PatientName": (2, _clean_name),
    "PatientID": (2, _clean_text(64)),
    "IssuerOfPatientID": (3, _clean_text(64)),
    "PatientBirthDate": (2, _clean_pattern(_DA)),
    "PatientSex": (2, _clean_sex),
    "PatientAge": (3, _clean_pattern(_AS)),
    "StudyInstanceUID": (1, _clean_text(64)),
    "StudyDate": (2, _clean_pattern(_DA)),
    "StudyTime": (2, _clean_pattern(_TM)),
    "ReferringPhysicianName": (2, _clean_name),
    "StudyID": (2, _clean_text(16)),
    "AccessionNumber": (2, _clean_text(16)),
    "StudyDescription": (3, _clean_text(64)),
}
_SOURCE_IMAGE = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "Rows",
    "Columns",
)
_OPTIONAL_IMAGE = (
    "NumberOfFrames",
    "PatientOrientation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SeriesNumber",
    "InstanceNumber",
    "LossyImageCompression",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
)


def reference_header(source: Dataset) -> Dataset:
    """Build the sanitised header the writers use in place of ``source``.

    Takes the source image header (pixel data, if any, is ignored). Returns a new dataset
    with the patient and study attributes (invalid values emptied or dropped), the source
    image identity (SOP class/instance, series, Modality, Rows, Columns, NumberOfFrames and
    the Image Pixel description when present) and SpecificCharacterSet.
    Raises DicomWriteError when a type 1 attribute (StudyInstanceUID, SOPClassUID,
    SOPInstanceUID, SeriesInstanceUID, Modality, Rows, Columns) is missing or empty.
    """
    header = Dataset()
    charset = source.get("SpecificCharacterSet")
    if charset:
        header.SpecificCharacterSet = charset
    sanitised: list[str] = []
    for keyword, (attr_type, clean) in _PATIENT_STUDY.items():
        raw = source.get(keyword)
        value = clean(raw) if raw not in (None, "") else None
        if raw not in (None, "") and value is None:
            sanitised.append(keyword)
        if value in (None, ""):
            if attr_type == 1:
                raise DicomWriteError(f"source image has no {keyword}: cannot reference it")
            if attr_type == 2:
                setattr(header, keyword, "")
            continue
        setattr(header, keyword, value)
    for keyword in _SOURCE_IMAGE:
        value = source.get(keyword)
        if value in (None, ""):
            raise DicomWriteError(f"source image has no {keyword}: cannot reference it")
        setattr(header, keyword, value)
    for keyword in _OPTIONAL_IMAGE:
        value = source.get(keyword)
        if value not in (None, ""):
            setattr(header, keyword, value)
    if sanitised:
        logger.info(
            "source %s: invalid values replaced in %s",
            header.SOPInstanceUID,
            ", ".join(sanitised),
        )
    return header


def source_frame_count(source: Dataset) -> int | None:
    """NumberOfFrames of the source, or None when it has no Multi-frame module (single frame)."""
    value = source.get("NumberOfFrames")
    if value in (None, ""):
        return None
    try:
        return max(int(value), 1)
    except (TypeError, ValueError):
        return None


#: BodyPartExamined of outputs whose source does not say: the aortic root is in the heart
#: (CID 4031 "HEART", an unpaired structure, so no Laterality is needed).
DEFAULT_BODY_PART = "HEART"


def body_part(source: Dataset) -> str:
    """BodyPartExamined for an output: the source's (if a valid CS) else "HEART"."""
    value = str(source.get("BodyPartExamined") or "").strip().upper()
    if value and len(value) <= 16 and re.fullmatch(r"[A-Z0-9_ ]+", value):
        return value
    return DEFAULT_BODY_PART


def references_frames(source: Dataset) -> bool:
    """Whether references to ``source`` carry a ReferencedFrameNumber.

    True when the source's IOD includes the Multi-frame module (XA, XRF, enhanced and
    multi-frame SC classes) and the object has NumberOfFrames. Single-frame objects (XRF
    without NumberOfFrames, the plain Secondary Capture class even with a stray
    NumberOfFrames) are referenced as a whole.
    """
    from highdicom._standard_utils import is_multiframe_image

    return source_frame_count(source) is not None and bool(is_multiframe_image(source))


@contextlib.contextmanager
def no_patient_data_warnings() -> Iterator[None]:
    """Silence library warnings that quote patient data while an output is built.

    highdicom warns about single-component person names by quoting the name ("The string
    'DOE JOHN' is unlikely to represent..."); warnings often end up in logs, and logs must
    not carry patient names. Other warnings pass through.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The string .* is unlikely to represent")
        yield
