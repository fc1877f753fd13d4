"""One frame of Pixel Data -> a 2-D array of stored values in the MONOCHROME2 convention.

Frames are decoded one at a time (never the whole cine at once). For each encapsulated
transfer syntax the pydicom decoding plugins are tried in the order of
:data:`DECODER_PREFERENCE` (fastest first, measured on the real samples; see docs/dicom.md);
the plugin that worked last is tried first for the next frame. When every plugin refuses a
frame, GDCM's own codec is called directly (the 12-bit JPEG Extended WG-04 sample, whose scan
header pydicom's plugins reject, decodes only this way). A frame no decoder can read raises
:class:`~segmentation.errors.DicomDecodeError`; the reader records it and moves on.

What the model receives (:func:`to_model_convention`):

* stored values, never the Modality LUT (dcmtk, fo-dicom and dcm4che do the same for XA/XRF);
* native data: unused high bits (overlays) masked off after honouring HighBit;
  encapsulated data: values clipped to the BitsStored range (lossy codecs overshoot);
* signed data mapped to offset binary (two's complement value + 2**(BitsStored-1));
* MONOCHROME1 inverted (max - value), so contrast-filled vessels are dark as in MONOCHROME2;
* YBR_* colour: the luma channel; RGB: ITU-R BT.601 luma;
* dtype uint8 when BitsStored <= 8 (and for colour), else uint16.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from segmentation.errors import DicomDecodeError

logger = logging.getLogger(__name__)

#: Plugin order per transfer syntax, fastest first (timings in docs/dicom.md). Plugins that are
#: not installed are skipped; GDCM's own codec is the last resort for every encapsulated syntax.
DECODER_PREFERENCE: dict[str, tuple[str, ...]] = {
    dicom_uid.JPEGBaseline8Bit: ("pillow", "gdcm", "pylibjpeg"),
    dicom_uid.JPEGExtended12Bit: ("pylibjpeg", "pillow", "gdcm"),
    dicom_uid.JPEGLossless: ("gdcm", "pylibjpeg"),
    dicom_uid.JPEGLosslessSV1: ("gdcm", "pylibjpeg"),
    dicom_uid.JPEGLSLossless: ("pyjpegls", "gdcm", "pylibjpeg"),
    dicom_uid.JPEGLSNearLossless: ("pyjpegls", "gdcm", "pylibjpeg"),
    dicom_uid.JPEG2000Lossless: ("gdcm", "pylibjpeg", "pillow"),
    dicom_uid.JPEG2000: ("gdcm", "pylibjpeg", "pillow"),
    dicom_uid.RLELossless: ("pylibjpeg", "pydicom"),
}
#: Name under which the direct GDCM fallback is reported in :attr:`FrameCodec.used`.
GDCM_DIRECT = "gdcm-direct"
_REFUSE_12_BIT_JPEG = frozenset({"gdcm", "pillow"})

_SUPPORTED_PHOTOMETRIC = (
    "MONOCHROME1",
    "MONOCHROME2",
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_PARTIAL_420",
    "YBR_ICT",
    "YBR_RCT",
)


@dataclass(frozen=True)
class PixelLayout:
    """How one Pixel Data element is encoded (Image Pixel module + transfer syntax)."""

    transfer_syntax: UID
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    high_bit: int
    pixel_representation: int
    photometric_interpretation: str
    planar_configuration: int
    number_of_frames: int
    pixel_vr: str = "OW"

    @classmethod
    def from_dataset(cls, ds: Dataset, transfer_syntax: str, *, pixel_vr: str = "OW") -> PixelLayout:
        """Read the layout from a header.

        Takes the dataset (header only is fine), its transfer syntax UID and the VR of the
        Pixel Data element. A missing, empty or zero NumberOfFrames means one frame.
        Raises DicomDecodeError naming the attribute when a required one is missing or
        out of the supported range (BitsAllocated 8 or 16, 1 or 3 samples per pixel).
        """
        def required(keyword: str) -> int:
            value = ds.get(keyword)
            if value is None or value == "":
                raise DicomDecodeError(f"Image Pixel attribute {keyword} is missing or empty")
            return int(value)

        rows, columns = required("Rows"), required("Columns")
        bits_allocated = required("BitsAllocated")
        if bits_allocated not in (8, 16):
            raise DicomDecodeError(
                f"BitsAllocated {bits_allocated} is not supported (allowed: 8, 16)"
            )
        bits_stored = int(ds.get("BitsStored") or bits_allocated)
        if not 1 <= bits_stored <= bits_allocated:
            raise DicomDecodeError(
                f"BitsStored {bits_stored} is out of range (1..BitsAllocated={bits_allocated})"
            )
        high_bit = int(ds.get("HighBit") if ds.get("HighBit") not in (None, "") else bits_stored - 1)
        if not bits_stored - 1 <= high_bit < bits_allocated:
            logger.warning("HighBit %d inconsistent with BitsStored %d: using %d",
                           high_bit, bits_stored, bits_stored - 1)
            high_bit = bits_stored - 1
        samples = int(ds.get("SamplesPerPixel") or 1)
        if samples not in (1, 3):
            raise DicomDecodeError(f"SamplesPerPixel {samples} is not supported (allowed: 1, 3)")
        if samples == 3 and bits_allocated != 8:
            raise DicomDecodeError(
                f"colour data with BitsAllocated {bits_allocated} is not supported (allowed: 8)"
            )
        photometric = str(ds.get("PhotometricInterpretation") or
                          ("MONOCHROME2" if samples == 1 else "RGB")).strip().upper()
        if photometric not in _SUPPORTED_PHOTOMETRIC:
            raise DicomDecodeError(
                f"PhotometricInterpretation {photometric!r} is not supported "
                f"(allowed: {', '.join(_SUPPORTED_PHOTOMETRIC)})"
            )
        raw_frames = ds.get("NumberOfFrames")
        try:
            frames = int(raw_frames) if raw_frames not in (None, "") else 1
        except (TypeError, ValueError):
            raise DicomDecodeError(f"NumberOfFrames {raw_frames!r} is not an integer") from None
        if frames < 1:
            logger.warning("NumberOfFrames %r is invalid: assuming 1 frame", raw_frames)
            frames = 1
        return cls(
            transfer_syntax=UID(str(transfer_syntax)),
            rows=rows,
            columns=columns,
            samples_per_pixel=samples,
            bits_allocated=bits_allocated,
            bits_stored=bits_stored,
            high_bit=high_bit,
            pixel_representation=int(ds.get("PixelRepresentation") or 0),
            photometric_interpretation=photometric,
            planar_configuration=int(ds.get("PlanarConfiguration") or 0),
            number_of_frames=frames,
            pixel_vr=pixel_vr,
        )

    @property
    def is_encapsulated(self) -> bool:
        """True for compressed (encapsulated) transfer syntaxes."""
        return self.transfer_syntax.is_encapsulated

    @property
    def frame_bytes(self) -> int:
        """Bytes of one natively encoded frame (YBR_FULL_422 is sub-sampled: 2 samples/pixel)."""
        samples = 2 if self.photometric_interpretation == "YBR_FULL_422" else self.samples_per_pixel
        return self.rows * self.columns * samples * (self.bits_allocated // 8)

    @property
    def output_bits(self) -> int:
        """Bit depth of the arrays :func:`to_model_convention` returns (8 for colour)."""
        return 8 if self.samples_per_pixel > 1 else self.bits_stored

    @property
    def output_dtype(self) -> np.dtype:
        """uint8 for up to 8 output bits, uint16 above."""
        return np.dtype(np.uint8) if self.output_bits <= 8 else np.dtype(np.uint16)

    def pydicom_options(self) -> dict[str, object]:
        """Decoding options for one frame given to pydicom as a buffer (number_of_frames=1)."""
        options: dict[str, object] = {
            "rows": self.rows,
            "columns": self.columns,
            "samples_per_pixel": self.samples_per_pixel,
            "bits_allocated": self.bits_allocated,
            "bits_stored": self.bits_stored,
            "pixel_representation": self.pixel_representation,
            "photometric_interpretation": self.photometric_interpretation,
            "number_of_frames": 1,
            "pixel_keyword": "PixelData",
            "pixel_vr": self.pixel_vr,
            # keep unused high bits: to_model_convention honours HighBit, then masks
            "correct_unused_bits": False,
        }
        if self.samples_per_pixel > 1:
            options["planar_configuration"] = self.planar_configuration
        return options


class FrameCodec:
    """Decodes single frames of one :class:`PixelLayout`, remembering which decoder worked.

    ``used`` counts frames per decoder name (``"native"``, a pydicom plugin name, or
    :data:`GDCM_DIRECT`).
    """

    def __init__(self, layout: PixelLayout) -> None:
        """Takes the layout; raises DicomDecodeError for a transfer syntax pydicom cannot decode."""
        self.layout = layout
        self.used: Counter[str] = Counter()
        try:
            self._decoder = get_decoder(layout.transfer_syntax)
        except NotImplementedError as exc:
            raise DicomDecodeError(
                f"transfer syntax {layout.transfer_syntax} ({layout.transfer_syntax.name}) "
                f"has no pixel decoder: {exc}"
            ) from None
        if layout.is_encapsulated:
            available = set(self._decoder.available_plugins)
            if layout.transfer_syntax == dicom_uid.JPEGExtended12Bit and layout.bits_stored > 8:
                available -= _REFUSE_12_BIT_JPEG  # they refuse 12-bit JPEG Extended by design
            preferred = DECODER_PREFERENCE.get(layout.transfer_syntax, ())
            self._plugins = [p for p in preferred if p in available]
            self._plugins += sorted(available - set(self._plugins))
        else:
            self._plugins = [""]
        self._last_ok: str | None = None

    @property
    def plugins(self) -> tuple[str, ...]:
        """The pydicom plugins tried, in order (before the direct GDCM fallback)."""
        return tuple(self._plugins)

    def decode(self, frame: bytes) -> np.ndarray:
        """Decode one frame's bytes (native: exactly ``frame_bytes``; else one codestream).

        Returns the frame in the model convention (see :func:`to_model_convention`).
        Raises DicomDecodeError with every decoder's message when none can decode it.
        """
        if not self.layout.is_encapsulated:
            if len(frame) < self.layout.frame_bytes:
                raise DicomDecodeError(
                    f"native frame has {len(frame)} bytes, expected {self.layout.frame_bytes}"
                )
            try:
                arr, props = self._decoder.as_array(
                    frame[: self.layout.frame_bytes], index=0, raw=True,
                    **self.layout.pydicom_options(),
                )
            except (ValueError, RuntimeError, NotImplementedError) as exc:
                raise DicomDecodeError(f"native frame cannot be interpreted: {exc}") from None
            self.used["native"] += 1
            return to_model_convention(arr, str(props["photometric_interpretation"]), self.layout)
        return self._decode_encapsulated(frame)

    def _decode_encapsulated(self, frame: bytes) -> np.ndarray:
        order = [*self._plugins, GDCM_DIRECT]
        if self._last_ok in order:
            order.remove(self._last_ok)
            order.insert(0, self._last_ok)
        errors: list[str] = []
        buffer = encapsulate([frame], has_bot=False)
        for name in order:
            try:
                if name == GDCM_DIRECT:
                    arr = decode_with_gdcm(frame, self.layout)
                    photometric = self.layout.photometric_interpretation
                else:
                    arr, props = self._decoder.as_array(
                        buffer, index=0, raw=True, decoding_plugin=name,
                        **self.layout.pydicom_options(),
                    )
                    photometric = str(props["photometric_interpretation"])
            except Exception as exc:  # noqa: BLE001 - plugins raise anything; each is recorded
                message = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
                errors.append(f"{name}: {message.removeprefix(name + ':').strip()[:200]}")
                continue
            if self._last_ok is not None and self._last_ok != name:
                logger.info("decoder changed from %s to %s", self._last_ok, name)
            elif errors:
                logger.info("frame decoded by %s after: %s", name, "; ".join(errors))
            self._last_ok = name
            self.used[name] += 1
            return to_model_convention(arr, photometric, self.layout)
        raise DicomDecodeError(
            f"no decoder could decode the {self.layout.transfer_syntax.name} frame: "
            + "; ".join(errors)
        )


def decode_with_gdcm(frame: bytes, layout: PixelLayout) -> np.ndarray:
    """Decode one encapsulated frame with GDCM's own codec (bypassing pydicom's plugin).

    pydicom's gdcm plugin refuses 12-bit JPEG Extended; GDCM itself decodes it. Takes the
    frame's codestream and layout; returns (rows, columns[, samples]) stored values.
    Raises DicomDecodeError when GDCM is missing or returns no or too little data.
    """
    try:
        import gdcm  # optional, heavy
    except ImportError:
        raise DicomDecodeError("python-gdcm is not installed") from None
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(frame)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((layout.columns, layout.rows, 1))
    image.SetDataElement(element)
    pi_type = gdcm.PhotometricInterpretation.GetPIType(layout.photometric_interpretation)
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(pi_type))
    if layout.samples_per_pixel > 1:
        image.SetPlanarConfiguration(layout.planar_configuration)
    ts_type = gdcm.TransferSyntax.GetTSType(str(layout.transfer_syntax))
    image.SetTransferSyntax(gdcm.TransferSyntax(ts_type))
    image.SetPixelFormat(
        gdcm.PixelFormat(
            layout.samples_per_pixel,
            layout.bits_allocated,
            layout.bits_stored,
            layout.high_bit,
            layout.pixel_representation,
        )
    )
    raw = image.GetBuffer()
    if not raw:
        raise DicomDecodeError("GDCM returned no pixel data")
    data = raw.encode("utf-8", "surrogateescape")
    itemsize = layout.bits_allocated // 8
    expected = layout.rows * layout.columns * layout.samples_per_pixel * itemsize
    if len(data) < expected:
        raise DicomDecodeError(f"GDCM returned {len(data)} bytes, expected {expected}")
    kind = "i" if layout.pixel_representation else "u"
    arr = np.frombuffer(data[:expected], dtype=np.dtype(f"<{kind}{itemsize}"))
    if layout.samples_per_pixel > 1:
        return arr.reshape(layout.rows, layout.columns, layout.samples_per_pixel)
    return arr.reshape(layout.rows, layout.columns)


def to_model_convention(arr: np.ndarray, photometric: str, layout: PixelLayout) -> np.ndarray:
    """Turn a decoded frame into what the model expects (rules in the module docstring).

    Takes the decoded array ((rows, cols) or (rows, cols, 3), planar configuration 0), the
    photometric interpretation it is in after decoding, and the layout. Returns a 2-D
    uint8/uint16 array of shape (rows, columns).
    """
    if arr.ndim == 3:
        return _colour_to_gray(arr, photometric)
    if not arr.dtype.isnative:  # big endian native data
        arr = arr.astype(arr.dtype.newbyteorder("="))
    bits = layout.bits_stored
    mask = (1 << bits) - 1
    work = arr.astype(np.int64 if arr.dtype.kind == "i" else arr.dtype, copy=False)
    if layout.is_encapsulated:
        if layout.pixel_representation:
            work = np.clip(work, -(1 << (bits - 1)), (1 << (bits - 1)) - 1) + (1 << (bits - 1))
        else:
            work = np.clip(work, 0, mask)
        out = work.astype(layout.output_dtype)
    else:
        unsigned = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
        shift = layout.high_bit + 1 - bits
        values = (unsigned >> shift) & mask if shift else unsigned & mask
        if layout.pixel_representation:
            values = values ^ (1 << (bits - 1))  # two's complement -> offset binary
        out = values.astype(layout.output_dtype, copy=False)
    if photometric == "MONOCHROME1":
        out = (mask - out).astype(layout.output_dtype, copy=False)
    return np.ascontiguousarray(out)


def _colour_to_gray(arr: np.ndarray, photometric: str) -> np.ndarray:
    if photometric.startswith("YBR"):
        return np.ascontiguousarray(arr[..., 0]).astype(np.uint8, copy=False)
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gray = arr.astype(np.float32) @ weights
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)
