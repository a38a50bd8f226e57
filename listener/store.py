"""The listener's memory: received instances, studies and their state, the outbox.

Every piece of the service (SCP threads, the worker, the exporter, the status command) talks to
this one database, so that a crash at any point loses nothing that was acknowledged: an instance
is recorded before the SCP answers success; a study claimed by a worker that died is claimed
again; an SR waiting for a PACS that is down stays in the outbox across restarts.

The database is an SQLite file in the spool by default (WAL, ``synchronous=FULL``: a committed
row survives a power cut, which is what an ack promises), or a PostgreSQL server named by
``[store] url`` that the listeners and workers of several hosts share (:mod:`listener.database`).
Both have the same tables, made by the migrations in :mod:`listener.migrations`, and the same
semantics.

Study states, as the status command shows them:
``received`` (instances arriving), ``waiting`` (stable, queued for analysis), ``analysing``,
``analysed`` (results in the outbox), ``sent`` (every destination has them), ``failed``.

Claims are leases, so that workers on several hosts can share the queue and a worker that died
(or lost its network) does not hold a study forever: :meth:`Store.claim` gives a worker a study
until ``lease_until``; the worker renews it with :meth:`Store.heartbeat` while it analyses; once
the lease has run out another worker may claim the study. A worker that lost its claim that way
must not write a second result, so :meth:`Store.finish` and :meth:`Store.fail`, given the
worker's id, raise :class:`LeaseLost` instead of writing (an exception rather than a return value
that a caller could ignore); the worker drops its result and carries on.

The outbox is shared the same way: an exporter claims the files it is about to send
(:meth:`Store.due_exports`) for a lease, so several exporters never send one file twice and a
dead one's files go to another once its lease runs out. Every running role (front-end, worker,
exporter, on whichever host) beats in the ``roles`` table (:meth:`Store.beat`), which the status
command and the metrics read with :meth:`Store.roles` and :meth:`Store.queue_summary`.
"""
from __future__ import annotations

import enum
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from listener.database import (
    DBConnection,
    PgConnection,
    connect_listener,
    connect_postgresql,
    connect_sqlite,
    migrate,
    parse_target,
)
from mura_monai.results import StudyResult

__all__ = ["SILENT_AFTER_BEATS", "STATES", "Export", "ExportState", "LeaseLost", "Store", "Study", "StudyState"]


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


class LeaseLost(Exception):
    """The study is no longer claimed by this worker (its lease ran out and another worker took
    it, or it was released): nothing was written, and the worker's result is to be dropped."""

    def __init__(self, key: str, worker_id: str) -> None:
        super().__init__(f"worker {worker_id!r} no longer holds the study it analysed")
        self.key, self.worker_id = key, worker_id


# the SQL that differs between the backends, one text per dialect side by side
_FOR_UPDATE = {"sqlite": "", "postgresql": " FOR UPDATE"}           # SQLite: BEGIN IMMEDIATE locks it all
_SKIP_LOCKED = {"sqlite": "", "postgresql": " FOR UPDATE SKIP LOCKED"}  # claimers pass each other by
_ANALYSIS_VERSION = {"sqlite": "json_extract(result, '$.analysis_version')",
                     "postgresql": "(result::json->>'analysis_version')::int"}
_WRITER_LOCK = 0x6D757261_00000002  # pg_advisory_xact_lock key of transaction(): one writer, as on SQLite


SILENT_AFTER_BEATS = 3       # a role this many beats late is shown as silent
_ROLES_KEPT_S = 7 * 86400    # a role's row outlives its last beat this long


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
    claimed_by: str | None = None      # the worker holding an ``analysing`` study ...
    lease_until: float | None = None   # ... until then, unless it renews its claim


@dataclass
class Export:
    id: int
    study_key: str
    destination: str
    path: str
    attempts: int
    created_at: float


def _study(row) -> Study:
    return Study(
        key=row["study_key"], study_uid=row["study_uid"], calling_ae=row["calling_ae"], state=StudyState(row["state"]),
        attempts=row["attempts"], version=row["version"], priority=row["priority"], last_received=row["last_received"],
        reason=row["reason"], result=StudyResult.from_json(json.loads(row["result"])) if row["result"] else None,
        sr_path=row["sr_path"], claimed_by=row["claimed_by"], lease_until=row["lease_until"],
    )


