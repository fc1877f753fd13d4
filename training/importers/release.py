"""Importer for the authors' release layout: an images folder and a masks folder.

Layout (folder names configurable)::

    SRC/images/P012_0034.png      frame (8-bit; PNG, JPG, BMP or TIFF; gray or colour)
    SRC/masks/P012_0034.png       its mask: same relative path, same stem (any image extension)

Patient, run and frame come from the image file name (:mod:`.naming`); mask encodings are
described in :mod:`.masks`. Every frame gets the configured pixel spacing (default: the paper's
0.390625 mm/px). An image whose name does not match the pattern, or that has no mask, is an
error naming its path, or is skipped with a warning when ``skip_unmatched`` is set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from tavicore.config import setting
from tavidata.errors import DatasetError
from tavidata.format import PAPER_PIXEL_SPACING_MM
from training.importers.masks import read_image_file, read_mask_file
from training.importers.naming import (
    DEFAULT_PATTERN,
    IMAGE_SUFFIXES,
    FrameName,
    compile_pattern,
    image_files,
    number_frames,
    parse_name,
    skip_unmatched,
)
from training.importers.output import ImportResult, staged_writer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReleaseImportConfig:
    """Options of :func:`import_release` (YAML section ``release`` of an import config)."""

    images_dir: str = setting("images", doc="folder of frames, relative to the source")
    masks_dir: str = setting("masks", doc="folder of masks, relative to the source")
    pattern: str = setting(DEFAULT_PATTERN, doc="regex on the file stem: groups patient, run?, frame?")
    skip_unmatched: bool = setting(False, doc="skip (warn) unmatched names / images without mask")
    spacing_mm: float = setting(PAPER_PIXEL_SPACING_MM, gt=0.0, le=10.0, doc="pixel spacing (mm)")
    mask_color: tuple[int, int, int] | None = setting(
        None, ge=0, le=255, doc="RGB colour of the class in colour masks (None: any colour)"
    )
    name: str = setting("", doc="data-set name (default: the source folder name)")

    def __post_init__(self) -> None:
        compile_pattern(self.pattern)


def _find_mask(image: Path, images_root: Path, masks_root: Path) -> Path | None:
    rel = image.relative_to(images_root)
    same = masks_root / rel
    if same.is_file():
        return same
    for suffix in IMAGE_SUFFIXES:
        for candidate in (same.with_suffix(suffix), same.with_suffix(suffix.upper())):
            if candidate.is_file():
                return candidate
    return None


def import_release(
    src: str | Path,
    out: str | Path,
    config: ReleaseImportConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> ImportResult:
    """Import an images/masks release folder into a data set at ``out``.

    Args:
        src: Source folder holding ``config.images_dir`` and ``config.masks_dir``.
        out: Data-set folder to create (replaced only with ``overwrite``).
        config: Options; defaults match the authors' layout.
        overwrite: Replace an existing data set at ``out``.
        progress: Show a progress bar on stderr.

    Returns:
        The :class:`ImportResult`.

    Raises:
        DatasetError: missing folders, unmatched names or missing masks (unless skipped),
            unreadable files, size mismatches or duplicate frames (each message names the path).
    """
    config = config or ReleaseImportConfig()
    src = Path(src)
    images_root, masks_root = src / config.images_dir, src / config.masks_dir
    for folder in (images_root, masks_root):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: folder not found (expected {config.images_dir}/ and "
                               f"{config.masks_dir}/ under {src})")
    pattern = compile_pattern(config.pattern)
    images = image_files(images_root)
    if not images:
        raise DatasetError(f"{images_root}: no image files ({', '.join(IMAGE_SUFFIXES)})")

    parsed: list[tuple[FrameName, Path]] = []
    skipped: list[Path] = []
    for image in images:
        name = parse_name(image, pattern)
        mask = _find_mask(image, images_root, masks_root)
        problem = None
        if name is None:
            problem = f"{image}: file name does not match the pattern {config.pattern!r}"
        elif mask is None:
            problem = f"{image}: no mask with the same name under {masks_root}"
        if problem is not None:
            skip_unmatched(problem, image, skip=config.skip_unmatched, skipped=skipped)
            continue
        parsed.append((name, mask))

    masks_of = {name.path: mask for name, mask in parsed}
    numbered = number_frames(name for name, _ in parsed)
    meta = {"source": {"importer": "release", "path": str(src.resolve()), "pattern": config.pattern}}
    with staged_writer(out, name=config.name or src.resolve().name, meta=meta,
                       overwrite=overwrite) as writer:
        for name, index in tqdm(numbered, desc="import", unit="frame", disable=not progress):
            image = read_image_file(name.path)
            mask_path = masks_of[name.path]
            mask = read_mask_file(mask_path, color=config.mask_color)
            if mask.shape != image.shape:
                raise DatasetError(
                    f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image "
                    f"{name.path} size {image.shape[1]}x{image.shape[0]}"
                )
            writer.add(name.patient_id, name.run_id, index, image, mask,
                       spacing_mm=(config.spacing_mm, config.spacing_mm))
        patients = {n.patient_id for n, _ in numbered}
        runs = {(n.patient_id, n.run_id) for n, _ in numbered}
    logger.info("imported %d frames of %d patients (%d skipped)", len(numbered), len(patients), len(skipped))
    return ImportResult(root=Path(out), frames=len(numbered), patients=len(patients),
                        runs=len(runs), skipped=tuple(skipped))
