"""Several exporters on one outbox, and the heartbeats of every running role.

An exporter claims the outbox rows it is about to send (``claimed_by`` until ``lease_until``), so
that two exporters never send the same file; one that died frees its rows when the lease runs
out. ``roles`` is where each running part of the service (SCP front-end, worker, exporter, on
whichever host) says it is alive, for ``mura-listener status`` and the operator's alerts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""
from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_SECONDS = {"sqlite": "REAL", "postgresql": "DOUBLE PRECISION"}


def upgrade() -> None:
    bind = op.get_bind()
    seconds = _SECONDS[bind.dialect.name]
    bind.exec_driver_sql("ALTER TABLE outbox ADD COLUMN claimed_by TEXT")
    bind.exec_driver_sql(f"ALTER TABLE outbox ADD COLUMN lease_until {seconds}")
    bind.exec_driver_sql(f"""CREATE TABLE roles (
        id TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        device TEXT NOT NULL DEFAULT '',
        started_at {seconds} NOT NULL,
        last_beat {seconds} NOT NULL,
        beat_s {seconds} NOT NULL,
        stopped_at {seconds},
        details TEXT NOT NULL DEFAULT '{{}}'
    )""")


def downgrade() -> None:
    bind = op.get_bind()
    bind.exec_driver_sql("DROP TABLE roles")
    bind.exec_driver_sql("ALTER TABLE outbox DROP COLUMN lease_until")
    bind.exec_driver_sql("ALTER TABLE outbox DROP COLUMN claimed_by")
