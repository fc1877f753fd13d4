"""Patient, run and frame from a file name, by a configurable regular expression.

The pattern is matched with :func:`re.fullmatch` against the file *stem* (the name without its
extension). It must define the named group ``patient``; ``run`` and ``frame`` are optional:

- ``patient``: the patient id, used verbatim (``P012_0034.png`` -> ``P012``; ``12_34.png`` -> ``12``);
- ``run``: the run (cine acquisition) id; absent -> :data:`DEFAULT_RUN_ID`;
- ``frame``: the frame index within the run (decimal digits); absent -> frames of one
  (patient, run) are numbered 0, 1, ... in sorted file-name order.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tavicore.config import ConfigError
from tavidata.errors import DatasetError

logger = logging.getLogger(__name__)

#: Default pattern: optional letters, then digits as the patient (``P012``, ``12``), an optional
#: run (``run2``, ``02``) and the frame number, separated by ``_`` or ``-``:
#: ``P012_0034``, ``12_34``, ``P012_run2_0034``, ``P012-02-0034``.
DEFAULT_PATTERN = r"(?P<patient>[A-Za-z]*\d+)(?:[_-](?P<run>[A-Za-z]*\d+))??[_-](?P<frame>\d+)"
#: Run id given to frames whose name carries no run.
DEFAULT_RUN_ID = "run01"
#: File extensions read as images (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a file-name pattern and check its groups.

    Raises:
        ConfigError: the pattern is not a valid regular expression, lacks the ``patient`` group,
            or has named groups other than ``patient``, ``run``, ``frame``.
    """
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"pattern {pattern!r}: not a valid regular expression: {exc}") from exc
    groups = set(compiled.groupindex)
    if "patient" not in groups:
        raise ConfigError(f"pattern {pattern!r}: needs a named group (?P<patient>...)")
    extra = groups - {"patient", "run", "frame"}
    if extra:
        raise ConfigError(
            f"pattern {pattern!r}: unknown named groups {sorted(extra)}; allowed: patient, run, frame"
        )
    return compiled


@dataclass(frozen=True)
class FrameName:
    """Identity of one frame parsed from its file name (``frame`` None: number by order)."""

    path: Path
    patient_id: str
    run_id: str
    frame: int | None


def parse_name(path: Path, pattern: re.Pattern[str]) -> FrameName | None:
    """Parse ``path``'s stem with ``pattern``; None when it does not match or ``patient`` is empty."""
    match = pattern.fullmatch(path.stem)
    if match is None or not match.group("patient"):
        return None
    groups = match.groupdict()
    frame = groups.get("frame")
    return FrameName(
        path=path,
        patient_id=match.group("patient"),
        run_id=groups.get("run") or DEFAULT_RUN_ID,
        frame=int(frame) if frame else None,
    )


def number_frames(names: Iterable[FrameName]) -> list[tuple[FrameName, int]]:
    """Give every parsed name its frame index, sorted by (patient, run, index).

    Names without a ``frame`` group are numbered 0, 1, ... in sorted path order within their
    (patient, run).

    Raises:
        DatasetError: two files claim the same (patient, run, frame); the message names both.
    """
    by_run: dict[tuple[str, str], list[FrameName]] = {}
    for name in names:
        by_run.setdefault((name.patient_id, name.run_id), []).append(name)
    out: list[tuple[FrameName, int]] = []
    for key in sorted(by_run):
        seen: dict[int, Path] = {}
        run = sorted(by_run[key], key=lambda n: n.path.as_posix())
        for position, name in enumerate(run):
            index = name.frame if name.frame is not None else position
            if index in seen:
                raise DatasetError(
                    f"{name.path}: patient {key[0]!r}, run {key[1]!r}, frame {index} is also "
                    f"given by {seen[index]}"
                )
            seen[index] = name.path
            out.append((name, index))
    out.sort(key=lambda item: (item[0].patient_id, item[0].run_id, item[1]))
    return out


def image_files(folder: Path) -> list[Path]:
    """Image files (by :data:`IMAGE_SUFFIXES`) under ``folder``, recursively, sorted."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def skip_unmatched(problem: str, path: Path, *, skip: bool, skipped: list[Path], what: str = "files") -> None:
    """An input that cannot be imported (``problem`` names it): with ``skip`` (``--skip-unmatched``)
    it is logged and ``path`` added to ``skipped``.

    Raises:
        DatasetError: ``problem``, unless ``skip``.
    """
    if not skip:
        raise DatasetError(f"{problem} (use --skip-unmatched to skip such {what})")
    logger.warning("skipped %s", problem)
    skipped.append(path)


def normalise_label(label: str) -> str:
    """A class/segment label for comparison: lower case, ``_``/``-`` as spaces, single spaces."""
    return " ".join(label.lower().replace("_", " ").replace("-", " ").split())


def label_matches(label: str, wanted: Sequence[str]) -> bool:
    """Whether ``label`` equals one of ``wanted`` after :func:`normalise_label`."""
    return normalise_label(label) in {normalise_label(w) for w in wanted}
