"""Claims that several workers share: who holds a study being analysed, and until when.

A worker's claim lasts until ``lease_until`` unless it renews it; a study whose lease ran out is
claimed by another worker, and ``claimed_by`` lets the store refuse the result of the one that
lost it (:class:`listener.store.LeaseLost`).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""
from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_SECONDS = {"sqlite": "REAL", "postgresql": "DOUBLE PRECISION"}


def upgrade() -> None:
    bind = op.get_bind()
    bind.exec_driver_sql("ALTER TABLE studies ADD COLUMN claimed_by TEXT")
    bind.exec_driver_sql(f"ALTER TABLE studies ADD COLUMN lease_until {_SECONDS[bind.dialect.name]}")


def downgrade() -> None:
    bind = op.get_bind()
    bind.exec_driver_sql("ALTER TABLE studies DROP COLUMN lease_until")
    bind.exec_driver_sql("ALTER TABLE studies DROP COLUMN claimed_by")
