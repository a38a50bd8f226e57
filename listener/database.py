"""Where the store's database is and how to talk to it: an SQLite file in the spool (the default:
nothing to install or start) or a PostgreSQL server that several hosts share.

The listener and the review app write their SQL once, in SQLite's spelling (``?`` and ``:name``
placeholders, rows read by index or by column name), and :class:`PgConnection` takes that
spelling to PostgreSQL; the few statements whose SQL differs keep one text per dialect side by
side in the module that owns them, so that a change to one is seen beside the other. The schema
of both is made by the Alembic migrations in :mod:`listener.migrations`, run from here once per
process and database.
"""
from __future__ import annotations

import contextlib
import functools
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import psycopg

__all__ = ["DATABASE_ERRORS", "DIALECTS", "INTEGRITY_ERRORS", "SCHEMA_HEAD", "SCHEMES", "Cursor", "DBConnection",
           "PgConnection", "Row", "Target", "connect_postgresql", "connect_sqlite", "migrate", "parse_target",
           "translate"]

DIALECTS = ("sqlite", "postgresql")
SCHEMES = ("postgresql", "postgresql+psycopg")  # what [store] url may name; empty is SQLite in the spool
SCHEMA_HEAD = "0004"   # the newest revision in listener/migrations/versions (a test keeps the two equal)

# a write refused by a constraint or by the audit table's triggers, whichever the backend
INTEGRITY_ERRORS: tuple[type[Exception], ...] = (sqlite3.IntegrityError, psycopg.IntegrityError)
DATABASE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)

