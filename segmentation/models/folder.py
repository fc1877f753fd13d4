"""The trained-model folder: everything inference needs, and nothing else.

Layout::

    <folder>/config.json            {"format": "taviseg-model", "format_version": 1, ...ModelSpec}
    <folder>/fold_<k>.safetensors   the weights of fold k (one file per cross-validation fold)
    <folder>/variants.json          optional: derived executables of the weights (see below)
    <folder>/fold_<k>.<variant>.onnx  a variant's file for fold k (e.g. ``fold_0.onnx-int8.onnx``)

``config.json`` names the architecture, encoder, input size, input channels, normalisation,
threshold, the segment description (aortic root, SNOMED CT coded) and the training provenance
(data set, folds, metrics...). A folder written by another format version is refused with an
error naming both versions.

Variants (optional, added later to a folder without touching ``config.json``): a sidecar
``variants.json`` ``{"format": "taviseg-model-variants", "format_version": 1, "variants":
{NAME: {"files": {fold: file}, "sha256": {fold: hex}, "source_weights_sha256": {fold: hex},
"padded_size": P, "provenance": {...}}}}`` lists executables derived from the weights, such as
the int8 ONNX model written by :mod:`segmentation.inference.quantize` (name ``onnx-int8``, its
calibration provenance and accuracy check in ``provenance``). A variant is valid for a fold only
while that fold's weights still hash to ``source_weights_sha256`` (:meth:`ModelFolder.variant_file`).
Folders without ``variants.json`` load as before; readers that predate it ignore the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from segmentation.errors import ModelError
from segmentation.models.zoo import (
    build_model,
    canonical_architecture,
    canonical_encoder,
    padded_input_size,
)
from tavicore.config import ConfigError, from_dict, setting, to_dict
from tavicore.fileio import write_atomic, write_bytes_atomic, write_json_atomic

logger = logging.getLogger(__name__)

FORMAT_NAME = "taviseg-model"
#: Version of the folder format written by this code (and the only one it reads).
FORMAT_VERSION = 1
CONFIG_FILENAME = "config.json"
VARIANTS_FILENAME = "variants.json"
VARIANTS_FORMAT_NAME = "taviseg-model-variants"
#: Version of the ``variants.json`` format written (and read) by this code.
VARIANTS_FORMAT_VERSION = 1
#: The supported normalisations (see segmentation.inference.preprocess).
NORMALIZATIONS = ("unit", "imagenet")


def fold_filename(fold: int) -> str:
    """File name of the weights of ``fold`` (``fold_<k>.safetensors``)."""
    return f"fold_{int(fold)}.safetensors"


@dataclass(frozen=True)
class Code:
    """A coded concept (DICOM Code Sequence item): value, coding scheme designator, meaning."""

    value: str
    scheme: str
    meaning: str


#: SNOMED CT "Anatomical Structure" (DICOM CID 7150, Segmentation Property Category).
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
#: SNOMED CT 8128003 "Aortic root" (DICOM CID 12305 "Aortic Root", CID 12289/12291 "Root of
#: Aorta"; SNOMED FSN "Supraaortic valve area structure"). Note: 91748002 is NOT the aortic
#: root (it is "Mid Left Anterior Descending Coronary Artery" in DICOM CID 7151/3014).
AORTIC_ROOT = Code("8128003", "SCT", "Aortic root")


@dataclass(frozen=True)
class SegmentDescription:
    """What the model segments, coded for a DICOM Segmentation's Segment Sequence."""

    label: str = "Aortic root"
    category: Code = ANATOMICAL_STRUCTURE
    type: Code = AORTIC_ROOT
    algorithm_type: Literal["AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"] = "AUTOMATIC"


