"""Importer for a Supervisely project (the annotation tool of the paper's data set).

Project layout::

    SRC/meta.json                         {"classes": [{"title": "aorta", "shape": "bitmap"}, ...]}
    SRC/<dataset>/img/<image name>        frame
    SRC/<dataset>/ann/<image name>.json   {"size": {"height", "width"}, "objects": [...]}

Objects of the aortic class (``class_names``, compared case-insensitively with ``_``/``-`` read
as spaces) are merged into one mask; other classes are ignored. Supported geometries:

- ``bitmap``: ``bitmap.data`` is base64 of a zlib-compressed PNG; its alpha channel (or, without
  alpha, its brightest colour channel, or its single channel) > 0 is the mask of a patch whose
  top-left pixel sits at ``bitmap.origin`` = ``[x, y]`` = (column, row). Parts outside the image
  are clipped.
- ``polygon``: ``points.exterior`` = ``[[x, y], ...]`` and ``points.interior`` = list of holes,
  in pixel coordinates (x = column, y = row; pixel centres at integers, as Supervisely's own
  renderer). Rasterisation: vertices are rounded to the nearest integer, the exterior is filled
  with ``cv2.fillPoly`` (8-connected, outline pixels included), then every hole is filled with
  0 the same way (so a hole's outline pixels are background): the same order of operations as
  Supervisely's own ``Polygon._draw_impl``.

An image without an annotation file is an error naming it (skipped with a warning when
``skip_unmatched``); an annotation without an object of the class gives an empty mask.
Patients come from the image name (:mod:`.naming`) or, with ``patient_from="dataset"``, from the
dataset folder name (one run per dataset, frames numbered in sorted name order).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from tqdm import tqdm

from tavicore.config import ConfigError, setting
from tavidata.errors import DatasetError
from tavidata.format import PAPER_PIXEL_SPACING_MM
from training.importers.masks import read_image_file
from training.importers.naming import (
    DEFAULT_PATTERN,
    DEFAULT_RUN_ID,
    FrameName,
    compile_pattern,
    image_files,
    label_matches,
    number_frames,
    parse_name,
    skip_unmatched,
)
from training.importers.output import ImportResult, staged_writer

logger = logging.getLogger(__name__)

#: Class titles taken as the aortic root by default.
DEFAULT_CLASS_NAMES = ("aorta", "aortic root", "aortic", "aortic_root", "aortic bulb")


@dataclass(frozen=True)
class SuperviselyImportConfig:
    """Options of :func:`import_supervisely` (YAML section ``supervisely``)."""

    class_names: tuple[str, ...] = setting(DEFAULT_CLASS_NAMES, doc="class titles of the aortic root")
    patient_from: Literal["name", "dataset"] = setting("name", doc="patient id source")
    pattern: str = setting(DEFAULT_PATTERN, doc="regex on the image stem (patient_from=name)")
    skip_unmatched: bool = setting(False, doc="skip (warn) unmatched names / images without ann")
    spacing_mm: float = setting(PAPER_PIXEL_SPACING_MM, gt=0.0, le=10.0, doc="pixel spacing (mm)")
    name: str = setting("", doc="data-set name (default: the project folder name)")

    def __post_init__(self) -> None:
        compile_pattern(self.pattern)
        if not self.class_names:
            raise ConfigError("class_names: must name at least one class")


def decode_bitmap(data: str) -> np.ndarray:
    """Decode a Supervisely ``bitmap.data`` string into a boolean patch.

    Raises:
        DatasetError: the string is not base64 of zlib-compressed image bytes.
    """
    try:
        raw = zlib.decompress(base64.b64decode(data, validate=False))
    except (binascii.Error, zlib.error, ValueError) as exc:
        raise DatasetError(f"bitmap data is not base64 of zlib-compressed PNG: {exc}") from exc
    patch = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if patch is None:
        raise DatasetError("bitmap data does not decode as an image")
    if patch.ndim == 2:
        return patch > 0
    if patch.shape[2] == 4:
        return patch[:, :, 3] > 0
    return patch.max(axis=2) > 0


def _points(value: Any, where: str) -> np.ndarray:
    pts = np.asarray(value, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
        raise DatasetError(f"{where}: expected at least 3 [x, y] points, got {value!r:.80}")
    return np.rint(pts).astype(np.int32)


def rasterize_polygon(exterior: Any, interior: Any, shape: tuple[int, int], where: str = "polygon") -> np.ndarray:
    """Rasterise a Supervisely polygon (see the module docstring for the convention).

    Raises:
        DatasetError: fewer than 3 points or malformed coordinates.
    """
    mask = np.zeros(shape, dtype=np.uint8)
    cv2.fillPoly(mask, [_points(exterior, f"{where} exterior")], 1, lineType=cv2.LINE_8)
    for i, hole in enumerate(interior or []):
        cv2.fillPoly(mask, [_points(hole, f"{where} interior[{i}]")], 0, lineType=cv2.LINE_8)
    return mask.astype(bool)


def paste_bitmap(mask: np.ndarray, patch: np.ndarray, origin: Any, where: str) -> None:
    """OR ``patch`` into ``mask`` with its top-left pixel at ``origin`` = [x, y], clipped."""
    try:
        x, y = (int(v) for v in origin)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: bitmap origin {origin!r} is not [x, y]") from exc
    h, w = mask.shape
    r0, c0 = max(y, 0), max(x, 0)
    r1, c1 = min(y + patch.shape[0], h), min(x + patch.shape[1], w)
    if r1 <= r0 or c1 <= c0:
        logger.warning("%s: bitmap lies outside the image; ignored", where)
        return
    mask[r0:r1, c0:c1] |= patch[r0 - y:r1 - y, c0 - x:c1 - x]


def annotation_mask(ann: dict, shape: tuple[int, int], class_names: tuple[str, ...], where: str) -> np.ndarray:
    """Union of the objects of ``class_names`` in one annotation, as a bool mask of ``shape``.

    Raises:
        DatasetError: a size different from ``shape``, or a malformed/unsupported object of the class.
    """
    size = ann.get("size") or {}
    if "height" in size and "width" in size and (size["height"], size["width"]) != shape:
        raise DatasetError(
            f"{where}: annotation size {size['width']}x{size['height']} differs from the image "
            f"size {shape[1]}x{shape[0]}"
        )
    mask = np.zeros(shape, dtype=bool)
    for i, obj in enumerate(ann.get("objects") or []):
        if not label_matches(str(obj.get("classTitle", "")), class_names):
            continue
        kind = obj.get("geometryType")
        here = f"{where}: objects[{i}]"
        if kind == "bitmap":
            bitmap = obj.get("bitmap") or {}
            if "data" not in bitmap:
                raise DatasetError(f"{here}: bitmap without data")
            try:
                patch = decode_bitmap(bitmap["data"])
            except DatasetError as exc:
                raise DatasetError(f"{here}: {exc}") from exc
            paste_bitmap(mask, patch, bitmap.get("origin", [0, 0]), here)
        elif kind == "polygon":
            points = obj.get("points") or {}
            mask |= rasterize_polygon(points.get("exterior"), points.get("interior"), shape, here)
        else:
            raise DatasetError(
                f"{here}: geometry {kind!r} of class {obj.get('classTitle')!r} is not supported "
                "(allowed: 'bitmap', 'polygon')"
            )
    return mask


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    return data


def _check_classes(meta_path: Path, class_names: tuple[str, ...]) -> None:
    titles = [str(c.get("title", "")) for c in _read_json(meta_path).get("classes") or []]
    if not any(label_matches(t, class_names) for t in titles):
        raise DatasetError(
            f"{meta_path}: no class named like {list(class_names)}; classes in the project: {titles}"
        )


def _annotation_path(image: Path) -> Path | None:
    ann_dir = image.parent.parent / "ann"
    for candidate in (ann_dir / f"{image.name}.json", ann_dir / f"{image.stem}.json"):
        if candidate.is_file():
            return candidate
    return None


def import_supervisely(
    src: str | Path,
    out: str | Path,
    config: SuperviselyImportConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> ImportResult:
    """Import a Supervisely project folder into a data set at ``out``.

    Raises:
        DatasetError: no ``meta.json`` or no class of ``class_names`` in it, no datasets,
            unmatched names or missing annotations (unless skipped), malformed objects, size
            mismatches (each message names the file).
    """
    config = config or SuperviselyImportConfig()
    src = Path(src)
    meta_path = src / "meta.json"
    if not meta_path.is_file():
        raise DatasetError(f"{src}: not a Supervisely project (no meta.json)")
    _check_classes(meta_path, config.class_names)
    datasets = sorted(p for p in src.iterdir() if (p / "img").is_dir())
    if not datasets:
        raise DatasetError(f"{src}: no dataset folders with an img/ folder")
    pattern = compile_pattern(config.pattern)

    names: list[FrameName] = []
    ann_of: dict[Path, Path] = {}
    skipped: list[Path] = []
    for dataset in datasets:
        for image in image_files(dataset / "img"):
            name = (FrameName(image, dataset.name, DEFAULT_RUN_ID, None)
                    if config.patient_from == "dataset" else parse_name(image, pattern))
            ann = _annotation_path(image)
            problem = None
            if name is None:
                problem = f"{image}: file name does not match the pattern {config.pattern!r}"
            elif ann is None:
                problem = f"{image}: no annotation {image.name}.json under {dataset / 'ann'}"
            if problem is not None:
                skip_unmatched(problem, image, skip=config.skip_unmatched, skipped=skipped)
                continue
            names.append(name)
            ann_of[image] = ann
    numbered = number_frames(names)

    empty = 0
    meta = {"source": {"importer": "supervisely", "path": str(src.resolve()),
                       "class_names": list(config.class_names)}}
    with staged_writer(out, name=config.name or src.resolve().name, meta=meta,
                       overwrite=overwrite) as writer:
        for name, index in tqdm(numbered, desc="import", unit="frame", disable=not progress):
            image = read_image_file(name.path)
            ann_path = ann_of[name.path]
            mask = annotation_mask(_read_json(ann_path), image.shape, config.class_names, str(ann_path))
            empty += not mask.any()
            writer.add(name.patient_id, name.run_id, index, image, mask,
                       spacing_mm=(config.spacing_mm, config.spacing_mm))
    if empty:
        logger.warning("%d of %d frames have no object of the class: imported with empty masks",
                       empty, len(numbered))
    patients = {n.patient_id for n, _ in numbered}
    runs = {(n.patient_id, n.run_id) for n, _ in numbered}
    notes = (f"{empty} frames without an object of the class (empty masks)",) if empty else ()
    return ImportResult(root=Path(out), frames=len(numbered), patients=len(patients),
                        runs=len(runs), skipped=tuple(skipped), notes=notes)
