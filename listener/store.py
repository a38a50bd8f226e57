"""The listener's memory: received instances, studies and their state, the outbox. SQLite in WAL mode.

Every piece of the service (SCP threads, the worker, the exporter, the status command) talks to
this one database, so that a crash at any point loses nothing that was acknowledged: an instance
is recorded before the SCP answers success; a study claimed by a worker that died is claimed
again on restart; an SR waiting for a PACS that is down stays in the outbox across restarts.
``synchronous=FULL``: a committed row survives a power cut, which is what an ack promises.

Study states, as the status command shows them:
``received`` (instances arriving), ``waiting`` (stable, queued for analysis), ``analysing``,
``analysed`` (results in the outbox), ``sent`` (every destination has them), ``failed``.
"""
from __future__ import annotations

import enum
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mura_monai.results import StudyResult

__all__ = ["STATES", "Export", "ExportState", "Store", "Study", "StudyState"]


class StudyState(enum.StrEnum):
    """Where a study stands (see the module's docstring); stored as the value."""

    RECEIVED = "received"
    WAITING = "waiting"
    ANALYSING = "analysing"
    ANALYSED = "analysed"
    SENT = "sent"
    FAILED = "failed"


class ExportState(enum.StrEnum):
    """Where one outbox file stands: waiting for its next attempt, stored by the PACS, or given up."""

    PENDING = "pending"
    SENT = "sent"
    GAVE_UP = "gave_up"


STATES = tuple(state.value for state in StudyState)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    study_key TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_key);
CREATE TABLE IF NOT EXISTS studies (
    study_key TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    state TEXT NOT NULL,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    claimed_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    result TEXT,
    sr_path TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_state ON studies(state, priority, last_received);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_key TEXT NOT NULL,
    version INTEGER NOT NULL,
    destination TEXT NOT NULL,
    path TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT '{ExportState.PENDING.value}',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_attempt_at);