_MIGRATION_LOCK = 0x6D757261_00000001  # pg_advisory_xact_lock key: one migrating process at a time


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class DBConnection(Protocol):
    """What the modules call on :meth:`listener.store.Store.connection`: sqlite3's own
    connection on SQLite, a :class:`PgConnection` on PostgreSQL."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...


@dataclass(frozen=True)
class Target:
    """A database as the store names it. ``url`` is what :class:`~listener.store.Store` takes
    back (a path for SQLite); it may hold a password, so it is never logged (see :meth:`safe`)."""

    dialect: str
    url: str
    path: Path | None = None

    @property
    def sqlalchemy_url(self) -> str:
        """The URL an SQLAlchemy engine (Alembic's) is made from."""
        if self.path is not None:
            return f"sqlite:///{self.path}"
        return "postgresql+psycopg://" + self.url.split("://", 1)[1]

    @property
    def libpq_url(self) -> str:
        return "postgresql://" + self.url.split("://", 1)[1]

    def safe(self) -> str:
        """For log lines and messages: the database without its password."""
        if self.path is not None:
            return str(self.path)
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        return f"{parts.scheme}://{parts.username + '@' if parts.username else ''}{host}" \
               f"{':' + str(parts.port) if parts.port else ''}{parts.path}"


def parse_target(target: str | Path) -> Target:
    """A path (SQLite), ``sqlite:///path``, or ``postgresql[+psycopg]://user@host:port/db``."""
    if isinstance(target, Path):
        return Target("sqlite", str(target), target)
    scheme = target.split("://", 1)[0].lower() if "://" in target else ""
    if scheme in SCHEMES:
        return Target("postgresql", target)
    if scheme == "sqlite":
        path = Path(target.split("://", 1)[1].removeprefix("/"))
        return Target("sqlite", str(path), path)
    if scheme:
        raise ValueError(f"unsupported database URL scheme {scheme!r}: give a path (SQLite) or a postgresql:// URL")
    return Target("sqlite", target, Path(target))


# -- SQLite ------------------------------------------------------------------------------------
def connect_sqlite(path: Path) -> sqlite3.Connection:
    """Autocommit (``isolation_level=None``): transactions are the store's explicit
    ``BEGIN IMMEDIATE``, so that writers queue instead of failing on a busy database."""
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


# -- PostgreSQL --------------------------------------------------------------------------------
class Row(Sequence):
    """A result row read as sqlite3.Row is: by index, by column name, ``keys()``, ``dict(row)``."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence, index: Mapping[str, int]) -> None:
        self._values = tuple(values)
        self._index = index

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator:
        return iter(self._values)

    def keys(self) -> list[str]:
        return list(self._index)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Row) and self._values == other._values and list(self._index) == list(other._index)

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values))!r})"


def _row_factory(cursor: Any) -> Callable[[Sequence], Row]:
    index: dict[str, int] = {}
    for i, column in enumerate(cursor.description or ()):
        index.setdefault(column.name, i)  # a name twice (a join): the first, as sqlite3.Row does
    return lambda values: Row(values, index)


# a string literal, a quoted identifier, a dollar-quoted body, or one of the characters translated
_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\$\$.*?\$\$|::|\?|%|:[A-Za-z_][A-Za-z0-9_]*", re.S)


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """SQLite's placeholders in psycopg's spelling: ``?`` -> ``%s``, ``:name`` -> ``%(name)s``;
    no placeholder is seen inside quotes or in a ``::type`` cast. Every literal ``%`` is doubled,
    quoted or not: psycopg reads placeholders without regard to SQL's quoting."""
    def replace(match: re.Match) -> str:
        token = match.group(0)
        if token == "?":
            return "%s"
        if token.startswith(":") and token != "::":
            return f"%({token[1:]})s"
        return token.replace("%", "%%")

    return _TOKEN.sub(replace, sql)


class PgConnection:
    """A psycopg connection that takes the SQL the modules write for SQLite (see the module's
    docstring). Autocommit outside :meth:`transaction`, as the store's sqlite3 connections are, so
    that a reader never holds a transaction (and its locks and snapshot) open between calls."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.raw = conn
        self.failed = False

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        with self.watch():
            return self.raw.execute(translate(sql), parameters)  # type: ignore[arg-type]

    def executemany(self, sql: str, parameters: Any, /) -> Any:
        with self.watch():
            cursor = self.raw.cursor()
            cursor.executemany(translate(sql), parameters)  # type: ignore[arg-type]
            return cursor

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """A server that went away (a restart: ``AdminShutdown``, a dropped socket) fails the call
        and marks the connection, so that the next call opens a new one. psycopg does not always
        flag such a connection ``broken`` by itself: after a restart's FATAL message it looked
        usable and failed every later call."""
        try:
            yield
        except psycopg.OperationalError:
            self.failed = True
            raise

    @property
    def usable(self) -> bool:
        """False once the server went away: the next call opens a new connection."""
        return not (self.failed or self.raw.closed or self.raw.broken
                    or self.raw.pgconn.status != psycopg.pq.ConnStatus.OK)

    def close(self) -> None:
        self.raw.close()


def connect_postgresql(target: Target) -> PgConnection:
    return PgConnection(psycopg.connect(target.libpq_url, autocommit=True, row_factory=_row_factory,  # type: ignore[arg-type]
                                        **_connect_defaults(target)))


def connect_listener(target: Target) -> psycopg.Connection:
    """A connection that only LISTENs (:meth:`listener.store.Store.wait`)."""
    return psycopg.connect(target.libpq_url, autocommit=True, **_connect_defaults(target))


def _connect_defaults(target: Target) -> dict:
    """A server that does not answer fails a connection in seconds, not after the kernel's TCP
    timeout (minutes), unless the URL says otherwise."""
    given = psycopg.conninfo.conninfo_to_dict(target.libpq_url)
    return {} if "connect_timeout" in given else {"connect_timeout": 10}


# -- migrations --------------------------------------------------------------------------------
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_migrated: set[str] = set()
_migrate_lock = threading.Lock()


def migrate(target: Target, current: Callable[[], str | None]) -> None:
    """Bring the schema to :data:`SCHEMA_HEAD`, once per process and database. ``current`` reads
    the database's revision on the caller's connection, so that a database already at head (every
    start but the first after an upgrade) costs one query, without importing Alembic."""
    key = f"{target.dialect}:{target.path.resolve() if target.path else target.url}"
    if key in _migrated and (target.path is None or target.path.exists()):
        return
    with _migrate_lock:
        try:
            revision = current()
        except DATABASE_ERRORS:  # no alembic_version table yet
            revision = None
        if revision != SCHEMA_HEAD:
            upgrade(target)
        _migrated.add(key)


def upgrade(target: Target, revision: str = "head") -> None:
    """``alembic upgrade head`` without an alembic.ini: one transaction, which on SQLite starts
    with ``BEGIN IMMEDIATE`` and on PostgreSQL takes an advisory lock, so that two processes
    starting at once migrate one after the other (the second finds nothing left to do)."""
    import sqlalchemy
    from alembic import command
    from alembic.config import Config
    from sqlalchemy.pool import NullPool

    if target.path is not None:
        engine = sqlalchemy.create_engine(target.sqlalchemy_url, poolclass=NullPool, connect_args={"timeout": 30.0})

        @sqlalchemy.event.listens_for(engine, "connect")
        def _autocommit(dbapi_connection, _record) -> None:  # the BEGIN below is then the only one
            dbapi_connection.isolation_level = None

        @sqlalchemy.event.listens_for(engine, "begin")
        def _immediate(connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        engine = sqlalchemy.create_engine(target.sqlalchemy_url, poolclass=NullPool,
                                          connect_args=_connect_defaults(target))
    try:
        with engine.begin() as connection:
            if target.dialect == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()
