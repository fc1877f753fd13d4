"""What the node accepts: presentation contexts, transfer syntaxes, C-STORE statuses.

Which SOP classes are queued for segmentation, kept or refused is decided by the one SOP-class
table, :mod:`segmentation.dicom.sop_classes` (:func:`~segmentation.dicom.sop_classes.node_route`):
images of :data:`~segmentation.dicom.sop_classes.INPUT_IMAGE_SOP_CLASSES` are queued; every
other storage SOP class pynetdicom knows (dose reports, presentation states, key objects...) is
kept without segmenting or refused at association (its presentation context is not accepted),
as ``other_objects`` in the configuration says. Routing on SOP class alone is only the first
step: the worker looks at the decoded header (e.g. Modality of a Secondary Capture) before
segmenting (:func:`~segmentation.dicom.sop_classes.classify`).
"""

from __future__ import annotations

import copy
import enum
import logging
import re

from pydicom import uid as pydicom_uid
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification

from segmentation.dicom.sop_classes import (
    INPUT_IMAGE_SOP_CLASSES,
    NodeRoute,
    is_input_image_class,
    node_route,
)

logger = logging.getLogger(__name__)

#: Image storage SOP classes the node queues for segmentation, in a fixed order (from the table).
IMAGE_SOP_CLASSES: tuple[str, ...] = tuple(sorted(INPUT_IMAGE_SOP_CLASSES))

#: Transfer syntaxes accepted on every context, in the order the SCP prefers them.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    pydicom_uid.ExplicitVRLittleEndian,
    pydicom_uid.ImplicitVRLittleEndian,
    pydicom_uid.ExplicitVRBigEndian,
    pydicom_uid.DeflatedExplicitVRLittleEndian,
    pydicom_uid.RLELossless,
    pydicom_uid.JPEGBaseline8Bit,
    pydicom_uid.JPEGExtended12Bit,
    pydicom_uid.JPEGLossless,
    pydicom_uid.JPEGLosslessSV1,
    pydicom_uid.JPEGLSLossless,
    pydicom_uid.JPEGLSNearLossless,
    pydicom_uid.JPEG2000Lossless,
    pydicom_uid.JPEG2000,
)

#: Verification (C-ECHO): pydicom has no constant for it, pynetdicom has.
VERIFICATION_SOP_CLASS = Verification


class StoreStatus(enum.IntEnum):
    """C-STORE response statuses the node answers with (PS3.4 B.2.3)."""

    SUCCESS = 0x0000
    #: The instance could not be made durable (disk error, free-space floor reached).
    OUT_OF_RESOURCES = 0xA700
    #: Refused, out of resources: the instance is larger than ``limits.max_instance_bytes``.
    OUT_OF_RESOURCES_TOO_LARGE = 0xA701
    #: Refused, out of resources: more frames than ``limits.max_frames``.
    OUT_OF_RESOURCES_TOO_MANY_FRAMES = 0xA702
    #: The data set does not match the SOP class (UIDs differ from the command, no image).
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: The data set cannot be parsed.
    CANNOT_UNDERSTAND = 0xC210
    #: Internal error while storing (a bug): never Success.
    PROCESSING_FAILURE = 0x0110

# DICOM UID syntax: digits and dots, <= 64 chars. Leading zeros in a component are invalid per
# PS3.5 but common in the field; they are accepted because a UID never names a file here.
_UID_SYNTAX = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(value: object) -> bool:
    """True when ``value`` is a string with DICOM UID syntax (digits and dots, <= 64 chars)."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID_SYNTAX.match(value))


def is_image_sop_class(sop_class_uid: str) -> bool:
    """True for the SOP classes the node queues for segmentation (the table's input images)."""
    return is_input_image_class(sop_class_uid)


def storage_sop_classes() -> list[str]:
    """Every storage SOP class pynetdicom knows, plus the table's input image classes, once each."""
    out = list(IMAGE_SOP_CLASSES)
    seen = set(out)
    for cx in AllStoragePresentationContexts:
        uid = str(cx.abstract_syntax)
        if uid not in seen:
            seen.add(uid)
            out.append(uid)
    return out


def accepted_sop_classes(other_objects: str) -> list[str]:
    """SOP classes the SCP accepts for ``other_objects`` = ``"keep"`` or ``"refuse"``.

    The storage classes whose :func:`~segmentation.dicom.sop_classes.node_route` is not
    REFUSE: the input image classes first, then (``keep``) every other storage class.

    Raises:
        ValueError: ``other_objects`` is neither.
    """
    return [uid for uid in storage_sop_classes() if node_route(uid, other_objects) is not NodeRoute.REFUSE]


class SharedUidContext(PresentationContext):
    """A supported presentation context whose deep copy shares its UIDs.

    pynetdicom deep-copies the SCP's supported contexts for every association it accepts.
    With every storage SOP class and 13 transfer syntaxes (171 contexts), copying each UID
    object field by field took about 30 ms per association on 2 cores, paid by every
    sender before its first byte of data. UIDs are immutable strings, so a copy only needs
    its own transfer syntax list; everything else it may share.
    """

    @classmethod
    def of(cls, context: PresentationContext) -> SharedUidContext:
        """The same context (abstract syntax, transfer syntaxes, roles) as this class."""
        shared = cls()
        shared.__dict__.update(vars(context))
        shared._transfer_syntax = list(context.transfer_syntax)
        return shared

    def __deepcopy__(self, memo: dict) -> SharedUidContext:
        duplicate = copy.copy(self)
        duplicate._transfer_syntax = list(self._transfer_syntax)
        return duplicate
