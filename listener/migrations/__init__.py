"""The schema of the listener's database, both backends, as Alembic revisions (see
:func:`listener.database.upgrade`; there is no alembic.ini: the store runs them itself)."""
