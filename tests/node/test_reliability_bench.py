"""The reliability bench (``python -m bench.reliability``).

* ``--quick --only bad,crash,outage,load`` against real peers: its summary lines show no crash, nothing lost, nothing
  duplicated, every bad input answered acceptably AND every bad input whose status is predicted
  answered with that status (a count that a lenient node would fail, unlike "acceptable").
* The predictions themselves (:func:`bench.reliability.mutants.predicted_answers`) checked against
  the node's own C-STORE acceptance (:meth:`dicom_node.spool.Spool.accept`), without a network, so a
  prediction that drifts from the node's contract fails here and not only in the bench.
"""

from __future__ import annotations

import random
import re
import struct
import subprocess
import sys
from collections import Counter

import pytest
from pydicom.errors import InvalidDicomError
from pynetdicom.dsutils import split_dataset

from bench.reliability.mutants import (
    CONTEXT_REFUSED,
    PIXEL_ONLY,
    SUCCESS,
    UNCHECKED_ATTRIBUTES,
    make_mutants,
    synthetic_bases,
)
from dicom_node.config import LimitsConfig
from dicom_node.errors import InstanceRejected
from dicom_node.journal import Journal
from dicom_node.sop import TRANSFER_SYNTAXES
from dicom_node.spool import Spool
from tests.conftest import REPO, require_tool


def _number(pattern: str, line: str) -> int:
    match = re.search(pattern, line)
    assert match, f"{pattern!r} not in the summary line: {line}"
    return int(match.group(1))


def _file_meta(path, data: bytes):
    """The File Meta the bench's SCU reads from these bytes; None when it cannot (then it sends raw)."""
    path.write_bytes(data)
    try:
        meta, _ = split_dataset(path)
        return meta if "TransferSyntaxUID" in meta and "MediaStorageSOPInstanceUID" in meta else None
    except (InvalidDicomError, KeyError, ValueError, TypeError, AttributeError, EOFError, struct.error,
            OverflowError, NotImplementedError, RecursionError):
        return None


def _node_answer(spool: Spool, path, meta) -> str:
    """What the node answers for the file at ``path`` sent as the bench's SCU sends it."""
    ts = str(meta["TransferSyntaxUID"].value)
    if ts not in TRANSFER_SYNTAXES:
        return CONTEXT_REFUSED
    try:
        spool.accept(path, calling_aet="ANGIO", sop_class_uid=str(meta["MediaStorageSOPClassUID"].value),
                     sop_instance_uid=str(meta["MediaStorageSOPInstanceUID"].value), transfer_syntax_uid=ts)
    except InstanceRejected as exc:
        return f"0x{exc.status:04X}"
    return SUCCESS


def test_predicted_answers_match_the_node_acceptance(tmp_path):
    spool = Spool(tmp_path / "spool", Journal(tmp_path / "journal.sqlite"), LimitsConfig(min_free_bytes=0),
                  keep_other=True)
    spool.prepare(keep_processed=False)
    checked: Counter = Counter()
    for mutant in make_mutants(240, synthetic_bases(), random.Random("predictions-0")):
        if mutant.expected is None:
            continue
        path = spool.incoming_dir / "mutant.dcm"
        meta = _file_meta(path, mutant.data)
        if meta is None:  # sent raw by the bench: only unreadable files are, and they are predicted 0xC210
            assert mutant.expected == {"0xC210"}, f"{mutant.name} ({mutant.description}) has no readable File Meta"
            continue
        answer = _node_answer(spool, path, meta)
        assert answer in mutant.expected, (
            f"{mutant.name} ({mutant.description}): the node answers {answer}, predicted {sorted(mutant.expected)}")
        checked[answer] += 1
    # every kind of prediction was exercised, not only Success
    assert checked[SUCCESS] >= 50 and checked["0xA900"] >= 5 and checked["0xA701"] + checked["0xA702"] >= 2, checked
    assert checked[CONTEXT_REFUSED] >= 1, checked


def test_families_that_know_what_they_broke_predict_a_status():
    mutants = list(make_mutants(120, synthetic_bases(), random.Random("predictions-1")))
    for m in mutants:
        if m.family in PIXEL_ONLY | UNCHECKED_ATTRIBUTES:
            assert m.expected == {SUCCESS}, m.name
        if m.family in ("flip-header", "flip-anywhere", "wrong-length", "zero-span", "garbage-span"):
            assert m.expected is None, m.name  # random byte damage: no status can be predicted
    assert sum(m.expected is not None for m in mutants) >= len(mutants) // 3


@pytest.mark.slow
def test_reliability_bench_quick_shows_expected_answers_no_crash_no_loss_no_duplicate(tmp_path, samples_dir):
    require_tool("Orthanc")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.reliability", "--quick", "--only", "bad,crash,outage,load",
         "--workdir", str(tmp_path / "bench")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    lines = proc.stdout.strip().splitlines()
    by_name = {line.split(":", 1)[0]: line for line in lines}
    assert sorted(by_name) == ["PACS outage", "bad inputs", "crash safety", "load"], proc.stdout + proc.stderr[-3000:]
    for line in lines:
        assert _number(r"(\d+) crashes", line) == 0, line
    bad = by_name["bad inputs"]
    sent = _number(r"(\d+) sent \(", bad)
    samples = _number(r"\((\d+) sample files", bad)
    assert sent >= 40
    assert _number(r"acceptable answer (\d+) of", bad) == _number(r"acceptable answer \d+ of (\d+)", bad) == sent
    predicted = _number(r"expected status \d+ of (\d+)", bad)
    # the samples (Success) and at least a third of the mutants have a predicted status, and got it
    assert predicted >= samples + (sent - samples) // 3, bad
    assert _number(r"expected status (\d+) of", bad) == predicted, bad
    assert _number(r"(\d+) wrong answers", bad) == 0, bad
    assert "node answered C-ECHO after every send" in bad
    table = (tmp_path / "bench" / "bad" / "bad_inputs.tsv").read_text().splitlines()
    header = table[0].split("\t")
    rows = [dict(zip(header, row.split("\t"), strict=True)) for row in table[1:]]
    assert sum(r["expected"] != "any" for r in rows if r["outcome"] != "not-sendable") == predicted
    assert all(r["expected"] == "0x0000" and r["status"] == "0x0000" for r in rows if r["kind"] == "sample")
    for name in ("crash safety", "PACS outage", "load"):
        line = by_name[name]
        assert _number(r"(\d+) lost", line) == 0, line
        assert _number(r"(\d+) duplicates", line) == 0, line
    crash = by_name["crash safety"]
    assert _number(r"(\d+) SIGKILLs", crash) >= 1
    # every run answered Success has its output at the destination
    assert _number(r"(\d+) of \d+ outputs at the destination", crash) == _number(r"of (\d+) outputs at the", crash)
    outage = by_name["PACS outage"]
    waited = _number(r"(\d+) outputs waited", outage)
    assert waited >= 1 and _number(r"(\d+) of \d+ delivered after it came back", outage) == waited, outage
    load = by_name["load"]
    assert _number(r"(\d+) of \d+ answered Success", load) == _number(r"\d+ of (\d+) answered Success", load), load
    assert proc.returncode == 0, proc.stderr[-3000:]
