"""Patient-level k-fold splits, made once, seeded, and saved beside the data set.

Method (:func:`make_splits`): patients are sorted by frame count, largest first (equal counts in
a seeded pseudo-random order: SHA-256 of seed and patient id, identical on every platform and
Python version), and each is given to the test set of the fold with the fewest frames so far
(ties: fewest patients, then lowest index). So every patient is in exactly one test set and test
sets hold near-equal frame counts; with all frame counts distinct the test sets do not depend on
the seed. In each fold, the validation set is ``max(1, round(val_fraction * n))`` of the ``n``
non-test patients, drawn in a seeded order; the rest train.

The split is written once to ``<root>/splits.json`` (:data:`SPLITS_FILENAME`); writing over an
existing file needs ``overwrite`` (``--force``) so every later step reads the same folds. The
file carries a checksum: :func:`load_splits` refuses a file edited by hand or leaking a patient.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tavicore.fileio import write_text_atomic
from tavidata.errors import SplitError
from tavidata.format import Dataset

logger = logging.getLogger(__name__)

SPLITS_FILENAME = "splits.json"
SPLITS_FORMAT = "taviseg-splits"
SPLITS_VERSION = 1
SIDES = ("train", "val", "test")


@dataclass(frozen=True)
class Fold:
    """One fold: patient ids for training, validation (model selection) and test."""

    index: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


@dataclass(frozen=True)
class Splits:
    """The k folds of one data set (``val_fraction`` recorded for reproduction)."""

    k: int
    seed: int
    folds: tuple[Fold, ...]
    dataset_name: str
    val_fraction: float = 0.15

    def fold(self, index: int) -> Fold:
        """The fold with ``index``; raises SplitError listing the valid indices."""
        for fold in self.folds:
            if fold.index == index:
                return fold
        raise SplitError(f"fold {index} does not exist; valid folds: {[f.index for f in self.folds]}")

    @property
    def patients(self) -> tuple[str, ...]:
        """Every patient of the split (the union of the test sets), sorted."""
        return tuple(sorted(p for f in self.folds for p in f.test))


def _seeded_key(seed: int, salt: str, patient: str) -> str:
    return hashlib.sha256(f"{seed}\x00{salt}\x00{patient}".encode()).hexdigest()


def make_splits(dataset: Dataset, k: int = 5, seed: int = 0, val_fraction: float = 0.15) -> Splits:
    """Make frame-balanced, seeded, patient-level folds (see the module docstring).

    Raises:
        SplitError: ``k`` < 2, fewer patients than ``k``, ``val_fraction`` outside [0, 1), or too
            few non-test patients to leave at least one for validation and one for training.
    """
    if k < 2:
        raise SplitError(f"k={k}: need at least 2 folds")
    if not 0.0 <= val_fraction < 1.0:
        raise SplitError(f"val_fraction={val_fraction}: must be in [0, 1)")
    counts = dataset.frame_counts()
    patients = sorted(counts)
    if len(patients) < k:
        raise SplitError(f"{len(patients)} patients cannot fill {k} test sets (need >= {k})")
    order = sorted(patients, key=lambda p: (-counts[p], _seeded_key(seed, "order", p)))
    frames = [0] * k
    tests: list[list[str]] = [[] for _ in range(k)]
    for patient in order:
        i = min(range(k), key=lambda j: (frames[j], len(tests[j]), j))
        tests[i].append(patient)
        frames[i] += counts[patient]
    folds = []
    for i, test in enumerate(tests):
        rest = [p for p in patients if p not in set(test)]
        n_val = max(1, round(val_fraction * len(rest)))
        if n_val >= len(rest):
            raise SplitError(
                f"fold {i}: {len(rest)} non-test patients cannot give {n_val} for validation and "
                "at least 1 for training (use more patients, fewer folds or a smaller val_fraction)"
            )
        val = sorted(rest, key=lambda p: _seeded_key(seed, f"val{i}", p))[:n_val]
        folds.append(Fold(i, tuple(sorted(set(rest) - set(val))), tuple(sorted(val)), tuple(sorted(test))))
    splits = Splits(k=k, seed=seed, folds=tuple(folds), dataset_name=str(dataset.meta.get("name", "")),
                    val_fraction=val_fraction)
    logger.info("made %d folds of %d patients; test frames per fold: %s", k, len(patients), frames)
    return splits


def validate_folds(splits: Splits) -> None:
    """Check the folds on their own: sides disjoint and non-empty, each patient in one test set.

    Raises:
        SplitError: naming the fold and the patients on both sides or in several test sets.
    """
    if len(splits.folds) != splits.k:
        raise SplitError(f"k={splits.k} but {len(splits.folds)} folds are listed")
    everyone = set(splits.patients)
    listed = {p for f in splits.folds for side in SIDES for p in getattr(f, side)}
    if listed - everyone:
        raise SplitError(f"patients {sorted(listed - everyone)} are in no test set")
    seen_in_test: dict[str, int] = {}
    for fold in splits.folds:
        for side in SIDES:
            values = getattr(fold, side)
            if not values:
                raise SplitError(f"fold {fold.index}: the {side} set is empty")
            if len(set(values)) != len(values):
                raise SplitError(f"fold {fold.index}: a patient is listed twice in {side}")
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            both = set(getattr(fold, a)) & set(getattr(fold, b))
            if both:
                raise SplitError(f"fold {fold.index}: patients {sorted(both)} are in both {a} and {b}")
        for patient in fold.test:
            if patient in seen_in_test:
                raise SplitError(
                    f"patient {patient!r} is in the test sets of folds {seen_in_test[patient]} and {fold.index}"
                )
            seen_in_test[patient] = fold.index
        missing = everyone - set(fold.train) - set(fold.val) - set(fold.test)
        if missing:
            raise SplitError(f"fold {fold.index}: patients {sorted(missing)} are on no side")


def check_splits(splits: Splits, dataset: Dataset) -> None:
    """Prove that ``splits`` fits ``dataset``: no leakage, no unknown or forgotten patient.

    Raises:
        SplitError: see :func:`validate_folds`; also patients unknown to the data set, data-set
            patients absent from the split, or another data-set name.
    """
    validate_folds(splits)
    name = str(dataset.meta.get("name", ""))
    if splits.dataset_name != name:
        raise SplitError(f"splits were made for data set {splits.dataset_name!r}, not {name!r}")
    in_split, in_data = set(splits.patients), set(dataset.patients)
    unknown = sorted(in_split - in_data)
    if unknown:
        raise SplitError(f"patients {unknown} of the split are not in the data set {dataset.root}")
    absent = sorted(in_data - in_split)
    if absent:
        raise SplitError(f"data-set patients {absent} are in no fold (the data set changed after splitting?)")


def _body(splits: Splits) -> dict[str, Any]:
    return {
        "dataset_name": splits.dataset_name,
        "k": splits.k,
        "seed": splits.seed,
        "val_fraction": splits.val_fraction,
        "folds": [{"index": f.index, **{s: list(getattr(f, s)) for s in SIDES}} for f in splits.folds],
    }


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    return path / SPLITS_FILENAME if path.is_dir() else path


def save_splits(splits: Splits, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``splits`` as JSON to ``path`` (a file, or a data-set folder); returns the file.

    Raises:
        SplitError: the folds are invalid, or the file exists and ``overwrite`` is false.
    """
    validate_folds(splits)
    path = _resolve(path)
    if path.exists() and not overwrite:
        raise SplitError(
            f"{path}: splits already exist; they are written once so that every later step reads "
            "the same folds (use --force to replace them)"
        )
    body = _body(splits)
    doc = {"format": SPLITS_FORMAT, "version": SPLITS_VERSION, **body,
           "patients": len(splits.patients), "checksum": _checksum(body)}
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
    logger.info("wrote %s (%d folds)", path, splits.k)
    return path


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SplitError(f"{where}: expected a list of patient ids")
    return tuple(value)