class Store:
    """One database per listener (a spool's SQLite file, or a PostgreSQL URL); safe to share
    between threads (one connection each)."""

    def __init__(self, target: str | Path) -> None:
        self.target = parse_target(target)
        self.dialect = self.target.dialect     # "sqlite" | "postgresql"
        self.path = self.target.path           # the SQLite file; None on PostgreSQL
        self.url = self.target.url             # what Store() takes to open this database again
        self._local = threading.local()
        self._schema: str | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        migrate(self.target, self._revision)

    def __repr__(self) -> str:
        return f"Store({self.target.safe()!r})"

    def _revision(self) -> str | None:
        row = self._db().execute("SELECT version_num FROM alembic_version").fetchone()
        return row[0] if row else None

    def _db(self) -> sqlite3.Connection | PgConnection:
        db = getattr(self._local, "db", None)
        if db is None or (isinstance(db, PgConnection) and not db.usable):
            db = connect_sqlite(self.path) if self.path is not None else connect_postgresql(self.target)
            self._local.db = db
        return db

    @contextmanager
    def _write(self, exclusive: bool = False) -> Iterator:
        """One write transaction. SQLite: immediate, so writers queue instead of failing on a busy
        database. PostgreSQL: the statements lock the rows they need; ``exclusive`` also queues
        this transaction behind every other exclusive one, as SQLite's single writer would."""
        db = self._db()
        if isinstance(db, PgConnection):
            with db.watch(), db.raw.transaction():
                if exclusive:
                    db.execute("SELECT pg_advisory_xact_lock(?)", (_WRITER_LOCK,))
                yield db
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """This thread's connections (another thread's close when that thread ends)."""
        for name in ("db", "listening"):
            db = getattr(self._local, name, None)
            if db is not None:
                db.close()
                setattr(self._local, name, None)
        self._local.channels = set()

    def connection(self) -> DBConnection:
        """This thread's connection, for modules keeping tables of their own in this database
        (the review app's labels, accounts, audit trail): one database, one backup, one
        crash-safety story. It takes SQLite's SQL on both backends (:mod:`listener.database`);
        ``dialect`` says which one it is, for the few statements that differ."""
        return self._db()

    def transaction(self):
        """A write transaction on this thread's connection (see :meth:`connection`) that no other
        such transaction runs beside: immediate on SQLite, behind an advisory lock on PostgreSQL,
        so that the review's read-then-write steps (the audit chain, a first sign-on) stay
        atomic on both."""
        return self._write(exclusive=True)

    # -- wake-ups --------------------------------------------------------------------------
    def _channel(self, name: str) -> str:
        """Notifications are per database, so the channel names the schema: two listeners
        sharing a server in separate schemas do not wake each other."""
        if self._schema is None:
            self._schema = self._db().execute("SELECT current_schema()").fetchone()[0] or ""
        channel = f"mura.{self._schema}.{name}"
        if len(channel.encode()) > 63:  # longer is refused by NOTIFY (and would fail the write it is part of)
            channel = f"mura.{hashlib.sha256(self._schema.encode()).hexdigest()[:16]}.{name}"
        return channel

    def _notify(self, db, name: str) -> None:
        """Sent when the transaction commits (PostgreSQL), so a waiter never wakes before the work
        it is told about can be seen; SQLite has no one to tell (waiters poll)."""
        if isinstance(db, PgConnection):
            db.execute("SELECT pg_notify(?, '')", (self._channel(name),))

    def notify(self, channel: str) -> None:
        """Wake whoever waits on ``channel`` (:meth:`wait`), outside any transaction."""
        self._notify(self._db(), channel)

    def _wait_for_commit(self, timeout_s: float, stop: threading.Event | None) -> bool:
        db = self._db()
        last = getattr(self._local, "data_version", None)
        deadline = time.monotonic() + timeout_s
        while True:
            version = db.execute("PRAGMA data_version").fetchone()[0]
            self._local.data_version = version
            if last is not None and version != last:
                return True
            last = version
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if stop is not None:
                if stop.wait(min(0.05, remaining)):
                    return False
            else:
                time.sleep(min(0.05, remaining))

    def wait(self, channel: str | Sequence[str], timeout_s: float, stop: threading.Event | None = None) -> bool:
        """Block until something is notified on ``channel`` (or on any of several) (True) or
        ``timeout_s`` passes (False).

        PostgreSQL: a connection of this thread's own LISTENs from the first call on, so a
        notification sent between two calls is not lost. SQLite has no notifications, but its
        ``PRAGMA data_version`` changes whenever another connection commits: this reads it every
        50 ms (one counter, no disk) and says True on a change since this thread's last call, on
        any channel, so that a worker or exporter in another process finds new work within 50 ms
        instead of at its poll interval. Notifications are a hint, never the only way to find work."""
        if stop is not None and stop.is_set():
            return False
        if self.dialect == "sqlite":
            return self._wait_for_commit(timeout_s, stop)
        try:
            for name in (channel,) if isinstance(channel, str) else channel:
                conn = self._listening(name)
            deadline = time.monotonic() + timeout_s
            while True:  # in slices, so that a set ``stop`` is seen within half a second
                remaining = deadline - time.monotonic()
                slice_s = max(0.0, min(remaining, 0.5) if stop is not None else remaining)
                if any(True for _ in conn.notifies(timeout=slice_s, stop_after=1)):
                    for _ in conn.notifies(timeout=0):  # a burst is one wake-up
                        pass
                    return True
                if remaining <= slice_s or (stop is not None and stop.is_set()):
                    return False
        except psycopg.Error:  # the server went away: poll until it is back
            self._local.listening, self._local.channels = None, set()
            stop.wait(timeout_s) if stop is not None else time.sleep(timeout_s)
            return False

    def _listening(self, channel: str) -> psycopg.Connection:
        conn = getattr(self._local, "listening", None)
        if conn is None or conn.closed or conn.broken:
            conn = self._local.listening = connect_listener(self.target)
            self._local.channels = set()
        if channel not in self._local.channels:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel(channel))))
            self._local.channels.add(channel)
        return conn

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
                "INSERT INTO instances (sop_instance_uid, study_key, sop_class_uid, path, received_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(sop_instance_uid) DO UPDATE SET "
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
            self._notify(db, "instances")
        return key

    def instances(self, key: str) -> list[dict]:
        rows = self._db().execute("SELECT * FROM instances WHERE study_key=? ORDER BY received_at, sop_instance_uid", (key,))
        return [dict(r) for r in rows]

    # -- the analysis queue --------------------------------------------------------------
    def promote_stable(self, stable_age_s: float, now: float | None = None) -> list[str]:
        """Studies with no new instance for ``stable_age_s`` become ``waiting`` (complete).

        Several front-ends run this at once on one database. The rows are locked with SKIP
        LOCKED first, so that two promoting transactions never wait on each other (nor deadlock
        by locking the same rows in different orders) and a study is promoted by one of them;
        a row that an instance being recorded holds is skipped too, and promoted at the next
        round if it is still stable then."""
        now = time.time() if now is None else now
        with self._write() as db:
            keys = [r[0] for r in db.execute(
                "UPDATE studies SET state=?, updated_at=? WHERE state=? AND study_key IN (SELECT study_key FROM studies "
                f"WHERE state=? AND last_received <= ?{_SKIP_LOCKED[self.dialect]}) RETURNING study_key",
                (StudyState.WAITING, now, StudyState.RECEIVED, StudyState.RECEIVED, now - stable_age_s)).fetchall()]
            if keys:
                self._notify(db, "work")
        return keys

    def next_stable_at(self, stable_age_s: float) -> float | None:
        """When the next study still receiving becomes complete (epoch seconds), or None: the
        assembly sleeps until then instead of polling, so that a study is promoted within a few
        milliseconds of its ``stable_age_s`` rather than up to a quarter of it later."""
        row = self._db().execute("SELECT MIN(last_received) FROM studies WHERE state=?", (StudyState.RECEIVED,)).fetchone()
        return None if row[0] is None else float(row[0]) + stable_age_s

    def receiving_instances(self, limit: int = 256) -> list[dict]:
        """Instances of studies still receiving or waiting for a worker, oldest first, with their
        study's ``state``: what a worker with nothing to do may score ahead
        (:meth:`listener.worker.Worker.prescore`), so that a study's analysis finds most of its
        images scored when ``stable_age_s`` has passed."""
        rows = self._db().execute(
            "SELECT instances.*, studies.state FROM instances JOIN studies ON studies.study_key=instances.study_key "
            "WHERE studies.state IN (?, ?) ORDER BY instances.received_at, instances.sop_instance_uid LIMIT ?",
            (StudyState.RECEIVED, StudyState.WAITING, limit))
        return [dict(r) for r in rows]

    def recover(self, workers: str | None = None, now: float | None = None) -> int:
        """At start: studies whose worker is gone are queued again; returns how many.

        Gone are the workers whose lease ran out, the claims without a lease (made before
        leases), and, given ``workers``, every worker whose id starts with it: the caller's own,
        which it knows are dead. A live claim of another host's worker stays with that worker.
        Heatmap captures that one of the caller's dead workers was still to draw will not come:
        their studies are settled on the SR they have."""
        now = time.time() if now is None else now
        mine, params = "", [StudyState.WAITING, now, StudyState.ANALYSING, now]
        if workers:
            mine = " OR substr(claimed_by, 1, ?) = ?"
            params += [len(workers), workers]
        with self._write() as db:
            count = db.execute("UPDATE studies SET state=?, claimed_by=NULL, lease_until=NULL, updated_at=? WHERE state=? "
                               f"AND (lease_until IS NULL OR lease_until <= ?{mine})", params).rowcount
            if count:
                self._notify(db, "work")
            if workers:
                for row in db.execute("UPDATE studies SET captures_to_come=0, claimed_by=NULL WHERE captures_to_come=1 "
                                      "AND substr(claimed_by, 1, ?) = ? RETURNING study_key",
                                      (len(workers), workers)).fetchall():
                    self._settle_study(db, row[0], now)
        return count

    def claim(self, worker_id: str = "worker", lease_s: float = 60.0, now: float | None = None) -> Study | None:
        """The next study for ``worker_id`` (the oldest waiting one, or one whose worker's lease
        ran out), marked ``analysing`` and held until ``now + lease_s``.

        One statement: on PostgreSQL the row is locked with SKIP LOCKED, so concurrent workers
        each take a different study without waiting on each other; on SQLite the immediate
        transaction makes claims take turns."""
        now = time.time() if now is None else now
        with self._write() as db:
            keys = db.execute(
                "UPDATE studies SET state=?, claimed_by=?, claimed_at=?, lease_until=?, attempts=attempts+1, updated_at=? "
                "WHERE study_key=(SELECT study_key FROM studies WHERE state=? OR (state=? AND "
                "(lease_until IS NULL OR lease_until <= ?)) ORDER BY last_received LIMIT 1"
                f"{_SKIP_LOCKED[self.dialect]}) RETURNING study_key",
                (StudyState.ANALYSING, worker_id, now, now + lease_s, now, StudyState.WAITING, StudyState.ANALYSING,
                 now)).fetchall()
            # read back rather than RETURNING *: SQLite's RETURNING gives a REAL column's 2.0 as the integer 2
            row = db.execute("SELECT * FROM studies WHERE study_key=?", (keys[0][0],)).fetchone() if keys else None
        return _study(row) if row else None

    def heartbeat(self, key: str, worker_id: str, lease_s: float = 60.0, now: float | None = None) -> bool:
        """Renew ``worker_id``'s claim on the study for ``lease_s`` more; False once it no longer
        holds it (another worker took it over): the worker is to drop its result. A lease that
        ran out but that nobody took over yet is still this worker's, and renewed."""
        now = time.time() if now is None else now
        with self._write() as db:
            return db.execute("UPDATE studies SET lease_until=? WHERE study_key=? AND state=? AND claimed_by=?",
                              (now + lease_s, key, StudyState.ANALYSING, worker_id)).rowcount == 1

    def _hold(self, db, key: str, columns: str, worker_id: str | None):
        """The study's row, locked until the transaction ends; :class:`LeaseLost` when
        ``worker_id`` is given and no longer holds it."""
        row = db.execute(f"SELECT state, claimed_by, {columns} FROM studies WHERE study_key=?{_FOR_UPDATE[self.dialect]}",
                         (key,)).fetchone()
        if worker_id is not None and (row is None or row["state"] != StudyState.ANALYSING or row["claimed_by"] != worker_id):
            raise LeaseLost(key, worker_id)
        return row

    def finish(self, key: str, result: StudyResult, outputs: Sequence[str | Path], destinations: list[str], priority: int,
               sr_path: str | Path | None, now: float | None = None, worker_id: str | None = None,
               captures_to_come: bool = False) -> int:
        """Store a finished analysis and put its files in the outbox for every destination;
        returns the new version. A study that received instances meanwhile goes back to
        ``received`` so that it is analysed again with them. Given ``worker_id``, raises
        :class:`LeaseLost` (and writes nothing) unless that worker still holds the study.
        ``captures_to_come``: the heatmap captures follow (:meth:`add_outputs`), and the study is
        not ``sent`` before they are."""
        now = time.time() if now is None else now
        with self._write() as db:
            row = self._hold(db, key, "version, last_received, claimed_at", worker_id)
            version = row["version"] + 1
            newer = row["claimed_at"] is not None and row["last_received"] > row["claimed_at"]
            to_come = captures_to_come and bool(destinations)
            state = StudyState.RECEIVED if newer else (
                StudyState.ANALYSED if (outputs and destinations) or to_come else StudyState.SENT)
            # a worker drawing captures keeps its name on the study (without a lease), so that its
            # restarted service can tell the captures of a dead worker will never come (recover)
            db.execute("UPDATE studies SET state=?, version=?, priority=?, result=?, sr_path=?, reason=NULL, updated_at=?, "
                       "claimed_by=?, lease_until=NULL, captures_to_come=? WHERE study_key=?",
                       (state, version, priority, json.dumps(result.to_json()), str(sr_path) if sr_path else None, now,
                        worker_id if to_come else None, int(to_come), key))
            self._queue(db, key, version, outputs, destinations, priority, now)
        return version

    def _queue(self, db, key: str, version: int, outputs: Sequence[str | Path], destinations: list[str], priority: int,
               now: float) -> int:
        """Every output for every destination into the outbox, in the caller's transaction."""
        exports = [(key, version, d, str(p), priority, now, now) for d in destinations for p in outputs]
        db.executemany(
            "INSERT INTO outbox (study_key, version, destination, path, priority, created_at, next_attempt_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", exports)
        if exports:
            self._notify(db, "outbox")
        return len(exports)

    def add_outputs(self, key: str, version: int, result: StudyResult, outputs: Sequence[str | Path],
                    destinations: list[str], priority: int, now: float | None = None) -> bool:
        """The files that :meth:`finish` said were to come (the heatmap captures, drawn after the
        SR left), queued for every destination, and the stored result replaced by ``result``
        (which names them); none when they could not be drawn. False, and nothing written, when
        the study has moved on to another version since (re-opened by new instances, or
        corrected by a reviewer): its captures would illustrate a result that is no longer the
        study's. A study with nothing left to send is ``sent`` now."""
        now = time.time() if now is None else now
        with self._write() as db:
            row = self._hold(db, key, "version", None)
            if row is None or row["version"] != version:
                return False
            db.execute("UPDATE studies SET result=?, updated_at=?, captures_to_come=0 WHERE study_key=?",
                       (json.dumps(result.to_json()), now, key))
            if not self._queue(db, key, version, outputs, destinations, priority, now):
                self._settle_study(db, key, now)
        return True

    def add_revision(self, key: str, outputs: Sequence[str | Path], destinations: list[str], priority: int,
                     sr_path: str | Path, now: float | None = None) -> int:
        """A result corrected by a reviewer (a new SR version) queued for every destination;
        returns the new version. The model's result stays in ``result``: the correction is the
        reviewer's label, and the next analysis of the study references this SR."""
        now = time.time() if now is None else now
        with self._write() as db:
            version = self._hold(db, key, "version", None)["version"] + 1
            # the captures of the analysis it corrects are dropped when they come (add_outputs)
            db.execute("UPDATE studies SET version=?, sr_path=?, updated_at=?, captures_to_come=0, state=CASE WHEN state "
                       "IN (?, ?, ?) THEN ? ELSE state END WHERE study_key=?",
                       (version, str(sr_path), now, StudyState.ANALYSED, StudyState.SENT, StudyState.FAILED,
                        StudyState.ANALYSED, key))
            self._queue(db, key, version, outputs, destinations, priority, now)
        return version

    def fail(self, key: str, reason: str, retry: bool, max_attempts: int, now: float | None = None,
             worker_id: str | None = None) -> StudyState:
        """A study that could not be analysed: queued again while ``retry`` and attempts remain,
        else ``failed`` with its reason (never retried forever). Returns the new state. Given
        ``worker_id``, raises :class:`LeaseLost` (and writes nothing) unless that worker still
        holds the study."""
        now = time.time() if now is None else now
        with self._write() as db:
            attempts = self._hold(db, key, "attempts", worker_id)["attempts"]
            state = StudyState.WAITING if retry and attempts < max_attempts else StudyState.FAILED
            db.execute("UPDATE studies SET state=?, reason=?, updated_at=?, claimed_by=NULL, lease_until=NULL "
                       "WHERE study_key=?", (state, reason, now, key))
            if state == StudyState.WAITING:
                self._notify(db, "work")
        return state

    def claim_many(self, worker_id: str = "worker", n: int = 1, lease_s: float = 60.0, max_images: int | None = None,
                   now: float | None = None) -> list[Study]:
        """Up to ``n`` studies for ``worker_id``, each taken as :meth:`claim` takes one, oldest
        first, in one transaction, so that a worker can run several small studies through its
        networks together. Given ``max_images``, it stops before the study whose instances would
        take the total past it; the first is taken whatever its size (a large study goes alone,
        whole)."""
        now = time.time() if now is None else now
        with self._write() as db:
            rows = db.execute(
                "SELECT study_key, (SELECT COUNT(*) FROM instances WHERE instances.study_key=studies.study_key) AS images "
                "FROM studies WHERE state=? OR (state=? AND (lease_until IS NULL OR lease_until <= ?)) "
                f"ORDER BY last_received LIMIT ?{_SKIP_LOCKED[self.dialect]}",
                (StudyState.WAITING, StudyState.ANALYSING, now, n)).fetchall()
            keys: list[str] = []
            images = 0
            for row in rows:
                if keys and max_images is not None and images + row["images"] > max_images:
                    break
                keys.append(row["study_key"])
                images += row["images"]
            if not keys:
                return []
            marks = ", ".join("?" * len(keys))
            db.execute("UPDATE studies SET state=?, claimed_by=?, claimed_at=?, lease_until=?, attempts=attempts+1, "
                       f"updated_at=? WHERE study_key IN ({marks})",
                       (StudyState.ANALYSING, worker_id, now, now + lease_s, now, *keys))
            claimed = {row["study_key"]: _study(row)
                       for row in db.execute(f"SELECT * FROM studies WHERE study_key IN ({marks})", keys).fetchall()}
        return [claimed[key] for key in keys]

    # -- the outbox ------------------------------------------------------------------------
    def due_exports(self, now: float | None = None, limit: int = 50, exporter_id: str = "exporter",
                    lease_s: float = 60.0) -> list[Export]:
        """Pending files whose next attempt is due, abnormal and uncertain studies first, claimed
        for ``exporter_id`` until ``now + lease_s`` so that no other exporter sends them meanwhile.

        Rows another exporter holds are passed by (SKIP LOCKED on PostgreSQL; SQLite's immediate
        transaction makes claims take turns) and left alone while its lease runs; an exporter
        that died frees its rows when the lease runs out. :meth:`export_done` and
        :meth:`export_failed` end the claim."""
        now = time.time() if now is None else now
        with self._write() as db:
            ids = [r[0] for r in db.execute(
                "UPDATE outbox SET claimed_by=?, lease_until=? WHERE id IN (SELECT id FROM outbox WHERE state=? AND "
                "next_attempt_at <= ? AND (claimed_by IS NULL OR claimed_by=? OR lease_until IS NULL OR lease_until <= ?) "
                f"ORDER BY priority DESC, id LIMIT ?{_SKIP_LOCKED[self.dialect]}) RETURNING id",
                (exporter_id, now + lease_s, ExportState.PENDING, now, exporter_id, now, limit)).fetchall()]
            rows = db.execute(f"SELECT * FROM outbox WHERE id IN ({', '.join('?' * len(ids))}) ORDER BY priority DESC, id",
                              ids).fetchall() if ids else []
        return [Export(r["id"], r["study_key"], r["destination"], r["path"], r["attempts"], r["created_at"]) for r in rows]

    def export_done(self, export_id: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._write() as db:
            db.execute("UPDATE outbox SET state=?, attempts=attempts+1, last_error=NULL, claimed_by=NULL, lease_until=NULL "
                       "WHERE id=?", (ExportState.SENT, export_id))
            self._settle(db, export_id, now)

    def export_failed(self, export_id: int, error: str, next_attempt_at: float | None, now: float | None = None) -> None:
        """Another try at ``next_attempt_at``, or given up when that is None."""
        now = time.time() if now is None else now
        with self._write() as db:
            if next_attempt_at is None:
                db.execute("UPDATE outbox SET state=?, attempts=attempts+1, last_error=?, claimed_by=NULL, "
                           "lease_until=NULL WHERE id=?", (ExportState.GAVE_UP, error, export_id))
            else:
                db.execute("UPDATE outbox SET attempts=attempts+1, last_error=?, next_attempt_at=?, claimed_by=NULL, "
                           "lease_until=NULL WHERE id=?", (error, next_attempt_at, export_id))
            self._settle(db, export_id, now)

    def _settle(self, db, export_id: int, now: float) -> None:
        """An analysed study whose outbox emptied is ``sent`` (or ``failed`` if a file was given up).
        The study's row is locked before its outbox is counted, so that two exporters settling
        its last two files at once cannot each see the other's still pending."""
        key = db.execute("SELECT study_key FROM outbox WHERE id=?", (export_id,)).fetchone()[0]
        self._settle_study(db, key, now)

    def _settle_study(self, db, key: str, now: float) -> None:
        """``sent`` or ``failed`` once nothing of the study is pending and no capture is to come."""
        row = db.execute(f"SELECT captures_to_come FROM studies WHERE study_key=?{_FOR_UPDATE[self.dialect]}",
                         (key,)).fetchone()
        if row is None or row["captures_to_come"]:
            return
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
            f"SELECT study_key, {_ANALYSIS_VERSION[self.dialect]} FROM studies WHERE result IS NOT NULL")
        return {r[0]: r[1] for r in rows}

    def outbox(self, key: str | None = None) -> list[dict]:
        query = "SELECT * FROM outbox" + (" WHERE study_key=?" if key else "") + " ORDER BY id"
        return [dict(r) for r in self._db().execute(query, (key,) if key else ())]

    def queue_summary(self) -> tuple[dict[str, int], float | None]:
        """Studies per state (every state, zero included) and since when the oldest ``waiting``
        study has waited (the time it became waiting), or None when none waits: what the
        metrics and the status command show of the queue."""
        counts = dict.fromkeys(STATES, 0)
        db = self._db()
        counts.update({r[0]: r[1] for r in db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state")})
        oldest = db.execute("SELECT MIN(updated_at) FROM studies WHERE state=?", (StudyState.WAITING,)).fetchone()[0]
        return counts, oldest

    # -- the roles' heartbeats -------------------------------------------------------------
    def beat(self, role_id: str, role: str, host: str, pid: int, device: str = "", details: dict | None = None,
             beat_s: float = 5.0, started_at: float | None = None, stopped: bool = False,
             now: float | None = None) -> None:
        """Say that the role ``role_id`` is alive (or, ``stopped``, that it ended cleanly), with
        what it runs on and ``details`` of its own; it promises the next beat within ``beat_s``.
        Rows of roles gone for a week are dropped, so the table does not grow with restarts."""
        now = time.time() if now is None else now
        with self._write() as db:
            db.execute(
                "INSERT INTO roles (id, role, host, pid, device, started_at, last_beat, beat_s, stopped_at, details) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET role=excluded.role, "
                "host=excluded.host, pid=excluded.pid, device=excluded.device, started_at=excluded.started_at, "
                "last_beat=excluded.last_beat, beat_s=excluded.beat_s, stopped_at=excluded.stopped_at, "
                "details=excluded.details",
                (role_id, role, host, pid, device, now if started_at is None else started_at, now, beat_s,
                 now if stopped else None, json.dumps(details or {})))
            db.execute("DELETE FROM roles WHERE last_beat < ?", (now - _ROLES_KEPT_S,))

    def roles(self, now: float | None = None) -> list[dict]:
        """Every role that beat in the last week: its row, with ``age_s`` (since its last beat)
        and ``state``: ``running``, ``stopped`` (ended cleanly) or ``silent`` (three beats
        missed: dead, hung, or cut off from the database)."""
        now = time.time() if now is None else now
        out = []
        for row in self._db().execute("SELECT * FROM roles ORDER BY role, host, id"):
            role = dict(row)
            role["details"] = json.loads(role["details"] or "{}")
            role["age_s"] = max(0.0, now - role["last_beat"])
            role["state"] = ("stopped" if role["stopped_at"] is not None else
                             "silent" if role["age_s"] > SILENT_AFTER_BEATS * role["beat_s"] else "running")
            out.append(role)
        return out