@dataclass(frozen=True)
class ModelSpec:
    """The self-description of a trained model (``config.json``).

    ``normalization``: ``"unit"`` = :func:`segmentation.inference.preprocess.normalize_frames`
    ([0, 1]; our training); ``"imagenet"`` = the same, then per-channel ImageNet mean/std
    (the authors' released models, 3 channels). ``threshold`` applies to the sigmoid
    probability. ``folds``: the folds whose weights the folder holds.
    """

    architecture: str
    encoder: str
    input_size: int = setting(ge=16, le=4096, doc="frames are resized to this size")
    in_channels: int = setting(1, ge=1, le=3, doc="input channels (gray frame replicated)")
    normalization: Literal["unit", "imagenet"] = "unit"
    threshold: float = setting(0.5, gt=0.0, lt=1.0, doc="probability threshold")
    segment: SegmentDescription = field(default_factory=SegmentDescription)
    provenance: dict[str, Any] = field(default_factory=dict)
    folds: tuple[int, ...] = (0,)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "architecture", canonical_architecture(self.architecture))
        object.__setattr__(self, "encoder", canonical_encoder(self.encoder))
        object.__setattr__(self, "folds", tuple(int(f) for f in self.folds))
        if not self.folds or len(set(self.folds)) != len(self.folds) or min(self.folds) < 0:
            raise ModelError(f"folds must be distinct non-negative integers, got {self.folds}")

    @property
    def padded_size(self) -> int:
        """The network input size (input_size padded for the architecture)."""
        return padded_input_size(self.architecture, self.input_size)

    def to_json_dict(self) -> dict[str, Any]:
        """The spec as the JSON mapping written to ``config.json``."""
        return {"format": FORMAT_NAME, **to_dict(self)}


def variant_filename(fold: int, variant: str) -> str:
    """File name of ``variant``'s file for ``fold`` (``fold_<k>.<variant>.onnx``)."""
    return f"fold_{int(fold)}.{variant}.onnx"


@dataclass(frozen=True)
class ModelVariant:
    """One derived executable of a folder's weights (an entry of ``variants.json``).

    ``files``/``sha256``/``source_weights_sha256``: per fold, the file name in the folder, its
    SHA-256 and the SHA-256 of the fold's weights it was made from; ``padded_size``: the
    network input size it was made for; ``provenance``: how it was made (free-form JSON).
    """

    name: str
    files: dict[int, str]
    sha256: dict[int, str]
    source_weights_sha256: dict[int, str]
    padded_size: int
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        """The entry as written to ``variants.json`` (fold keys as strings)."""
        return {
            "files": {str(k): v for k, v in sorted(self.files.items())},
            "sha256": {str(k): v for k, v in sorted(self.sha256.items())},
            "source_weights_sha256": {str(k): v for k, v in sorted(self.source_weights_sha256.items())},
            "padded_size": int(self.padded_size),
            "provenance": self.provenance,
        }

    @classmethod
    def from_json_dict(cls, name: str, data: Any, *, source: str) -> ModelVariant:
        """Parse one ``variants.json`` entry.

        Raises:
            ModelError: a missing or malformed key (names the file, the variant and the key).
        """
        if not isinstance(data, dict):
            raise ModelError(f"{source}: variant {name!r} is not a JSON object")
        try:
            folds = {
                key: {int(k): str(v) for k, v in data[key].items()}
                for key in ("files", "sha256", "source_weights_sha256")
            }
            padded = int(data["padded_size"])
        except KeyError as exc:
            raise ModelError(f"{source}: variant {name!r} has no {exc.args[0]!r}") from None
        except (AttributeError, TypeError, ValueError) as exc:
            raise ModelError(f"{source}: variant {name!r} is malformed: {exc}") from None
        provenance = data.get("provenance", {})
        if not isinstance(provenance, dict):
            raise ModelError(f"{source}: variant {name!r}: provenance is not a JSON object")
        return cls(name=name, padded_size=padded, provenance=provenance, **folds)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ModelFolder:
    """A loaded model folder: its spec, where the weights of each fold are, and its variants."""

    path: Path
    spec: ModelSpec
    _hashes: dict[int, str] = field(default_factory=dict, repr=False)
    variants: dict[str, ModelVariant] = field(default_factory=dict)

    def variant_file(self, name: str, fold: int) -> Path | None:
        """The file of variant ``name`` for ``fold`` when it is present and still valid, else None.

        Valid: listed in ``variants.json``, made for the spec's network size and from the fold's
        current weights (same SHA-256), and the file exists. An invalid entry is logged.
        """
        variant = self.variants.get(name)
        if variant is None or fold not in variant.files:
            return None
        path = self.path / variant.files[fold]
        if variant.padded_size != self.spec.padded_size:
            logger.warning("%s: variant %s was made for %d px, the model runs at %d px; ignored",
                           self.path, name, variant.padded_size, self.spec.padded_size)
            return None
        if variant.source_weights_sha256.get(fold) != self.weights_hash(fold):
            logger.warning("%s: variant %s of fold %d was made from other weights (%s changed since); ignored",
                           self.path, name, fold, fold_filename(fold))
            return None
        if not path.is_file():
            logger.warning("%s: variant %s of fold %d: file %s missing; ignored", self.path, name, fold, path.name)
            return None
        return path

    @property
    def folds(self) -> tuple[int, ...]:
        """The folds whose weights are present."""
        return self.spec.folds

    def weights_path(self, fold: int) -> Path:
        """Path of the safetensors file of ``fold``.

        Raises:
            ModelError: ``fold`` is not one of the folder's folds.
        """
        if fold not in self.spec.folds:
            raise ModelError(f"{self.path}: no fold {fold!r}; folds present: {list(self.spec.folds)}")
        return self.path / fold_filename(fold)

    def weights_hash(self, fold: int) -> str:
        """SHA-256 (hex) of the weights file of ``fold`` (cached)."""
        if fold not in self._hashes:
            self._hashes[fold] = _sha256_file(self.weights_path(fold))
        return self._hashes[fold]

    def state_dict(self, fold: int) -> dict[str, torch.Tensor]:
        """The weights of ``fold``.

        Raises:
            ModelError: missing or unreadable weights file.
        """
        from safetensors.torch import load_file

        path = self.weights_path(fold)
        try:
            return load_file(str(path))
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelError(f"{path}: cannot read weights: {exc}") from exc

    def build(self, fold: int | None = None, *, device: str | torch.device = "cpu") -> torch.nn.Module:
        """Build the network of ``fold`` (default: the first fold) with its weights, in eval mode.

        Raises:
            ModelError: unknown fold, unreadable weights, or weights that do not fit the spec.
        """
        fold = self.spec.folds[0] if fold is None else fold
        model = build_model(self.spec.architecture, self.spec.encoder, in_channels=self.spec.in_channels)
        state = self.state_dict(fold)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelError(
                f"{self.weights_path(fold)}: weights do not fit {self.spec.architecture}/"
                f"{self.spec.encoder} with {self.spec.in_channels} input channel(s): {exc}"
            ) from exc
        return model.to(device).eval()


