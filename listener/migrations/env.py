"""Alembic's entry point: the store hands over a connection already in its (locked) transaction."""
from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection)
with context.begin_transaction():
    context.run_migrations()
