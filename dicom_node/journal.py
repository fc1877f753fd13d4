"""The node's durable state: a small SQLite journal (WAL, ``synchronous=FULL``).

Two tables:

``instances``: one row per reception. States::

    received -> processing -> done | failed | skipped
    received -> superseded          (the same SOP Instance UID arrived again before processing)
    kept                            (non-image object stored, never segmented)

``outbox``: one row per output object and destination. States::

    pending -> delivered | failed (given up, reason recorded) | superseded

A worker commits its outputs and the instance's ``done`` state in ONE transaction, so after a
crash an instance is either still ``received``/``processing`` (processed again, its outputs were
never committed) or ``done`` with all its outbox rows: nothing is lost and nothing duplicated.
Every method takes the connection lock; the connection is shared by the node's threads.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dicom_node.errors import JournalError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    file TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    calling_aet TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    frames INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    detail TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS instances_state ON instances(state);
CREATE INDEX IF NOT EXISTS instances_uid ON instances(sop_instance_uid);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id INTEGER NOT NULL REFERENCES instances(id),
    destination TEXT NOT NULL,
    kind TEXT NOT NULL,
    file TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    first_attempt_at REAL,
    delivered_at REAL,
    last_status TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_uid ON outbox(sop_instance_uid, destination);
"""

#: Detail of a ``received`` run whose outputs could not be written (retried with back-off).
DEFERRED_PREFIX = "waiting for disk space"
#: Detail of a failed run put back in the queue by ``taviseg requeue``.
REQUEUED = "requeued"

INSTANCE_STATES = ("received", "processing", "done", "failed", "skipped", "superseded", "kept")
OUTBOX_STATES = ("pending", "delivered", "failed", "superseded")


@dataclass(frozen=True)
class NewInstance:
    """What the SCP records for a reception (all values already validated)."""

    file: str
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    kind: str
    calling_aet: str
    size_bytes: int
    frames: int


@dataclass(frozen=True)
class InstanceRow(NewInstance):
    """One row of ``instances``: the reception as recorded (the fields of :class:`NewInstance`),
    its row id and where its processing stands."""

    id: int
    state: str
    attempts: int
    detail: str
    received_at: float
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True)
class NewOutput:
    """An output object to deliver to one destination (file already durable in the outbox)."""

    destination: str
    kind: str
    file: str
    sop_instance_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class OutboxRow:
    """One row of ``outbox``."""

    id: int
    instance_id: int
    destination: str
    kind: str
    file: str
    sop_instance_uid: str
    sop_class_uid: str
    state: str
    attempts: int
    created_at: float
    next_attempt_at: float
    first_attempt_at: float | None
    delivered_at: float | None
    last_status: str
    detail: str