def _same_weights_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
    """Whether ``path`` already holds exactly these tensors and metadata.

    safetensors writes its metadata in a per-process random order, so writing the same weights
    again gives other bytes and another SHA-256; the folder's QC data and int8 variant, which
    name the weights by that hash, would then look stale after a training command run again
    over finished folds. An unchanged file is therefore left as it is.
    """
    if not path.is_file():
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            if (fh.metadata() or {}) != metadata or set(fh.keys()) != set(tensors):
                return False
            return all(torch.equal(fh.get_tensor(k), v) for k, v in tensors.items())
    except Exception:  # noqa: BLE001 - an unreadable file is simply rewritten
        return False


def save_model_folder(
    folder: str | Path,
    spec: ModelSpec,
    fold_state_dicts: dict[int, dict[str, torch.Tensor]],
    *,
    overwrite: bool = False,
) -> Path:
    """Write a model folder: ``config.json`` plus ``fold_<k>.safetensors`` per fold.

    The spec's ``folds`` are set to the keys of ``fold_state_dicts``. Files are written to a
    temporary name and renamed, so a reader never sees half a file.

    Args:
        folder: Target folder (created).
        spec: The model description.
        fold_state_dicts: Fold index -> state dict of the whole model.
        overwrite: Replace an existing ``config.json`` (else it is an error).

    Returns:
        The folder path.

    Raises:
        ModelError: no folds given, an existing folder without ``overwrite``, or state dicts
            that do not fit the spec's architecture/encoder.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if not fold_state_dicts:
        raise ModelError("save_model_folder: no fold weights given")
    if (folder / CONFIG_FILENAME).exists() and not overwrite:
        raise ModelError(f"{folder}: a model folder already exists here (pass overwrite)")
    spec = dataclasses.replace(spec, folds=tuple(sorted(int(k) for k in fold_state_dicts)))
    expected = build_model(spec.architecture, spec.encoder, in_channels=spec.in_channels).state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"architecture": spec.architecture, "encoder": spec.encoder, "format": FORMAT_NAME}
    for fold, state in sorted(fold_state_dicts.items()):
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ModelError(
                f"fold {fold}: state dict does not fit {spec.architecture}/{spec.encoder}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        target = folder / fold_filename(fold)
        fold_meta = {**meta, "fold": str(fold)}
        if _same_weights_file(target, tensors, fold_meta):
            continue  # keep the file and its hash (see _same_weights_file)
        write_atomic(target, lambda tmp, t=tensors, m=fold_meta: save_file(t, str(tmp), metadata=m))
    write_json_atomic(folder / CONFIG_FILENAME, spec.to_json_dict())
    logger.info("wrote model folder %s (%s/%s, folds %s)", folder, spec.architecture, spec.encoder, list(spec.folds))
    return folder


def load_model_folder(folder: str | Path) -> ModelFolder:
    """Load and check a model folder.

    Raises:
        ModelError: missing folder or ``config.json``, not a taviseg model, another format
            version (names both), an invalid spec (names the key), or a missing weights file.
    """
    folder = Path(folder)
    config = folder / CONFIG_FILENAME
    if not config.is_file():
        raise ModelError(f"{folder}: not a taviseg model folder (no {CONFIG_FILENAME})")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{config}: unreadable JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ModelError(f"{config}: format is {got!r}, expected {FORMAT_NAME!r}")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        relation = "newer" if isinstance(version, int) and version > FORMAT_VERSION else "older or unknown"
        raise ModelError(
            f"{config}: model folder format version {version!r} ({relation}) is not supported; "
            f"this taviseg reads format version {FORMAT_VERSION}"
        )
    body = {k: v for k, v in data.items() if k != "format"}
    try:
        spec = from_dict(ModelSpec, body, source=str(config))
    except ConfigError as exc:
        raise ModelError(str(exc)) from exc
    model_folder = ModelFolder(path=folder, spec=spec, variants=read_variants(folder))
    for fold in spec.folds:
        if not model_folder.weights_path(fold).is_file():
            raise ModelError(f"{folder}: weights of fold {fold} missing ({fold_filename(fold)})")
    return model_folder


def read_variants(folder: str | Path) -> dict[str, ModelVariant]:
    """The variants listed in ``folder/variants.json`` ({} when the file is absent).

    Raises:
        ModelError: unreadable JSON, another format or version, or a malformed entry (names it).
    """
    path = Path(folder) / VARIANTS_FILENAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != VARIANTS_FORMAT_NAME:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ModelError(f"{path}: format is {got!r}, expected {VARIANTS_FORMAT_NAME!r}")
    if data.get("format_version") != VARIANTS_FORMAT_VERSION:
        raise ModelError(
            f"{path}: variants format version {data.get('format_version')!r} is not supported; "
            f"this taviseg reads version {VARIANTS_FORMAT_VERSION}"
        )
    entries = data.get("variants", {})
    if not isinstance(entries, dict):
        raise ModelError(f"{path}: 'variants' is not a JSON object")
    return {
        str(name): ModelVariant.from_json_dict(str(name), entry, source=str(path)) for name, entry in entries.items()
    }


def save_variant(
    folder: ModelFolder,
    name: str,
    fold_files: dict[int, bytes],
    *,
    provenance: dict[str, Any],
) -> ModelVariant:
    """Write variant ``name`` into a loaded model folder and list it in ``variants.json``.

    Each fold's file is written atomically first, then ``variants.json`` is rewritten
    atomically with the new entry (replacing an entry of the same name; other variants kept),
    so a reader sees either the old or the new variant. ``folder.variants`` is updated.

    Args:
        folder: The loaded model folder.
        name: Variant name (``[a-z0-9-]``, e.g. ``onnx-int8``).
        fold_files: Fold -> the serialized file (every fold must be one of the folder's).
        provenance: How the files were made (JSON-serialisable).

    Returns:
        The written :class:`ModelVariant`.

    Raises:
        ModelError: bad name, no files, or a fold the folder does not have.
    """
    if not name or not all(c.isdigit() or ("a" <= c <= "z") or c == "-" for c in name):
        raise ModelError(f"variant name {name!r}: use lower-case letters, digits and '-'")
    if not fold_files:
        raise ModelError(f"{folder.path}: variant {name!r}: no files given")
    for fold in fold_files:
        folder.weights_path(fold)  # raises naming the folds present
    files, hashes, sources = {}, {}, {}
    for fold, data in sorted(fold_files.items()):
        filename = variant_filename(fold, name)
        write_bytes_atomic(folder.path / filename, data)
        files[fold] = filename
        hashes[fold] = hashlib.sha256(data).hexdigest()
        sources[fold] = folder.weights_hash(fold)
    variant = ModelVariant(name=name, files=files, sha256=hashes, source_weights_sha256=sources,
                           padded_size=folder.spec.padded_size, provenance=provenance)
    current = read_variants(folder.path)
    current[name] = variant
    write_json_atomic(folder.path / VARIANTS_FILENAME, {
        "format": VARIANTS_FORMAT_NAME,
        "format_version": VARIANTS_FORMAT_VERSION,
        "variants": {k: v.to_json_dict() for k, v in sorted(current.items())},
    })
    folder.variants = current
    logger.info("wrote variant %s of %s (folds %s)", name, folder.path, sorted(files))
    return variant
