"""Patient-level splits: deterministic, frame-balanced, leakage-free, written once, tamper-proof."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tavidata.errors import SplitError
from tavidata.format import Dataset, FrameRecord
from tavidata.splits import (
    SPLITS_FILENAME,
    Fold,
    Splits,
    check_splits,
    fold_summary,
    load_splits,
    make_splits,
    save_splits,
    split_dataset,
)
from tests.dataset.synthetic import write_dataset


def fake_dataset(counts: dict[str, int], name: str = "fake") -> Dataset:
    """A Dataset in memory only (splits need the records, not the files)."""
    records = [FrameRecord(f"{p}/run01_{i:04d}", p, "run01", i, Path(f"images/{p}/{i}.png"), None)
               for p, n in counts.items() for i in range(n)]
    return Dataset(root=Path("/nonexistent"), records=records, meta={"name": name})


def random_counts(n: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    return {f"P{i:03d}": rng.randint(5, 70) for i in range(n)}


def assert_leak_free(splits: Splits, patients: set[str], val_fraction: float) -> None:
    tests = [set(f.test) for f in splits.folds]
    assert set().union(*tests) == patients
    assert sum(len(t) for t in tests) == len(patients)  # each patient in exactly one test set
    for fold in splits.folds:
        train, val, test = set(fold.train), set(fold.val), set(fold.test)
        assert not (train & val or train & test or val & test)
        assert train | val | test == patients
        assert len(val) == max(1, round(val_fraction * (len(patients) - len(test))))
        assert train


@pytest.mark.parametrize("k", [2, 3, 5])
def test_leak_free_and_balanced_over_seeds(k):
    for seed in range(8):
        counts = random_counts(23 + seed, seed)
        splits = make_splits(fake_dataset(counts), k=k, seed=seed, val_fraction=0.15)
        assert_leak_free(splits, set(counts), 0.15)
        test_frames = [sum(counts[p] for p in f.test) for f in splits.folds]
        # greedy largest-first: folds differ by at most the largest patient's frame count
        assert max(test_frames) - min(test_frames) <= max(counts.values())
        assert [f.index for f in splits.folds] == list(range(k))


def test_paper_sized_cohort_is_balanced_by_frames():
    counts = random_counts(80, 1)
    splits = make_splits(fake_dataset(counts), k=5, seed=0)
    total = sum(counts.values())
    for row in fold_summary(splits, fake_dataset(counts)):
        assert row["test_frames"] == pytest.approx(total / 5, rel=0.03)
        assert row["test_patients"] in range(14, 19)


def test_deterministic_for_a_seed_and_seed_matters():
    counts = {f"P{i}": 10 for i in range(12)}  # equal counts: the seed orders the patients
    a = make_splits(fake_dataset(counts), seed=3)
    b = make_splits(fake_dataset(dict(reversed(list(counts.items())))), seed=3)
    assert a == b  # independent of manifest order
    others = {make_splits(fake_dataset(counts), seed=s).folds for s in range(4)}
    assert len(others) > 1


def test_refuses_impossible_splits():
    with pytest.raises(SplitError, match="3 patients cannot fill 5"):
        make_splits(fake_dataset({"a": 1, "b": 1, "c": 1}), k=5)
    with pytest.raises(SplitError, match="need at least 2 folds"):
        make_splits(fake_dataset({"a": 1, "b": 1}), k=1)
    with pytest.raises(SplitError, match="val_fraction"):
        make_splits(fake_dataset({"a": 1, "b": 1, "c": 1}), k=2, val_fraction=1.0)
    with pytest.raises(SplitError, match="at least 1 for training"):
        make_splits(fake_dataset({"a": 1, "b": 1}), k=2)


def test_save_load_round_trip_and_refuse_overwrite(tmp_path):
    splits = make_splits(fake_dataset(random_counts(10, 0)), k=3, seed=7, val_fraction=0.2)
    path = save_splits(splits, tmp_path / SPLITS_FILENAME)
    assert load_splits(tmp_path) == splits  # a folder means <folder>/splits.json
    with pytest.raises(SplitError, match="already exist.*--force"):
        save_splits(splits, path)
    other = make_splits(fake_dataset(random_counts(10, 0)), k=2, seed=1)
    save_splits(other, path, overwrite=True)
    assert load_splits(path) == other


def _tamper(path: Path, edit, *, fix_checksum: bool) -> None:
    from tavidata.splits import _body, _checksum  # the file's own checksum rule

    doc = json.loads(path.read_text())
    edit(doc)
    if fix_checksum:
        folds = tuple(Fold(f["index"], tuple(f["train"]), tuple(f["val"]), tuple(f["test"]))
                      for f in doc["folds"])
        splits = Splits(doc["k"], doc["seed"], folds, doc["dataset_name"], doc["val_fraction"])
        doc["checksum"] = _checksum(_body(splits))
    path.write_text(json.dumps(doc))


def test_load_detects_tampered_and_leaky_files(tmp_path):
    splits = make_splits(fake_dataset(random_counts(10, 0)), k=3, seed=0)
    path = save_splits(splits, tmp_path / "s.json")
    victim = splits.folds[0].test[0]

    def leak(doc):
        doc["folds"][0]["train"].append(victim)

    _tamper(path, leak, fix_checksum=False)
    with pytest.raises(SplitError, match="checksum mismatch"):
        load_splits(path)
    _tamper(path, lambda doc: None, fix_checksum=True)
    with pytest.raises(SplitError, match=rf"fold 0: patients \['{victim}'\] are in both train and test"):
        load_splits(path)

    save_splits(splits, path, overwrite=True)

    def twice(doc):
        fold1 = doc["folds"][1]
        fold1["train" if victim in fold1["train"] else "val"].remove(victim)
        fold1["test"].append(victim)

    _tamper(path, twice, fix_checksum=True)
    with pytest.raises(SplitError, match=rf"'{victim}' is in the test sets of folds 0 and 1"):
        load_splits(path)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(version=2), "version 2 is not supported"),
    (lambda d: d.update(format="other"), "not a taviseg splits file"),
    (lambda d: d.update(k=4), "expected a list of 4 folds"),
    (lambda d: d["folds"][0].update(index=5), r"folds\[0\] must be an object with index 0"),
    (lambda d: d["folds"][0].update(val="P001"), r"folds\[0\].val: expected a list"),
    (lambda d: d.update(seed="x"), "seed must be an integer"),
])
def test_load_validates_structure(tmp_path, edit, message):
    path = save_splits(make_splits(fake_dataset(random_counts(6, 0)), k=3), tmp_path / "s.json")
    _tamper(path, edit, fix_checksum=False)
    with pytest.raises(SplitError, match=message):
        load_splits(path)


def test_load_missing_or_malformed_file(tmp_path):
    with pytest.raises(SplitError, match="no splits file"):
        load_splits(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SplitError, match="unreadable"):
        load_splits(tmp_path / "bad.json")


def test_check_splits_against_the_data_set():
    counts = random_counts(8, 2)
    splits = make_splits(fake_dataset(counts), k=2)
    check_splits(splits, fake_dataset(counts))
    with pytest.raises(SplitError, match=r"data-set patients \['P999'\] are in no fold"):
        check_splits(splits, fake_dataset({**counts, "P999": 3}))
    fewer = dict(counts)
    gone = fewer.pop("P000")
    assert gone
    with pytest.raises(SplitError, match=r"patients \['P000'\] of the split are not in the data set"):
        check_splits(splits, fake_dataset(fewer))
    with pytest.raises(SplitError, match="made for data set 'fake', not 'other'"):
        check_splits(splits, fake_dataset(counts, name="other"))


def test_split_dataset_writes_once(tmp_path):
    root = write_dataset(tmp_path / "ds", {f"P{i}": i + 1 for i in range(6)})
    splits, path = split_dataset(root, k=3, seed=0)
    assert path == root / SPLITS_FILENAME and load_splits(path) == splits
    with pytest.raises(SplitError, match="already exist"):
        split_dataset(root, k=3, seed=1)
    again, _ = split_dataset(root, k=2, seed=1, force=True)
    assert load_splits(path) == again and again.k == 2