"""


def study_key(study_uid: str, calling_ae: str) -> str:
    """Studies are told apart by StudyInstanceUID and the modality that sent them."""
    return f"{calling_ae.strip()}|{study_uid}"


@dataclass
class Study:
    key: str
    study_uid: str
    calling_ae: str
    state: StudyState
    attempts: int
    version: int
    priority: int
    last_received: float
    reason: str | None = None
    result: StudyResult | None = None
    sr_path: str | None = None


@dataclass
class Export:
    id: int
    study_key: str
    destination: str
    path: str
    attempts: int
    created_at: float


def _study(row: sqlite3.Row) -> Study:
    return Study(
        key=row["study_key"], study_uid=row["study_uid"], calling_ae=row["calling_ae"], state=StudyState(row["state"]),
        attempts=row["attempts"], version=row["version"], priority=row["priority"], last_received=row["last_received"],
        reason=row["reason"], result=StudyResult.from_json(json.loads(row["result"])) if row["result"] else None,
        sr_path=row["sr_path"],
    )


class Store:
    """One SQLite database per spool; safe to share between threads (one connection each)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._db().executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One immediate transaction: writers queue instead of failing on a busy database."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, for modules keeping tables of their own in this database
        (the review app's labels): one file, one backup, one crash-safety story."""
        return self._db()

    def transaction(self):
        """An immediate write transaction on this thread's connection (see :meth:`connection`)."""
        return self._write()

    # -- receiving -----------------------------------------------------------------------
    def record_instance(self, sop_instance_uid: str, study_uid: str, calling_ae: str, sop_class_uid: str,
                        path: str | Path, now: float | None = None) -> str:
        """Record a stored instance (the SCP acks only after this returns); returns its study key.

        An instance of a study already analysed re-opens it: the next analysis is a new version.
        """
        now = time.time() if now is None else now
        key = study_key(study_uid, calling_ae)
        with self._write() as db:
            db.execute(
                "INSERT INTO instances VALUES (?, ?, ?, ?, ?) ON CONFLICT(sop_instance_uid) DO UPDATE SET "
                "study_key=excluded.study_key, sop_class_uid=excluded.sop_class_uid, path=excluded.path, "
                "received_at=excluded.received_at",
                (sop_instance_uid, key, sop_class_uid, str(path), now),
            )
            db.execute(
                "INSERT INTO studies (study_key, study_uid, calling_ae, state, first_received, last_received, updated_at) "
                "VALUES (:key, :study_uid, :calling_ae, :received, :now, :now, :now) ON CONFLICT(study_key) DO UPDATE SET "
                "state=CASE WHEN studies.state=:analysing THEN :analysing ELSE :received END, "
                "last_received=excluded.last_received, updated_at=excluded.updated_at, attempts=CASE WHEN "
                "studies.state IN (:failed, :analysed, :sent) THEN 0 ELSE studies.attempts END",
                {"key": key, "study_uid": study_uid, "calling_ae": calling_ae.strip(), "now": now,
                 "received": StudyState.RECEIVED, "analysing": StudyState.ANALYSING, "failed": StudyState.FAILED,
                 "analysed": StudyState.ANALYSED, "sent": StudyState.SENT},
            )
        return key

    def instances(self, key: str) -> list[dict]:
        rows = self._db().execute("SELECT * FROM instances WHERE study_key=? ORDER BY received_at, sop_instance_uid", (key,))
        return [dict(r) for r in rows]

    # -- the analysis queue --------------------------------------------------------------
    def promote_stable(self, stable_age_s: float, now: float | None = None) -> list[str]:
        """Studies with no new instance for ``stable_age_s`` become ``waiting`` (complete)."""
        now = time.time() if now is None else now
        with self._write() as db:
            keys = [r[0] for r in db.execute(
                "SELECT study_key FROM studies WHERE state=? AND last_received <= ?",
                (StudyState.RECEIVED, now - stable_age_s))]
            db.executemany("UPDATE studies SET state=?, updated_at=? WHERE study_key=?",
                           [(StudyState.WAITING, now, k) for k in keys])
        return keys

    def recover(self) -> int:
        """At start: studies a dead worker had claimed are queued again; returns how many."""
        with self._write() as db:
            return db.execute("UPDATE studies SET state=? WHERE state=?",
                              (StudyState.WAITING, StudyState.ANALYSING)).rowcount

    def claim(self, now: float | None = None) -> Study | None:
        """The next waiting study for the worker (oldest first), marked ``analysing``."""
        now = time.time() if now is None else now
        with self._write() as db:
            row = db.execute("SELECT * FROM studies WHERE state=? ORDER BY last_received LIMIT 1",
                             (StudyState.WAITING,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE studies SET state=?, claimed_at=?, attempts=attempts+1, updated_at=? "
                       "WHERE study_key=?", (StudyState.ANALYSING, now, now, row["study_key"]))
        study = _study(row)
        study.state, study.attempts = StudyState.ANALYSING, study.attempts + 1
        return study

    def finish(self, key: str, result: StudyResult, outputs: Sequence[str | Path], destinations: list[str], priority: int,
               sr_path: str | Path | None, now: float | None = None) -> int:
        """Store a finished analysis and put its files in the outbox for every destination;
        returns the new version. A study that received instances meanwhile goes back to
        ``received`` so that it is analysed again with them."""
        now = time.time() if now is None else now
        with self._write() as db:
            row = db.execute("SELECT version, last_received, claimed_at FROM studies WHERE study_key=?", (key,)).fetchone()
            version = row["version"] + 1
            newer = row["claimed_at"] is not None and row["last_received"] > row["claimed_at"]
            state = StudyState.RECEIVED if newer else (StudyState.ANALYSED if outputs and destinations else StudyState.SENT)
            db.execute("UPDATE studies SET state=?, version=?, priority=?, result=?, sr_path=?, reason=NULL, updated_at=? "
                       "WHERE study_key=?", (state, version, priority, json.dumps(result.to_json()),
                                             str(sr_path) if sr_path else None,
                                             now, key))
            db.executemany(
                "INSERT INTO outbox (study_key, version, destination, path, priority, created_at, next_attempt_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(key, version, d, str(p), priority, now, now) for d in destinations for p in outputs],
            )
        return version

    def add_revision(self, key: str, outputs: Sequence[str | Path], destinations: list[str], priority: int,
                     sr_path: str | Path, now: float | None = None) -> int:
        """A result corrected by a reviewer (a new SR version) queued for every destination;
        returns the new version. The model's result stays in ``result``: the correction is the
        reviewer's label, and the next analysis of the study references this SR."""
        now = time.time() if now is None else now
        with self._write() as db:
            version = db.execute("SELECT version FROM studies WHERE study_key=?", (key,)).fetchone()["version"] + 1
            db.execute("UPDATE studies SET version=?, sr_path=?, updated_at=?, state=CASE WHEN state IN "
                       "(?, ?, ?) THEN ? ELSE state END WHERE study_key=?",
                       (version, str(sr_path), now, StudyState.ANALYSED, StudyState.SENT, StudyState.FAILED,
                        StudyState.ANALYSED, key))
            db.executemany(
                "INSERT INTO outbox (study_key, version, destination, path, priority, created_at, next_attempt_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(key, version, d, str(p), priority, now, now) for d in destinations for p in outputs],
            )
        return version

    def fail(self, key: str, reason: str, retry: bool, max_attempts: int, now: float | None = None) -> StudyState:
        """A study that could not be analysed: queued again while ``retry`` and attempts remain,
        else ``failed`` with its reason (never retried forever). Returns the new state."""
        now = time.time() if now is None else now
        with self._write() as db:
            attempts = db.execute("SELECT attempts FROM studies WHERE study_key=?", (key,)).fetchone()[0]
            state = StudyState.WAITING if retry and attempts < max_attempts else StudyState.FAILED
            db.execute("UPDATE studies SET state=?, reason=?, updated_at=? WHERE study_key=?", (state, reason, now, key))
        return state

    # -- the outbox ------------------------------------------------------------------------
    def due_exports(self, now: float | None = None, limit: int = 50) -> list[Export]:
        """Pending files whose next attempt is due; abnormal and uncertain studies first."""
        now = time.time() if now is None else now
        rows = self._db().execute(
            "SELECT * FROM outbox WHERE state=? AND next_attempt_at <= ? "
            "ORDER BY priority DESC, id LIMIT ?", (ExportState.PENDING, now, limit))
        return [Export(r["id"], r["study_key"], r["destination"], r["path"], r["attempts"], r["created_at"]) for r in rows]

    def export_done(self, export_id: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._write() as db:
            db.execute("UPDATE outbox SET state=?, attempts=attempts+1, last_error=NULL WHERE id=?",
                       (ExportState.SENT, export_id))
            self._settle(db, export_id, now)

    def export_failed(self, export_id: int, error: str, next_attempt_at: float | None, now: float | None = None) -> None:
        """Another try at ``next_attempt_at``, or given up when that is None."""
        now = time.time() if now is None else now
        with self._write() as db:
            if next_attempt_at is None:
                db.execute("UPDATE outbox SET state=?, attempts=attempts+1, last_error=? WHERE id=?",
                           (ExportState.GAVE_UP, error, export_id))
            else:
                db.execute("UPDATE outbox SET attempts=attempts+1, last_error=?, next_attempt_at=? WHERE id=?",
                           (error, next_attempt_at, export_id))
            self._settle(db, export_id, now)

    @staticmethod
    def _settle(db: sqlite3.Connection, export_id: int, now: float) -> None:
        """An analysed study whose outbox emptied is ``sent`` (or ``failed`` if a file was given up)."""
        key = db.execute("SELECT study_key FROM outbox WHERE id=?", (export_id,)).fetchone()[0]
        counts = dict(db.execute("SELECT state, COUNT(*) FROM outbox WHERE study_key=? GROUP BY state", (key,)).fetchall())
        if counts.get(ExportState.PENDING):
            return
        state, reason = (StudyState.FAILED, "export given up") if counts.get(ExportState.GAVE_UP) else (StudyState.SENT, None)
        db.execute("UPDATE studies SET state=?, reason=COALESCE(?, reason), updated_at=? "
                   "WHERE study_key=? AND state=?", (state, reason, now, key, StudyState.ANALYSED))

    # -- status ----------------------------------------------------------------------------
    def study(self, key: str) -> Study | None:
        row = self._db().execute("SELECT * FROM studies WHERE study_key=?", (key,)).fetchone()
        return _study(row) if row else None

    def studies(self) -> list[Study]:
        return [_study(r) for r in self._db().execute("SELECT * FROM studies ORDER BY last_received DESC")]

    def study_keys(self) -> list[str]:
        return [r[0] for r in self._db().execute("SELECT study_key FROM studies")]

    def instance_index(self) -> list[tuple[str, str]]:
        """``(study key, SOP Instance UID)`` of every instance, without the rest of their rows."""
        return [(r[0], r[1]) for r in self._db().execute("SELECT study_key, sop_instance_uid FROM instances")]

    def analysis_versions(self) -> dict[str, int | None]:
        """Study key -> the ``analysis_version`` its current result names (None in a result from
        before results named it), for every study with a result; read without decoding the
        results, since the review asks on every page."""
        rows = self._db().execute(
            "SELECT study_key, json_extract(result, '$.analysis_version') FROM studies WHERE result IS NOT NULL")
        return {r[0]: r[1] for r in rows}

    def outbox(self, key: str | None = None) -> list[dict]:
        query = "SELECT * FROM outbox" + (" WHERE study_key=?" if key else "") + " ORDER BY id"
        return [dict(r) for r in self._db().execute(query, (key,) if key else ())]
