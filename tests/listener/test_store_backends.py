"""The store on both backends: schema by migrations (and a database from before them adopted
without losing a row), claims that several workers share, leases taken over, NOTIFY wake-ups,
and the SQL adapter that lets the review's modules write SQLite's SQL for PostgreSQL too."""
from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from listener.config import ListenerConfig, StoreSettings
from listener.database import INTEGRITY_ERRORS, MIGRATIONS, SCHEMA_HEAD, Row, parse_target, translate
from listener.exporter import Exporter
from listener.review.accounts import AccountStore, SessionStore
from listener.review.audit import GENESIS, AuditLog, _row_hash
from listener.review.labels import LabelStore
from listener.store import LeaseLost, Store
from listener.worker import Worker
from mura_monai.results import StudyResult
from tests.listener.conftest import postgres_admin, schema_url

_RESULT = StudyResult(study="1.2.3", body_part="XR_WRIST", probability=0.2, abnormal=False, threshold=0.5)


def _waiting(store: Store, count: int, now: float = 0.0) -> list[str]:
    keys = [store.record_instance(f"1.{i}.1", f"9.{i}", "MOD", "cr", f"p{i}", now=now + i * 0.001) for i in range(count)]
    store.promote_stable(0, now=now + count)
    return keys


# -- schema -------------------------------------------------------------------------------------
def test_the_schema_is_at_the_migrations_head_on_both(store_url):
    store = Store(store_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_HEAD
    assert [tuple(r) for r in store.connection().execute("SELECT version_num FROM alembic_version")] == [(SCHEMA_HEAD,)]
    assert Store(store_url).study_keys() == []  # opening it again migrates nothing and finds the tables
    columns = {row[0] for row in store.connection().execute(
        {"sqlite": "SELECT name FROM pragma_table_info('studies')",
         "postgresql": "SELECT column_name FROM information_schema.columns WHERE table_name='studies' "
                       "AND table_schema=current_schema()"}[store.dialect])}
    assert {"claimed_by", "lease_until"} <= columns


def test_targets_name_the_backend_and_hide_the_password():
    assert parse_target("/var/spool/queue.sqlite3").dialect == "sqlite"
    assert parse_target(Path("q.sqlite3")).path == Path("q.sqlite3")
    pg = parse_target("postgresql+psycopg://mura:s3cret@db.example.org:5433/mura")
    assert pg.dialect == "postgresql" and pg.path is None
    assert pg.libpq_url == "postgresql://mura:s3cret@db.example.org:5433/mura"
    assert pg.sqlalchemy_url == "postgresql+psycopg://mura:s3cret@db.example.org:5433/mura"
    assert "s3cret" not in pg.safe() and "db.example.org:5433/mura" in pg.safe()
    assert parse_target("sqlite:////tmp/q.db").path == Path("/tmp/q.db")
    with pytest.raises(ValueError, match="unsupported database URL scheme 'mysql'"):
        parse_target("mysql://db/x")


# the schemas as the code before migrations made them (git main, listener/store.py, review/labels.py,
# review/accounts.py, review/audit.py), copied as they were, with the names their f-strings used
class ExportState:
    class PENDING:
        value = "pending"


_ROLE_CHECK = ", ".join(f"'{role}'" for role in ("viewer", "reviewer", "admin"))
APPEND_ONLY = "the audit trail is append-only"

OLD_STORE_SCHEMA = f"""
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

OLD_LABELS_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_key TEXT NOT NULL,
    sop_instance_uid TEXT,
    tag TEXT NOT NULL CHECK (tag IN ('original', 'final')),
    finding TEXT NOT NULL CHECK (finding IN ('abnormal', 'normal')),
    probability REAL,
    reviewer TEXT,
    comment TEXT,
    analysis_version INTEGER,
    created_at REAL NOT NULL,
    client_id TEXT,
    reviewer_name TEXT
);
CREATE INDEX IF NOT EXISTS labels_study ON labels(study_key, tag, id);
"""

# labels before unattributed labels and named accounts (git 95078cc^): without the last two columns
OLDER_LABELS_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_key TEXT NOT NULL,
    sop_instance_uid TEXT,
    tag TEXT NOT NULL CHECK (tag IN ('original', 'final')),
    finding TEXT NOT NULL CHECK (finding IN ('abnormal', 'normal')),
    probability REAL,
    reviewer TEXT,
    comment TEXT,
    analysis_version INTEGER,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_study ON labels(study_key, tag, id);
"""

OLD_ACCOUNTS_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY,
    full_name TEXT NOT NULL DEFAULT '',
    role TEXT NOT NULL CHECK (role IN ({_ROLE_CHECK})),
    password_hash TEXT,
    disabled INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    source TEXT NOT NULL DEFAULT 'local',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    user_name TEXT NOT NULL,
    hash TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    last_used_at REAL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS api_tokens_user ON api_tokens(user_name);
CREATE TABLE IF NOT EXISTS sessions (
    id_hash TEXT PRIMARY KEY,
    user_name TEXT NOT NULL,
    via TEXT NOT NULL,
    csrf_token TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    expires_at REAL NOT NULL,
    ended_at REAL
);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions(user_name);
"""

OLD_AUDIT_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    actor TEXT,
    event TEXT NOT NULL,
    outcome TEXT NOT NULL,
    client TEXT,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_time ON audit(time);
CREATE INDEX IF NOT EXISTS audit_actor ON audit(actor, time);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END;
"""


def _old_database(path: Path, labels_schema: str) -> dict[str, list[tuple]]:
    """A database as the code before migrations left it, a row or two in every table; returns
    the rows, to compare with what the migrated database holds."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    for schema in (OLD_STORE_SCHEMA, labels_schema, OLD_ACCOUNTS_SCHEMA, OLD_AUDIT_SCHEMA):
        db.executescript(schema)
    with db:
        db.execute("INSERT INTO instances VALUES ('1.1.1', 'MOD|9.1', 'cr', '/spool/a.dcm', 1.5)")
        db.execute("INSERT INTO studies (study_key, study_uid, calling_ae, state, first_received, last_received, "
                   "claimed_at, attempts, version, result, sr_path, updated_at) VALUES ('MOD|9.1', '9.1', 'MOD', "
                   "'analysed', 1.5, 1.5, 2.0, 1, 1, '{\"analysis_version\": 1}', '/spool/sr.dcm', 3.0)")
        db.execute("INSERT INTO studies (study_key, study_uid, calling_ae, state, first_received, last_received, "
                   "claimed_at, attempts, updated_at) VALUES ('MOD|9.2', '9.2', 'MOD', 'analysing', 4.0, 4.0, 5.0, 1, 5.0)")
        db.execute("INSERT INTO outbox (study_key, version, destination, path, created_at, next_attempt_at) "
                   "VALUES ('MOD|9.1', 1, 'PACS@h:1', '/spool/sr.dcm', 3.0, 3.0)")
        db.execute("INSERT INTO labels (study_key, tag, finding, probability, analysis_version, created_at) "
                   "VALUES ('MOD|9.1', 'original', 'normal', 0.2, 1, 3.0)")
        db.execute("INSERT INTO accounts VALUES ('dr.b', 'Dr B', 'reviewer', NULL, 0, 'local', 1.0, 1.0)")
        db.execute("INSERT INTO api_tokens (id, user_name, hash, label, created_at) VALUES ('abc', 'dr.b', 'h', '', 1.0)")
        db.execute("INSERT INTO sessions VALUES ('s', 'dr.b', 'password', 'c', 1.0, 1.0, 99.0, NULL)")
    db.close()
    rows = {}
    db = sqlite3.connect(path)
    for table in ("instances", "studies", "outbox", "labels", "accounts", "api_tokens", "sessions"):
        rows[table] = db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
    db.close()
    return rows


@pytest.mark.parametrize("labels_schema", [OLD_LABELS_SCHEMA, OLDER_LABELS_SCHEMA], ids=["labels-main", "labels-older"])
def test_a_database_from_before_migrations_is_adopted_without_losing_a_row(tmp_path, labels_schema):
    path = tmp_path / "queue.sqlite3"
    before = _old_database(path, labels_schema)
    old = sqlite3.connect(path)
    with old:  # an entry of the old trail, hashed as the old code hashed it
        old.execute("INSERT INTO audit VALUES (1, 1.0, 'dr.b', 'sign_in', 'ok', NULL, '{}', ?, ?)",
                    (GENESIS, _row_hash(1, 1.0, "dr.b", "sign_in", "ok", None, {}, GENESIS)))
    old.close()

    store = Store(path)
    db = store.connection()
    assert [tuple(r) for r in db.execute("SELECT version_num FROM alembic_version")] == [(SCHEMA_HEAD,)]
    for table, rows in before.items():
        now = [tuple(row) for row in db.execute(f"SELECT * FROM {table} ORDER BY 1")]
        width = len(rows[0])
        assert [row[:width] for row in now] == rows, table  # new columns come last, the old ones keep their values
    study = store.study("MOD|9.2")
    assert (study.state, study.claimed_by, study.lease_until) == ("analysing", None, None)
    label = LabelStore(store).add("MOD|9.1", "final", "abnormal", reviewer="dr.b", reviewer_name="Dr B", client_id="ohif")
    assert (label.id, label.reviewer_name, label.client_id) == (2, "Dr B", "ohif")
    assert LabelStore(store).latest("MOD|9.1", "original").probability == 0.2
    assert AccountStore(store).get("dr.b").full_name == "Dr B"
    assert SessionStore(store, 60, 3600).purge(now=10**9) == 1
    with pytest.raises(INTEGRITY_ERRORS, match=APPEND_ONLY):  # the old triggers still guard the old trail
        db.execute("DELETE FROM audit")
    trail = AuditLog(store, None)
    assert trail.record("sign_out", "dr.b", now=2.0).id == 2 and trail.verify() == []  # the chain goes on
    assert store.recover() == 1  # the old worker's claim had no lease: released
    assert store.claim("w", now=10.0).key == "MOD|9.2" and store.claim("w", now=10.0) is None
    assert Store(path).outbox("MOD|9.1")[0]["destination"] == "PACS@h:1"


# -- claims and leases --------------------------------------------------------------------------
def test_concurrent_claimers_never_take_the_same_study(store_url):
    store = Store(store_url)
    keys = _waiting(store, 50)
    claimed: list[list[str]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def claimer(mine: list[str], worker: str) -> None:
        start.wait()
        try:
            while (study := store.claim(worker, lease_s=600, now=100.0)) is not None:
                mine.append(study.key)
        finally:
            store.close()

    threads = [threading.Thread(target=claimer, args=(claimed[i], f"w{i}")) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    everything = [key for mine in claimed for key in mine]
    assert sorted(everything) == sorted(keys)  # each study once, none left behind
    owners = {study.key: study.claimed_by for study in store.studies()}
    for i, mine in enumerate(claimed):
        assert all(owners[key] == f"w{i}" for key in mine)
    assert {s.state for s in store.studies()} == {"analysing"} and {s.attempts for s in store.studies()} == {1}


def test_concurrent_claimers_in_other_processes(store_url, tmp_path):
    """Separate processes (separate connections, as on separate hosts) share the queue too."""
    store = Store(store_url)
    keys = _waiting(store, 30)
    script = ("import sys, json, time; from listener.store import Store; s = Store(sys.argv[1]); out = []\n"
              "while time.time() < float(sys.argv[3]): time.sleep(0.01)\n"  # all three start claiming together
              "while (st := s.claim(sys.argv[2], 600, now=100.0)) is not None: out.append(st.key)\n"
              "print(json.dumps(out))")
    root = Path(__file__).resolve().parents[2]
    start_at = str(time.time() + 3.0)
    processes = [subprocess.Popen([sys.executable, "-c", script, store_url, f"p{i}", start_at], cwd=root,
                                  stdout=subprocess.PIPE, text=True) for i in range(3)]
    claimed = [json.loads(p.communicate(timeout=120)[0]) for p in processes]
    assert sorted(k for mine in claimed for k in mine) == sorted(keys)


def test_an_expired_lease_is_taken_over_and_the_old_worker_cannot_write(store_url):
    store = Store(store_url)
    (key,) = _waiting(store, 1)
    first = store.claim("host-a:11112/1", lease_s=10, now=100.0)
    assert (first.key, first.claimed_by, first.lease_until, first.attempts) == (key, "host-a:11112/1", 110.0, 1)
    assert store.claim("host-b:11112/2", lease_s=10, now=105.0) is None  # held
    assert store.heartbeat(key, "host-a:11112/1", 10, now=105.0)  # renewed to 115
    assert store.claim("host-b:11112/2", lease_s=10, now=112.0) is None  # still held
    second = store.claim("host-b:11112/2", lease_s=10, now=116.0)  # a stopped renewing: taken over
    assert (second.key, second.claimed_by, second.attempts) == (key, "host-b:11112/2", 2)
    assert not store.heartbeat(key, "host-a:11112/1", 10, now=117.0)
    with pytest.raises(LeaseLost):
        store.finish(key, _RESULT, ["sr-a"], ["PACS@h:1"], 0, "sr-a", now=118.0, worker_id="host-a:11112/1")
    with pytest.raises(LeaseLost):
        store.fail(key, "late", retry=True, max_attempts=3, now=118.0, worker_id="host-a:11112/1")
    study = store.study(key)
    assert (study.state, study.claimed_by, study.version, study.reason) == ("analysing", "host-b:11112/2", 0, None)
    assert store.outbox(key) == []  # nothing of a's was written
    assert store.heartbeat(key, "host-b:11112/2", 10, now=119.0)
    assert store.finish(key, _RESULT, ["sr-b"], ["PACS@h:1"], 0, "sr-b", now=120.0, worker_id="host-b:11112/2") == 1
    study = store.study(key)
    assert (study.state, study.claimed_by, study.lease_until) == ("analysed", None, None)
    assert [row["path"] for row in store.outbox(key)] == ["sr-b"]
    assert not store.heartbeat(key, "host-b:11112/2", 10, now=121.0)  # finished: nothing left to hold
    with pytest.raises(LeaseLost):
        store.finish(key, _RESULT, ["sr-b"], ["PACS@h:1"], 0, "sr-b", now=122.0, worker_id="host-b:11112/2")


def test_fail_by_the_holder_requeues_and_releases(store_url):
    store = Store(store_url)
    (key,) = _waiting(store, 1)
    store.claim("w1", lease_s=10, now=100.0)
    assert store.fail(key, "decoder crashed", retry=True, max_attempts=3, now=101.0, worker_id="w1") == "waiting"
    study = store.study(key)
    assert (study.claimed_by, study.lease_until) == (None, None)
    assert store.claim("w2", lease_s=10, now=102.0).claimed_by == "w2"


def test_recover_releases_dead_claims_and_keeps_another_hosts_live_one(store_url):
    store = Store(store_url)
    now = time.time()
    mine, theirs, unleased, expired = _waiting(store, 4, now=now - 100)
    assert store.claim("this-host:11112/41", lease_s=600, now=now).key == mine
    assert store.claim("other-host:11112/7", lease_s=600, now=now).key == theirs
    assert store.claim("old-worker", lease_s=600, now=now).key == unleased
    assert store.claim("gone-host:11112/9", lease_s=10, now=now - 60).key == expired
    with store.transaction() as db:  # a claim made before leases existed
        db.execute("UPDATE studies SET claimed_by=NULL, lease_until=NULL WHERE study_key=?", (unleased,))
    assert store.recover("this-host:11112/") == 3
    states = {s.key: (s.state, s.claimed_by) for s in store.studies()}
    assert states[theirs] == ("analysing", "other-host:11112/7")
    assert {states[k] for k in (mine, expired, unleased)} == {("waiting", None)}
    assert store.recover() == 0


def test_the_worker_renews_its_lease_and_drops_a_result_it_lost(store_url, caplog):
    store = Store(store_url)
    config = ListenerConfig(store=StoreSettings(lease_s=1.5))
    (key,) = _waiting(store, 1, now=time.time() - 100)
    rival = Store(store_url)  # another host's worker
    taken: list[str] = []

    class Slow(Worker):
        def analyse(self, study):
            if study.key == key:  # outlives its lease several times over; renewed, nobody may take it
                deadline = time.monotonic() + 4.0
                while time.monotonic() < deadline:
                    taken.extend(s.key for s in [rival.claim("rival", lease_s=60)] if s is not None)
                    time.sleep(0.25)
            else:  # the rival takes it over as if this worker had hung past its lease
                with rival.transaction() as db:
                    db.execute("UPDATE studies SET lease_until=0 WHERE study_key=?", (study.key,))
                assert rival.claim("rival", lease_s=60).key == study.key
            store.finish(study.key, _RESULT, ["sr"], ["PACS@h:1"], 0, "sr", worker_id=self.worker_id)
            return 1, _RESULT, None

    worker = Slow(config, store, predictor=object(), worker_id="this-host:1/1")
    assert worker.run_once()
    assert taken == [] and store.study(key).state == "analysed"
    lost = store.record_instance("2.1", "8", "MOD", "cr", "b", now=time.time() - 50)
    store.promote_stable(0)
    assert worker.run_once()
    study = store.study(lost)
    assert (study.state, study.claimed_by, study.version) == ("analysing", "rival", 0)
    assert any("result dropped" in record.getMessage() for record in caplog.records)


# -- wake-ups -----------------------------------------------------------------------------------
def test_a_notification_wakes_a_waiter_on_postgresql(store_url):
    waiter, writer = Store(store_url), Store(store_url)
    if waiter.dialect == "sqlite":
        started = time.monotonic()
        assert waiter.wait("instances", 0.2) is False and time.monotonic() - started >= 0.19
        stop = threading.Event()
        stop.set()
        assert waiter.wait("work", 30, stop) is False  # a set stop event returns at once
        # no notifications, but another connection's commit changes the file's data_version
        thread = threading.Thread(target=lambda: writer.record_instance("1.1", "9", "MOD", "cr", "a", now=0))
        started = time.monotonic()
        thread.start()
        assert waiter.wait("instances", 30.0) and time.monotonic() - started < 5.0
        thread.join()
        assert waiter.wait("work", 0.2) is False  # seen once: no change since
        return
    for channel in ("instances", "work", "outbox"):
        assert waiter.wait(channel, 0) is False  # listening from here on: nothing sent before can be lost
    assert waiter.wait("instances", 0.3) is False  # nothing yet: the whole timeout

    def timed(channel: str, write) -> float:
        thread = threading.Thread(target=write)
        started = time.monotonic()
        thread.start()
        assert waiter.wait(channel, 30.0), channel
        elapsed = time.monotonic() - started
        thread.join()
        return elapsed

    assert timed("instances", lambda: writer.record_instance("1.1", "9", "MOD", "cr", "a", now=0)) < 5.0
    assert timed("work", lambda: writer.promote_stable(0, now=1)) < 5.0
    writer.claim("w", now=2)
    assert timed("outbox", lambda: writer.finish("MOD|9", _RESULT, ["sr"], ["PACS@h:1"], 0, "sr", now=3)) < 5.0
    writer.notify("work")
    assert waiter.wait("work", 5.0)
    assert waiter.wait("work", 0.1) is False  # drained: one notification, one wake-up


def test_nothing_is_notified_without_work(store_url):
    store = Store(store_url)
    store.wait("work", 0)
    store.record_instance("1.1", "9", "MOD", "cr", "a", now=time.time())
    assert store.promote_stable(60) == []  # not stable yet: no "work"
    assert store.wait("work", 0.2) is False


# -- the SQL adapter ----------------------------------------------------------------------------
def test_translate_leaves_quotes_and_casts_alone():
    assert translate("SELECT * FROM t WHERE a=? AND b=:name") == "SELECT * FROM t WHERE a=%s AND b=%(name)s"
    assert translate("SELECT '?', ':x', \"a?\" FROM t WHERE c LIKE 'x%' AND d=?") == \
        "SELECT '?', ':x', \"a?\" FROM t WHERE c LIKE 'x%%' AND d=%s"
    assert translate("SELECT (result::json->>'v')::int, 5 % 2, 'it''s ?' FROM t WHERE k=:k") == \
        "SELECT (result::json->>'v')::int, 5 %% 2, 'it''s ?' FROM t WHERE k=%(k)s"


def test_rows_read_like_sqlite_rows():
    row = Row(("a", 2), {"name": 0, "n": 1})
    assert row[0] == row["name"] == "a" and row[1] == row["n"] == 2 and len(row) == 2
    assert dict(row) == {"name": "a", "n": 2} and row.keys() == ["name", "n"] and tuple(row) == ("a", 2)
    assert dict([Row(("x", 1), {"k": 0, "v": 1})]) == {"x": 1}


def test_the_adapter_runs_the_modules_sql_on_both(store_url):
    store = Store(store_url)
    db = store.connection()
    with store.transaction() as tx:
        tx.execute("INSERT INTO accounts (name, role, created_at, updated_at) VALUES (?, ?, ?, ?)", ("a", "viewer", 1.0, 1.0))
        tx.executemany("INSERT INTO accounts (name, role, created_at, updated_at) VALUES (:n, 'admin', :t, :t)",
                       [{"n": "b", "t": 2.0}, {"n": "c%", "t": 3.0}])
    rows = db.execute("SELECT name, role FROM accounts WHERE name LIKE 'c%' OR created_at < ? ORDER BY name", (2.5,)).fetchall()
    assert [tuple(r) for r in rows] == [("a", "viewer"), ("b", "admin"), ("c%", "admin")]
    assert [r["name"] for r in db.execute("SELECT * FROM accounts ORDER BY name")] == ["a", "b", "c%"]
    assert db.execute("UPDATE accounts SET disabled=1 WHERE role=?", ("admin",)).rowcount == 2
    assert db.execute("SELECT COUNT(*) FROM accounts WHERE disabled=0").fetchone()[0] == 1
    with pytest.raises(ZeroDivisionError), store.transaction() as tx:  # a failed transaction leaves nothing
        tx.execute("DELETE FROM accounts")
        raise ZeroDivisionError
    assert db.execute("SELECT COUNT(*) FROM accounts").fetchone()[0] == 3
    with pytest.raises(INTEGRITY_ERRORS):
        db.execute("INSERT INTO accounts (name, role, created_at, updated_at) VALUES ('d', 'root', 1, 1)")
    assert db.execute("SELECT COUNT(*) FROM accounts").fetchone()[0] == 3  # and the connection carries on


def test_the_worker_and_exporter_loops_wake_on_notifications(store_url, caplog):
    """Poll intervals far longer than the test: only a notification can make them this quick."""
    store = Store(store_url)
    if store.dialect == "sqlite":
        pytest.skip("the loops' LISTEN connections are PostgreSQL's; SQLite's wake-up by data_version is tested above")
    config = ListenerConfig()  # no [[destinations]]: what the worker queues, the exporter gives up at once
    analysed = threading.Event()

    class Quick(Worker):
        def analyse(self, study):
            self.store.finish(study.key, _RESULT, ["sr"], ["PACS@h:1"], 0, "sr", worker_id=self.worker_id)
            analysed.set()
            return 1, _RESULT, None

    stop = threading.Event()
    worker = Quick(config, Store(store_url), predictor=object(), worker_id="h:1/1")
    exporter = Exporter(config, Store(store_url))
    threads = [threading.Thread(target=worker.run, args=(stop, 60.0)),
               threading.Thread(target=exporter.run, args=(stop, 60.0))]
    for thread in threads:
        thread.start()
    try:
        schema = store.connection().execute("SELECT current_schema()").fetchone()[0]
        listening = f'LISTEN "mura.{schema}.%'  # what the loops' listening connections last ran
        deadline = time.monotonic() + 30
        while store.connection().execute("SELECT COUNT(*) FROM pg_stat_activity WHERE query LIKE ?",
                                         (listening,)).fetchone()[0] < 2:  # both loops are waiting out their 60 s
            assert time.monotonic() < deadline, "the loops never listened"
            time.sleep(0.02)
        started = time.monotonic()
        key = store.record_instance("1.1", "9", "MOD", "cr", "a", now=time.time() - 10)
        store.promote_stable(0)
        assert analysed.wait(10), "the worker did not wake"
        deadline = time.monotonic() + 10
        while store.outbox(key)[0]["state"] != "gave_up":
            assert time.monotonic() < deadline, "the exporter did not wake"
            time.sleep(0.02)
        assert time.monotonic() - started < 10
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
    assert not any(thread.is_alive() for thread in threads)  # a set stop is seen within the wait's slice
    assert store.study(key).state == "failed"


def test_a_schema_name_too_long_for_a_channel_still_notifies():
    admin = postgres_admin()  # skips, with the reason, when there is no server
    schema = f"t_{secrets.token_hex(6)}_{'x' * 45}"
    admin.execute(psycopg.sql.SQL("CREATE SCHEMA {}").format(psycopg.sql.Identifier(schema)))
    try:
        waiter, writer = Store(schema_url(schema)), Store(schema_url(schema))
        waiter.wait("instances", 0)
        writer.record_instance("1.1", "9", "MOD", "cr", "a", now=0)  # NOTIFY would refuse a 70-byte channel
        assert waiter.wait("instances", 10.0)
        waiter.close()
        writer.close()
    finally:
        admin.execute(psycopg.sql.SQL("DROP SCHEMA {} CASCADE").format(psycopg.sql.Identifier(schema)))
        admin.close()
