"""What a received DICOM object is, and what the node does with it: the one SOP-class table.

Two questions, answered here and nowhere else:

* **On the wire** (:func:`node_route`, by SOP class alone, at association and receipt): the
  node's DICOM SCP (:mod:`dicom_node.sop`) builds its presentation contexts from this table.

  - :data:`INPUT_IMAGE_SOP_CLASSES` (XA, Enhanced XA, XRF, Enhanced XRF and the four
    Secondary Capture classes, Multi-frame True Color included): ``QUEUE``, stored, journaled
    as an image and queued for segmentation;
  - every other storage SOP class (dose SR, presentation states, CT, SEG...): ``KEEP``
    (``other_objects: keep``: stored and journaled, never processed) or ``REFUSE``
    (``other_objects: refuse``: presentation context not accepted);
  - anything that is not a storage SOP class: no presentation context, except Verification
    (C-ECHO).

* **In the header** (:func:`classify`, SOP class and Modality together, before decoding): a
  queued Secondary Capture object is an image we segment only when its Modality says it came
  from an angiography/fluoroscopy system (the NEMA WG-04 XA samples are Secondary Capture with
  Modality XA), while X-Ray Angiographic and X-Ray Radiofluoroscopic objects are always
  projection images. Objects without pixels (dose reports, presentation states, key
  objects...) are NON_IMAGE; images of other kinds (CT, MR, SEG, 3D angiography, a Secondary
  Capture of another modality...) are UNSUPPORTED. The node keeps both without segmenting.

UIDs are pydicom's named constants (:mod:`pydicom.uid`); the few hand-typed ones are UID
*families* (prefixes) or classes pydicom 3.0 does not name, each said so beside it.
"""

from __future__ import annotations

import enum
import logging

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    EnhancedXAImageStorage,
    EnhancedXRFImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    RTImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    XRayAngiographicImageStorage,
    XRayRadiofluoroscopicImageStorage,
)

logger = logging.getLogger(__name__)

# Short names used across the code base (aliases of pydicom's constants).
XA_IMAGE = XRayAngiographicImageStorage
ENHANCED_XA_IMAGE = EnhancedXAImageStorage
XRF_IMAGE = XRayRadiofluoroscopicImageStorage
ENHANCED_XRF_IMAGE = EnhancedXRFImageStorage
SECONDARY_CAPTURE_IMAGE = SecondaryCaptureImageStorage
MULTIFRAME_GRAYSCALE_BYTE_SC = MultiFrameGrayscaleByteSecondaryCaptureImageStorage
MULTIFRAME_GRAYSCALE_WORD_SC = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
MULTIFRAME_TRUE_COLOR_SC = MultiFrameTrueColorSecondaryCaptureImageStorage
#: Label Map Segmentation Storage (2024): pydicom 3.0 has no constant for it.
LABEL_MAP_SEGMENTATION = UID("1.2.840.10008.5.1.4.1.1.66.7")

#: Projection X-ray image SOP classes segmented whatever their Modality says.
PROJECTION_IMAGE_SOP_CLASSES: frozenset[UID] = frozenset(
    {XA_IMAGE, ENHANCED_XA_IMAGE, XRF_IMAGE, ENHANCED_XRF_IMAGE}
)
#: Secondary Capture SOP classes, segmented only with a Modality in PROJECTION_MODALITIES.
SECONDARY_CAPTURE_SOP_CLASSES: frozenset[UID] = frozenset(
    {
        SECONDARY_CAPTURE_IMAGE,
        MULTIFRAME_GRAYSCALE_BYTE_SC,
        MULTIFRAME_GRAYSCALE_WORD_SC,
        MULTIFRAME_TRUE_COLOR_SC,
    }
)
#: Every SOP class that can be an input image: the classes the node queues for segmentation.
INPUT_IMAGE_SOP_CLASSES: frozenset[UID] = PROJECTION_IMAGE_SOP_CLASSES | SECONDARY_CAPTURE_SOP_CLASSES
PROJECTION_MODALITIES: frozenset[str] = frozenset({"XA", "RF"})

#: SOP class UID prefixes of objects that carry no image: structured reports (dose reports,
#: key objects, CAD), presentation states, waveforms, encapsulated documents, raw data,
#: spectroscopy-free RT objects and the like. Hand-typed: these are UID *families*, and
#: pydicom names single UIDs only.
_NON_IMAGE_PREFIXES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.88.",  # SR family (incl. X-Ray Radiation Dose SR, KOS)
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms (ECG, haemodynamic)
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF/CDA/STL...
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, spatial registration, fiducials (66.4 is SEG)
    "1.2.840.10008.5.1.4.1.1.481.",  # RT objects (RT Image handled below)
    "1.2.840.10008.5.1.4.34.",  # RT plans/records (second-generation)
)
#: Classes inside those families that are images (not ours to segment).
_IMAGE_EXCEPTIONS: frozenset[str] = frozenset({SegmentationStorage, LABEL_MAP_SEGMENTATION, RTImageStorage})

