"""The store's two backends, so that a test written once runs on both and they cannot drift apart.

PostgreSQL is the server at ``MURA_TEST_POSTGRES`` (default: the local one, trust auth); each test
gets a schema of its own, dropped afterwards. A server that cannot be reached skips those tests
with the reason in the summary (``-ra``), never silently.
"""
from __future__ import annotations

import os
import secrets
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from tests.ensemble_support import fitted_ensemble
from tests.listener.orthanc import OrthancServer

POSTGRES = os.environ.get("MURA_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")
_unreachable: list[str] = []  # the first failure's message: later tests skip without waiting again


def postgres_admin() -> psycopg.Connection:
    if _unreachable:
        pytest.skip(_unreachable[0])
    try:
        return psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        _unreachable.append(f"PostgreSQL not reachable at {POSTGRES}: {' '.join(str(exc).split())}")
        pytest.skip(_unreachable[0])


def schema_url(schema: str) -> str:
    """The server's URL with ``schema`` first on the search path: the store's tables go there."""
    return f"{POSTGRES}{'&' if '?' in POSTGRES else '?'}options={quote(f'-csearch_path={schema}', safe='')}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """What ``Store()`` opens: a fresh SQLite file, or a fresh schema on the PostgreSQL server."""
    if request.param == "sqlite":
        yield str(tmp_path / "queue.sqlite3")
        return
    admin = postgres_admin()
    schema = f"t_{secrets.token_hex(6)}"
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield schema_url(schema)
    finally:
        # a connection a test left inside a transaction would block the drop forever
        admin.execute("SET lock_timeout = '10s'")
        admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        admin.close()


@pytest.fixture(scope="module")
def ensemble(synth_root, tmp_path_factory):
    """The test ensemble the service tests serve (fitted once per module)."""
    return fitted_ensemble(synth_root, tmp_path_factory.mktemp("listener_ensemble"))


@pytest.fixture(scope="module")
def predictor(ensemble):
    """The test ensemble loaded for scoring in-process, as a worker holds it."""
    from mura_monai.ensemble_predictor import EnsemblePredictor
    from tests.ensemble_support import ENSEMBLE

    return EnsemblePredictor(ENSEMBLE, device="cpu", models_dir=ensemble["models"], members_models_dir=ensemble["members"])


@pytest.fixture
def pacs(tmp_path):
    """Debian's Orthanc as the PACS, one per test."""
    server = OrthancServer(tmp_path / "orthanc").start()
    yield server
    server.stop()
