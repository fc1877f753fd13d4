"""The journal: state transitions, atomic commits, recovery after an interruption."""

from __future__ import annotations

import pytest

from dicom_node.errors import JournalError
from dicom_node.journal import Journal, NewInstance, NewOutput


def _new(uid: str = "1.2.3.4", file: str = "a.dcm") -> NewInstance:
    return NewInstance(file=file, sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.12.1",
                       study_instance_uid="1.2.3", series_instance_uid="1.2.3.1",
                       transfer_syntax_uid="1.2.840.10008.1.2.1", kind="image", calling_aet="ANGIO",
                       size_bytes=10, frames=2)


def test_life_cycle_and_atomic_outputs(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    assert j._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert j._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    row_id, superseded = j.record_received(_new())
    assert superseded == []
    assert j.received_ids() == [row_id]
    claimed = j.claim(row_id)
    assert claimed is not None and claimed.state == "processing" and claimed.attempts == 1
    assert j.claim(row_id) is None  # a second worker does not get it
    outs = [NewOutput("pacs", "seg", "o.dcm", "9.9.1", "1.2.840.10008.5.1.4.1.1.66.4")]
    assert j.finish(row_id, "done", detail="ok", outputs=outs) == []
    assert j.get_instance(row_id).state == "done"
    due = j.due_outputs(now=1e12)
    assert [(r.destination, r.sop_instance_uid, r.state) for r in due] == [("pacs", "9.9.1", "pending")]
    j.mark_attempt_failed(due[0].id, status="association-failed", detail="down", next_attempt_at=1e11)
    assert j.due_outputs(now=1e10) == []
    assert j.next_attempt_time() == 1e11
    j.mark_delivered(due[0].id, "0x0000")
    assert j.outbox_counts() == {"pacs": {"pending": 0, "delivered": 1, "failed": 0, "superseded": 0}}


def test_failed_commit_leaves_nothing_half_done(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    row_id, _ = j.record_received(_new())
    j.claim(row_id)
    good = NewOutput("pacs", "seg", "o.dcm", "9.9.1", "1.2")
    bad = NewOutput("pacs", "sr", None, "9.9.2", "1.2")  # file NOT NULL -> the commit fails
    with pytest.raises(JournalError):
        j.finish(row_id, "done", outputs=[good, bad])
    assert j.get_instance(row_id).state == "processing"
    assert j.outputs() == []


def test_resend_supersedes_waiting_reception_and_pending_output(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    first, _ = j.record_received(_new(file="a.dcm"))
    second, superseded = j.record_received(_new(file="b.dcm"))
    assert superseded == ["a.dcm"]
    assert j.get_instance(first).state == "superseded"
    assert j.claim(first) is None
    j.claim(second)
    j.finish(second, "done", outputs=[NewOutput("pacs", "seg", "o1.dcm", "9.9.1", "1.2")])
    third, _ = j.record_received(_new(file="c.dcm"))
    j.claim(third)
    stale = j.finish(third, "done", outputs=[NewOutput("pacs", "seg", "o2.dcm", "9.9.1", "1.2")])
    assert stale == ["o1.dcm"]
    states = sorted((r.file, r.state) for r in j.outputs())
    assert states == [("o1.dcm", "superseded"), ("o2.dcm", "pending")]


def test_recover_interrupted_requeues_then_fails_after_repeats(tmp_path):
    path = tmp_path / "j.sqlite"
    j = Journal(path)
    row_id, _ = j.record_received(_new())
    j.claim(row_id)
    j.close()
    j = Journal(path)  # "restart"
    assert j.recover_interrupted(max_attempts=2) == ([row_id], [])
    assert j.get_instance(row_id).state == "received"
    j.claim(row_id)  # attempt 2, interrupted again
    assert j.recover_interrupted(max_attempts=2) == ([], [row_id])
    row = j.get_instance(row_id)
    assert row.state == "failed" and "interrupted 2 times" in row.detail


def test_readonly_reader_sees_writer_and_cannot_write(tmp_path):
    path = tmp_path / "j.sqlite"
    w = Journal(path)
    w.record_received(_new())
    r = Journal(path, readonly=True)
    assert r.instance_counts()["received"] == 1
    w.record_received(_new(uid="1.2.3.5", file="b.dcm"))
    assert r.instance_counts()["received"] == 2
    with pytest.raises(JournalError, match="read-only"):
        r.record_received(_new(uid="1.2.3.6"))
    with pytest.raises(JournalError, match="no journal"):
        Journal(tmp_path / "missing.sqlite", readonly=True)