#: Values of the node's ``other_objects`` setting (what happens to non-input storage classes).
OTHER_OBJECTS_POLICIES: tuple[str, ...] = ("keep", "refuse")


class InputKind(str, enum.Enum):
    """How the node treats a received object, from its header."""

    IMAGE = "image"  #: a projection X-ray image we segment
    NON_IMAGE = "non-image"  #: recognised, carries no image (dose report, presentation state)
    UNSUPPORTED = "unsupported"  #: an image of another kind or modality: not segmented


class NodeRoute(str, enum.Enum):
    """What the node does with a storage SOP class, before looking at the header."""

    QUEUE = "queue"  #: stored and queued for segmentation (then :func:`classify` decides)
    KEEP = "keep"  #: stored and journaled, never processed
    REFUSE = "refuse"  #: presentation context not accepted


def is_input_image_class(uid: str | None) -> bool:
    """True for the SOP classes the node queues for segmentation (:data:`INPUT_IMAGE_SOP_CLASSES`)."""
    return str(uid or "") in INPUT_IMAGE_SOP_CLASSES


def node_route(uid: str | None, other_objects: str = "keep") -> NodeRoute:
    """What the node does with a storage object of SOP class ``uid`` (see the module table).

    Takes the SOP class UID and the node's ``other_objects`` policy (``"keep"`` or
    ``"refuse"``). Returns :attr:`NodeRoute.QUEUE` for input image classes, else KEEP or
    REFUSE as the policy says.

    Raises:
        ValueError: ``other_objects`` is not one of :data:`OTHER_OBJECTS_POLICIES`.
    """
    if other_objects not in OTHER_OBJECTS_POLICIES:
        raise ValueError(f"other_objects {other_objects!r}: allowed {', '.join(map(repr, OTHER_OBJECTS_POLICIES))}")
    if is_input_image_class(uid):
        return NodeRoute.QUEUE
    return NodeRoute.KEEP if other_objects == "keep" else NodeRoute.REFUSE


def sop_class_name(uid: str | None) -> str:
    """Readable name of a SOP class UID: ``"X-Ray Radiation Dose SR Storage (1.2...)"``.

    Takes a UID string (or None); returns its registered name with the UID, or the UID alone
    when pydicom does not know it.
    """
    if not uid:
        return "(no SOP Class UID)"
    name = UID(str(uid)).name
    return f"{name} ({uid})" if name and name != str(uid) else str(uid)


def _is_non_image_class(uid: str) -> bool:
    if uid in _IMAGE_EXCEPTIONS:
        return False
    return any(uid.startswith(prefix) for prefix in _NON_IMAGE_PREFIXES)


def _modality(dataset: Dataset) -> str:
    value = dataset.get("Modality", "")
    return str(value or "").strip().upper()


def classify(dataset: Dataset) -> InputKind:
    """Decide whether ``dataset`` is a projection image the node segments.

    Takes a dataset (header only is enough: pixel data is not needed). Returns
    :attr:`InputKind.IMAGE` for XA / Enhanced XA / XRF / Enhanced XRF objects (Modality XA,
    RF or absent) and for Secondary Capture objects whose Modality is XA or RF;
    :attr:`InputKind.NON_IMAGE` for objects without pixels (SR, presentation states...);
    :attr:`InputKind.UNSUPPORTED` for other images. Never raises.
    """
    uid = str(dataset.get("SOPClassUID", "") or "")
    modality = _modality(dataset)
    if uid in PROJECTION_IMAGE_SOP_CLASSES:
        if modality in PROJECTION_MODALITIES or modality == "":
            return InputKind.IMAGE
        return InputKind.UNSUPPORTED
    if uid in SECONDARY_CAPTURE_SOP_CLASSES:
        return InputKind.IMAGE if modality in PROJECTION_MODALITIES else InputKind.UNSUPPORTED
    if _is_non_image_class(uid):
        return InputKind.NON_IMAGE
    if "Rows" not in dataset and "PixelData" not in dataset:
        return InputKind.NON_IMAGE
    return InputKind.UNSUPPORTED


def explain(dataset: Dataset) -> str:
    """One-line reason for :func:`classify`'s verdict, naming the SOP class and Modality.

    Takes a dataset; returns text fit for a log line or a DICOM status comment (no patient
    data: only the SOP class, Modality and the accepted alternatives).
    """
    kind = classify(dataset)
    name = sop_class_name(dataset.get("SOPClassUID"))
    modality = _modality(dataset) or "(none)"
    if kind is InputKind.IMAGE:
        return f"{name}, Modality {modality}: projection X-ray image"
    if kind is InputKind.NON_IMAGE:
        return f"{name}, Modality {modality}: not an image, nothing to segment"
    accepted = ", ".join(sorted(sop_class_name(u) for u in PROJECTION_IMAGE_SOP_CLASSES))
    return (
        f"{name}, Modality {modality}: not a projection X-ray image (accepted: {accepted}; "
        f"Secondary Capture only with Modality XA or RF)"
    )
