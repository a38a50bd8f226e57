"""The tables of the listener and the review app as they were before migrations.

On SQLite this revision also adopts a database made by the code before it (tables there, no
``alembic_version``): every statement is ``IF NOT EXISTS`` and the columns ``labels`` gained over
time are added only where missing, so such a database comes to head without losing a row. The
DDL is written out here rather than imported from the modules, since a revision must keep making
what it made when the modules change.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""
from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY = "the audit trail is append-only"

SQLITE = [
    """CREATE TABLE IF NOT EXISTS instances (
        sop_instance_uid TEXT PRIMARY KEY,
        study_key TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        path TEXT NOT NULL,
        received_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS instances_study ON instances(study_key)",
    """CREATE TABLE IF NOT EXISTS studies (
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
    )""",
    "CREATE INDEX IF NOT EXISTS studies_state ON studies(state, priority, last_received)",
    """CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        study_key TEXT NOT NULL,
        version INTEGER NOT NULL,
        destination TEXT NOT NULL,
        path TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        next_attempt_at REAL NOT NULL,
        last_error TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_attempt_at)",
    """CREATE TABLE IF NOT EXISTS labels (
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
    )""",
    "CREATE INDEX IF NOT EXISTS labels_study ON labels(study_key, tag, id)",
    """CREATE TABLE IF NOT EXISTS accounts (
        name TEXT PRIMARY KEY,
        full_name TEXT NOT NULL DEFAULT '',
        role TEXT NOT NULL CHECK (role IN ('viewer', 'reviewer', 'admin')),
        password_hash TEXT,
        disabled INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
        source TEXT NOT NULL DEFAULT 'local',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS api_tokens (
        id TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        hash TEXT NOT NULL,
        label TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        last_used_at REAL,
        revoked_at REAL
    )""",
    "CREATE INDEX IF NOT EXISTS api_tokens_user ON api_tokens(user_name)",
    """CREATE TABLE IF NOT EXISTS sessions (
        id_hash TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        via TEXT NOT NULL,
        csrf_token TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_seen REAL NOT NULL,
        expires_at REAL NOT NULL,
        ended_at REAL
    )""",
    "CREATE INDEX IF NOT EXISTS sessions_user ON sessions(user_name)",
    """CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        actor TEXT,
        event TEXT NOT NULL,
        outcome TEXT NOT NULL,
        client TEXT,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS audit_time ON audit(time)",
    "CREATE INDEX IF NOT EXISTS audit_actor ON audit(actor, time)",
    f"""CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END""",
]

# the same tables; ids from identity columns, seconds as double precision. The audit trail's
# triggers raise restrict_violation (SQLSTATE 23001), an integrity error to psycopg as SQLite's
# RAISE(ABORT) is to sqlite3; TRUNCATE, which skips row triggers, is refused as well
POSTGRESQL = [
    """CREATE TABLE instances (
        sop_instance_uid TEXT PRIMARY KEY,
        study_key TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        path TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX instances_study ON instances(study_key)",
    """CREATE TABLE studies (
        study_key TEXT PRIMARY KEY,
        study_uid TEXT NOT NULL,
        calling_ae TEXT NOT NULL,
        state TEXT NOT NULL,
        first_received DOUBLE PRECISION NOT NULL,
        last_received DOUBLE PRECISION NOT NULL,
        claimed_at DOUBLE PRECISION,
        attempts INTEGER NOT NULL DEFAULT 0,
        version INTEGER NOT NULL DEFAULT 0,
        priority INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        result TEXT,
        sr_path TEXT,
        updated_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX studies_state ON studies(state, priority, last_received)",
    """CREATE TABLE outbox (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        study_key TEXT NOT NULL,
        version INTEGER NOT NULL,
        destination TEXT NOT NULL,
        path TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        last_error TEXT
    )""",
    "CREATE INDEX outbox_due ON outbox(state, next_attempt_at)",
    """CREATE TABLE labels (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        study_key TEXT NOT NULL,
        sop_instance_uid TEXT,
        tag TEXT NOT NULL CHECK (tag IN ('original', 'final')),
        finding TEXT NOT NULL CHECK (finding IN ('abnormal', 'normal')),
        probability DOUBLE PRECISION,
        reviewer TEXT,
        comment TEXT,
        analysis_version INTEGER,
        created_at DOUBLE PRECISION NOT NULL,
        client_id TEXT,
        reviewer_name TEXT
    )""",
    "CREATE INDEX labels_study ON labels(study_key, tag, id)",
    """CREATE TABLE accounts (
        name TEXT PRIMARY KEY,
        full_name TEXT NOT NULL DEFAULT '',
        role TEXT NOT NULL CHECK (role IN ('viewer', 'reviewer', 'admin')),
        password_hash TEXT,
        disabled INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
        source TEXT NOT NULL DEFAULT 'local',
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        hash TEXT NOT NULL,
        label TEXT NOT NULL DEFAULT '',
        created_at DOUBLE PRECISION NOT NULL,
        last_used_at DOUBLE PRECISION,
        revoked_at DOUBLE PRECISION
    )""",
    "CREATE INDEX api_tokens_user ON api_tokens(user_name)",
    """CREATE TABLE sessions (
        id_hash TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        via TEXT NOT NULL,
        csrf_token TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        last_seen DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        ended_at DOUBLE PRECISION
    )""",
    "CREATE INDEX sessions_user ON sessions(user_name)",
    """CREATE TABLE audit (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        time DOUBLE PRECISION NOT NULL,
        actor TEXT,
        event TEXT NOT NULL,
        outcome TEXT NOT NULL,
        client TEXT,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    "CREATE INDEX audit_time ON audit(time)",
    "CREATE INDEX audit_actor ON audit(actor, time)",
    f"""CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '{APPEND_ONLY}' USING ERRCODE = 'restrict_violation'; END $$""",
    "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
    "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
    "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()",
]

# added to labels after its first release: a database from before lacks them
_LABEL_COLUMNS = ("client_id", "reviewer_name")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for statement in SQLITE:
            bind.exec_driver_sql(statement)
        present = {row[1] for row in bind.exec_driver_sql("PRAGMA table_info(labels)")}
        for column in _LABEL_COLUMNS:
            if column not in present:
                bind.exec_driver_sql(f"ALTER TABLE labels ADD COLUMN {column} TEXT")
    elif bind.dialect.name == "postgresql":
        for statement in POSTGRESQL:
            bind.exec_driver_sql(statement)
    else:
        raise NotImplementedError(f"the listener's store runs on SQLite or PostgreSQL, not {bind.dialect.name}")


def downgrade() -> None:
    raise NotImplementedError("the first revision holds every study, label and audit entry: it is not undone")
