"""Heatmap captures that follow a study's SR: the worker queues the SR first and the captures when
they are drawn, and ``captures_to_come`` keeps the study ``analysed`` (not ``sent``) in between, so
that ``sent`` still means everything the analysis produced is in the PACS.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""
from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.get_bind().exec_driver_sql("ALTER TABLE studies ADD COLUMN captures_to_come INTEGER NOT NULL DEFAULT 0")


def downgrade() -> None:
    op.get_bind().exec_driver_sql("ALTER TABLE studies DROP COLUMN captures_to_come")