def load_splits(path: str | Path) -> Splits:
    """Read and validate a splits file (or ``<folder>/splits.json``).

    Raises:
        SplitError: missing/unreadable file, other format or version, malformed fields, a
            checksum mismatch (edited by hand), or leaking folds (:func:`validate_folds`).
    """
    path = _resolve(path)
    if not path.is_file():
        raise SplitError(f"{path}: no splits file (run `taviseg dataset split` first)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SplitError(f"{path}: unreadable splits file: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != SPLITS_FORMAT:
        raise SplitError(f"{path}: not a taviseg splits file (format must be {SPLITS_FORMAT!r})")
    if doc.get("version") != SPLITS_VERSION:
        raise SplitError(
            f"{path}: splits version {doc.get('version')!r} is not supported (this taviseg reads "
            f"version {SPLITS_VERSION})"
        )
    k, seed, frac = doc.get("k"), doc.get("seed"), doc.get("val_fraction")
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise SplitError(f"{path}: k must be an integer >= 2, got {k!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SplitError(f"{path}: seed must be an integer, got {seed!r}")
    if not isinstance(frac, (int, float)) or isinstance(frac, bool):
        raise SplitError(f"{path}: val_fraction must be a number, got {frac!r}")
    if not isinstance(doc.get("dataset_name"), str):
        raise SplitError(f"{path}: dataset_name must be a string")
    raw_folds = doc.get("folds")
    if not isinstance(raw_folds, list) or len(raw_folds) != k:
        raise SplitError(f"{path}: expected a list of {k} folds")
    folds = []
    for i, raw in enumerate(raw_folds):
        if not isinstance(raw, dict) or raw.get("index") != i:
            raise SplitError(f"{path}: folds[{i}] must be an object with index {i}")
        folds.append(Fold(i, *(_strings(raw.get(s), f"{path}: folds[{i}].{s}") for s in SIDES)))
    splits = Splits(k=k, seed=seed, folds=tuple(folds), dataset_name=doc["dataset_name"],
                    val_fraction=float(frac))
    if doc.get("checksum") != _checksum(_body(splits)):
        raise SplitError(
            f"{path}: checksum mismatch: the file was changed after it was written; re-create it "
            "with `taviseg dataset split --force`"
        )
    try:
        validate_folds(splits)
    except SplitError as exc:
        raise SplitError(f"{path}: {exc}") from exc
    return splits


def split_dataset(root: str | Path, *, k: int = 5, seed: int = 0, val_fraction: float = 0.15,
                  force: bool = False) -> tuple[Splits, Path]:
    """Make, check and save the splits of the data set at ``root``.

    Raises:
        SplitError: splits exist and ``force`` is false, or see :func:`make_splits`.
        DatasetError: ``root`` is not a data set.
    """
    dataset = Dataset.load(root)
    target = Path(root) / SPLITS_FILENAME
    if target.exists() and not force:
        raise SplitError(
            f"{target}: splits already exist; they are written once so that every later step "
            "reads the same folds (use --force to replace them)"
        )
    splits = make_splits(dataset, k=k, seed=seed, val_fraction=val_fraction)
    check_splits(splits, dataset)
    return splits, save_splits(splits, target, overwrite=force)


def fold_summary(splits: Splits, dataset: Dataset) -> list[dict[str, Any]]:
    """Per fold: patients and frames on each side, and the test share of frames (percent)."""
    counts = dataset.frame_counts()
    rows = []
    for fold in splits.folds:
        row: dict[str, Any] = {"fold": fold.index}
        for side in SIDES:
            row[f"{side}_patients"] = len(getattr(fold, side))
            row[f"{side}_frames"] = sum(counts.get(p, 0) for p in getattr(fold, side))
        total = sum(row[f"{s}_frames"] for s in SIDES)
        row["test_frames_pct"] = 100.0 * row["test_frames"] / total if total else 0.0
        rows.append(row)
    return rows