class Journal:
    """Thread-safe access to the journal file.

    Args:
        path: SQLite file (created with its folder when missing, unless ``readonly``).
        readonly: Open for reading only (``taviseg status`` while the node runs).

    Raises:
        JournalError: the file cannot be opened or has another schema version.
    """

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        try:
            if readonly:
                if not self.path.is_file():
                    raise JournalError(f"{self.path}: no journal here (has the node run with this configuration?)")
                self._db = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=10
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(
                    str(self.path), check_same_thread=False, timeout=30, isolation_level=None
                )
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("PRAGMA foreign_keys=ON")
                self._db.executescript(_SCHEMA)
                self._check_version()
            self._db.row_factory = sqlite3.Row
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot open the journal: {exc}") from exc

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO meta(key, value) VALUES('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(row[0]) != SCHEMA_VERSION:
            raise JournalError(
                f"{self.path}: journal schema version {row[0]}, this node uses {SCHEMA_VERSION}"
            )

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back on error."""
        if self.readonly:
            raise JournalError(f"{self.path}: opened read-only")
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise JournalError(f"{self.path}: journal write failed: {exc}") from exc

    def _query(self, sql: str, args: Iterable[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, tuple(args)).fetchall()
            except sqlite3.Error as exc:
                raise JournalError(f"{self.path}: journal read failed: {exc}") from exc

    # ---- instances --------------------------------------------------------------------------

    def record_received(self, new: NewInstance, *, state: str = "received") -> tuple[int, list[str]]:
        """Journal a reception; earlier unprocessed receptions of the same UID are superseded.

        Args:
            new: The stored instance.
            state: ``"received"`` (queued for processing) or ``"kept"`` (not segmented).

        Returns:
            (row id, spool file names of superseded receptions, which the caller may delete).

        Raises:
            JournalError: the row could not be committed.
        """
        if state not in ("received", "kept"):
            raise JournalError(f"record_received: state {state!r}; allowed 'received', 'kept'")
        now = time.time()
        with self._tx() as db:
            old = db.execute(
                "SELECT id, file FROM instances WHERE sop_instance_uid=? AND state IN ('received','kept')",
                (new.sop_instance_uid,),
            ).fetchall()
            if old:
                db.executemany(
                    "UPDATE instances SET state='superseded', finished_at=?, detail='re-sent' WHERE id=?",
                    [(now, r["id"]) for r in old],
                )
            cur = db.execute(
                "INSERT INTO instances(file, sop_instance_uid, sop_class_uid, study_instance_uid,"
                " series_instance_uid, transfer_syntax_uid, kind, calling_aet, size_bytes, frames,"
                " state, received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (new.file, new.sop_instance_uid, new.sop_class_uid, new.study_instance_uid,
                 new.series_instance_uid, new.transfer_syntax_uid, new.kind, new.calling_aet,
                 new.size_bytes, new.frames, state, now),
            )
            return int(cur.lastrowid), [r["file"] for r in old]

    def get_instance(self, instance_id: int) -> InstanceRow | None:
        """The row of ``instance_id`` (None when unknown)."""
        rows = self._query("SELECT * FROM instances WHERE id=?", (instance_id,))
        return InstanceRow(**dict(rows[0])) if rows else None

    def claim(self, instance_id: int) -> InstanceRow | None:
        """Move a ``received`` instance to ``processing`` (one worker wins); None otherwise."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE instances SET state='processing', attempts=attempts+1, started_at=?"
                " WHERE id=? AND state='received'",
                (time.time(), instance_id),
            )
            if cur.rowcount != 1:
                return None
            row = db.execute("SELECT * FROM instances WHERE id=?", (instance_id,)).fetchone()
        return InstanceRow(**dict(row))

    def finish(
        self,
        instance_id: int,
        state: str,
        *,
        detail: str = "",
        outputs: Iterable[NewOutput] = (),
    ) -> list[str]:
        """Commit a processing result: outputs queued and the instance's final state, atomically.

        Pending outbox rows for the same output UID and destination (an earlier reception of the
        same run) are superseded: the new object replaces them.

        Returns:
            Outbox file names of superseded rows no longer referenced (the caller may delete).

        Raises:
            JournalError: unknown state or the commit failed.
        """
        if state not in ("done", "failed", "skipped", "received"):
            raise JournalError(f"finish: state {state!r}; allowed done, failed, skipped, received")
        now = time.time()
        stale: list[str] = []
        with self._tx() as db:
            for out in outputs:
                old = db.execute(
                    "SELECT id, file FROM outbox WHERE sop_instance_uid=? AND destination=?"
                    " AND state='pending'",
                    (out.sop_instance_uid, out.destination),
                ).fetchall()
                for r in old:
                    db.execute(
                        "UPDATE outbox SET state='superseded', detail='replaced by a newer reception'"
                        " WHERE id=?",
                        (r["id"],),
                    )
                    stale.append(r["file"])
                db.execute(
                    "INSERT INTO outbox(instance_id, destination, kind, file, sop_instance_uid,"
                    " sop_class_uid, state, created_at, next_attempt_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (instance_id, out.destination, out.kind, out.file, out.sop_instance_uid,
                     out.sop_class_uid, "pending", now, now),
                )
            db.execute(
                "UPDATE instances SET state=?, detail=?, finished_at=? WHERE id=?",
                (state, detail[:2000], None if state == "received" else now, instance_id),
            )
            still_used = {
                r[0] for r in db.execute(
                    "SELECT file FROM outbox WHERE state='pending'"
                ).fetchall()
            }
        return [f for f in stale if f not in still_used]

    def recover_interrupted(self, max_attempts: int) -> tuple[list[int], list[int]]:
        """After a restart: ``processing`` rows go back to ``received`` (or ``failed``).

        Args:
            max_attempts: An instance interrupted this many times is failed instead (a run that
                crashes the node must not crash it forever).

        Returns:
            (ids re-queued, ids failed).
        """
        with self._tx() as db:
            rows = db.execute("SELECT id, attempts FROM instances WHERE state='processing'").fetchall()
            requeued = [r["id"] for r in rows if r["attempts"] < max_attempts]
            failed = [r["id"] for r in rows if r["attempts"] >= max_attempts]
            db.executemany(
                "UPDATE instances SET state='received', started_at=NULL WHERE id=?",
                [(i,) for i in requeued],
            )
            db.executemany(
                "UPDATE instances SET state='failed', finished_at=?, detail=? WHERE id=?",
                [(time.time(), f"interrupted {max_attempts} times while processing", i) for i in failed],
            )
        return requeued, failed

    def defer(self, instance_id: int, detail: str) -> bool:
        """A ``processing`` run goes back to ``received`` to be retried later (its outputs could
        not be written: disk full). Not counted as an interruption. False when not processing."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE instances SET state='received', attempts=MAX(attempts-1, 0), started_at=NULL,"
                " detail=? WHERE id=? AND state='processing'",
                (detail[:2000], instance_id),
            )
            return cur.rowcount == 1

    def deferred(self, limit: int = 100) -> list[InstanceRow]:
        """Runs waiting to be retried (``received`` with the reason of the last try), newest first."""
        rows = self._query(
            "SELECT * FROM instances WHERE state='received' AND detail LIKE ? ORDER BY id DESC LIMIT ?",
            (DEFERRED_PREFIX + "%", limit),
        )
        return [InstanceRow(**dict(r)) for r in rows]

    def requeue(self, *, sop_instance_uids: Iterable[str] | None = None) -> tuple[list[InstanceRow], list[InstanceRow]]:
        """Failed runs back to ``received`` (processed again by the node); all failed runs when
        ``sop_instance_uids`` is None.

        Returns:
            (rows requeued, failed rows that cannot be: their spool file was already deleted).
        """
        where, params = "state='failed' AND kind='image'", ()
        if sop_instance_uids is not None:
            uids = tuple(sop_instance_uids)
            if not uids:
                return [], []
            where += f" AND sop_instance_uid IN ({','.join('?' * len(uids))})"
            params = uids
        with self._tx() as db:
            rows = [InstanceRow(**dict(r)) for r in db.execute(f"SELECT * FROM instances WHERE {where} ORDER BY id",
                                                                params).fetchall()]
            ok = [r for r in rows if r.file]
            db.executemany(
                "UPDATE instances SET state='received', attempts=0, started_at=NULL, finished_at=NULL,"
                " detail=? WHERE id=? AND state='failed'",
                [(REQUEUED, r.id) for r in ok],
            )
        return ok, [r for r in rows if not r.file]

    def expired_spool_files(self, state: str, before: float) -> list[tuple[int, str]]:
        """(id, spool file) of ``state`` rows (``failed``, ``kept``) finished or received before
        ``before`` whose file still exists (retention)."""
        if state not in ("failed", "kept"):
            raise JournalError(f"expired_spool_files: state {state!r}; allowed failed, kept")
        rows = self._query(
            "SELECT id, file FROM instances WHERE state=? AND file != ''"
            " AND COALESCE(finished_at, received_at) < ?",
            (state, before),
        )
        return [(r[0], r[1]) for r in rows]

    def requeued_ids(self) -> list[int]:
        """Ids of runs :meth:`requeue` put back that no worker has claimed yet, oldest first."""
        return [r[0] for r in self._query(
            "SELECT id FROM instances WHERE state='received' AND detail=? ORDER BY id", (REQUEUED,))]

    def received_ids(self) -> list[int]:
        """Ids of instances waiting for processing, oldest first."""
        return [r[0] for r in self._query("SELECT id FROM instances WHERE state='received' ORDER BY id")]

    def spool_files(self) -> set[str]:
        """Spool file names still referenced by a row (superseded receptions excluded)."""
        rows = self._query("SELECT file FROM instances WHERE file != '' AND state != 'superseded'")
        return {r[0] for r in rows}

    def processed_spool_files(self) -> list[tuple[int, str]]:
        """(id, file) of done/skipped instances whose spool file was not yet deleted."""
        rows = self._query(
            "SELECT id, file FROM instances WHERE file != '' AND state IN ('done','skipped')"
        )
        return [(r[0], r[1]) for r in rows]

    def forget_spool_file(self, instance_id: int) -> None:
        """Record that the spool file of ``instance_id`` was deleted after processing."""
        with self._tx() as db:
            db.execute("UPDATE instances SET file='' WHERE id=?", (instance_id,))

    # ---- outbox -----------------------------------------------------------------------------

    def due_outputs(self, now: float, limit: int = 1000) -> list[OutboxRow]:
        """Pending outbox rows whose next attempt is due, oldest first."""
        rows = self._query(
            "SELECT * FROM outbox WHERE state='pending' AND next_attempt_at<=?"
            " ORDER BY next_attempt_at, id LIMIT ?",
            (now, limit),
        )
        return [OutboxRow(**dict(r)) for r in rows]

    def next_attempt_time(self) -> float | None:
        """Earliest ``next_attempt_at`` of pending rows (None: nothing pending)."""
        rows = self._query("SELECT MIN(next_attempt_at) FROM outbox WHERE state='pending'")
        return rows[0][0] if rows and rows[0][0] is not None else None

    def mark_delivered(self, row_id: int, status: str) -> None:
        """An object was accepted by its destination."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET state='delivered', attempts=attempts+1, delivered_at=?,"
                " first_attempt_at=COALESCE(first_attempt_at, ?), last_status=?, detail=''"
                " WHERE id=? AND state='pending'",
                (now, now, status, row_id),
            )

    def mark_attempt_failed(
        self, row_id: int, *, status: str, detail: str, next_attempt_at: float | None
    ) -> None:
        """Record a failed attempt: retry at ``next_attempt_at``, or give up when it is None."""
        now = time.time()
        with self._tx() as db:
            if next_attempt_at is None:
                db.execute(
                    "UPDATE outbox SET state='failed', attempts=attempts+1, last_status=?, detail=?,"
                    " first_attempt_at=COALESCE(first_attempt_at, ?) WHERE id=? AND state='pending'",
                    (status, detail[:2000], now, row_id),
                )
            else:
                db.execute(
                    "UPDATE outbox SET attempts=attempts+1, last_status=?, detail=?, next_attempt_at=?,"
                    " first_attempt_at=COALESCE(first_attempt_at, ?) WHERE id=? AND state='pending'",
                    (status, detail[:2000], next_attempt_at, now, row_id),
                )

    def outbox_files_in_use(self) -> set[str]:
        """Outbox file names referenced by a pending row."""
        return {r[0] for r in self._query("SELECT file FROM outbox WHERE state='pending'")}

    def outbox_file_pending(self, file: str) -> bool:
        """True while some pending row still needs ``file``."""
        rows = self._query("SELECT 1 FROM outbox WHERE file=? AND state='pending' LIMIT 1", (file,))
        return bool(rows)

    def all_outbox_files(self) -> set[str]:
        """Every outbox file name any row references."""
        return {r[0] for r in self._query("SELECT DISTINCT file FROM outbox")}

    # ---- reporting --------------------------------------------------------------------------

    def instance_counts(self) -> dict[str, int]:
        """Number of instances per state (every state listed, zeros included)."""
        counts = dict.fromkeys(INSTANCE_STATES, 0)
        for r in self._query("SELECT state, COUNT(*) FROM instances GROUP BY state"):
            counts[r[0]] = r[1]
        return counts

    def outbox_counts(self) -> dict[str, dict[str, int]]:
        """Number of outbox rows per destination and state."""
        out: dict[str, dict[str, int]] = {}
        for r in self._query("SELECT destination, state, COUNT(*) FROM outbox GROUP BY destination, state"):
            out.setdefault(r[0], dict.fromkeys(OUTBOX_STATES, 0))[r[1]] = r[2]
        return out

    def instances(self, *, states: Iterable[str] | None = None, limit: int = 100) -> list[InstanceRow]:
        """Most recent instance rows (optionally only some states), newest first."""
        return [InstanceRow(**r) for r in self._recent("instances", states, limit)]

    def outputs(self, *, states: Iterable[str] | None = None, limit: int = 100) -> list[OutboxRow]:
        """Most recent outbox rows (optionally only some states), newest first."""
        return [OutboxRow(**r) for r in self._recent("outbox", states, limit)]

    def _recent(self, table: Literal["instances", "outbox"], states: Iterable[str] | None,
                limit: int) -> list[dict]:
        where, params = "", ()
        if states is not None:
            params = tuple(states)
            where = f" WHERE state IN ({','.join('?' * len(params))})"
        rows = self._query(f"SELECT * FROM {table}{where} ORDER BY id DESC LIMIT ?", (*params, limit))
        return [dict(r) for r in rows]

    def outputs_of(self, instance_id: int) -> list[OutboxRow]:
        """Outbox rows created for one instance."""
        rows = self._query("SELECT * FROM outbox WHERE instance_id=? ORDER BY id", (instance_id,))
        return [OutboxRow(**dict(r)) for r in rows]
