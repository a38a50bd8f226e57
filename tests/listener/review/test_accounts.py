"""Accounts, API tokens and sessions of the review app, on a bare listener database (no servers)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from argon2 import PasswordHasher

from listener.review.accounts import (
    MIN_PASSWORD_LENGTH,
    ROLES,
    AccountError,
    AccountStore,
    SessionStore,
    role_allows,
)
from listener.store import Store

PASSWORD = "correct horse battery"


class CountingHasher(PasswordHasher):
    """A fast hasher that counts its verifies: the timing and caching promises are about those."""

    def __init__(self, time_cost: int = 1) -> None:
        super().__init__(time_cost=time_cost, memory_cost=8, parallelism=1)
        self.verifies = 0

    def verify(self, hash, password) -> bool:
        self.verifies += 1
        return super().verify(hash, password)


@pytest.fixture
def store(store_url) -> Iterator[Store]:
    store = Store(store_url)
    yield store
    store.close()


@pytest.fixture
def hasher() -> CountingHasher:
    return CountingHasher()


@pytest.fixture
def accounts(store, hasher) -> AccountStore:
    return AccountStore(store, hasher)


def database_bytes(store: Store) -> bytes:
    """SQLite: the database with its WAL and shared-memory files (a secret in any of them is on
    disk). PostgreSQL, whose files are the server's: every row of every table, as text."""
    if store.path is not None:
        return b"".join(path.read_bytes() for path in sorted(store.path.parent.glob(store.path.name + "*")))
    db = store.connection()
    tables = [r[0] for r in db.execute("SELECT table_name FROM information_schema.tables WHERE table_schema=current_schema()")]
    return "\n".join(str(row[0]) for table in tables
                     for row in db.execute(f'SELECT CAST(t AS text) FROM "{table}" t')).encode()


# -- roles and accounts ------------------------------------------------------------------------
def test_roles_are_ranked():
    assert ROLES == ("viewer", "reviewer", "admin")
    assert role_allows("admin", "reviewer") and role_allows("reviewer", "reviewer") and role_allows("reviewer", "viewer")
    assert not role_allows("viewer", "reviewer") and not role_allows("reviewer", "admin")
    assert not role_allows("root", "viewer") and not role_allows("admin", "superuser")


def test_add_get_list_and_count(accounts, store):
    added = accounts.add("dr.b", "reviewer", full_name="  Dr B  ", password=PASSWORD)
    accounts.add("alice@example.org", "admin")
    assert (added.name, added.full_name, added.role, added.disabled, added.source) == ("dr.b", "Dr B", "reviewer", False, "local")
    assert added.display_name == "Dr B" and accounts.get("alice@example.org").display_name == "alice@example.org"
    assert [a.name for a in accounts.list()] == ["alice@example.org", "dr.b"]
    assert accounts.get("nobody") is None
    accounts.disable("dr.b")
    assert accounts.count_enabled() == 1 and accounts.get("dr.b").disabled
    assert AccountStore(Store(store.url)).get("alice@example.org").role == "admin"  # kept across a restart


def test_refusals_name_the_account(accounts):
    accounts.add("dr.b", "reviewer")
    with pytest.raises(AccountError, match="'dr.b' already exists"):
        accounts.add("dr.b", "viewer")
    with pytest.raises(AccountError, match="'dr.c'.*role"):
        accounts.add("dr.c", "superuser")
    with pytest.raises(AccountError, match=f"'dr.c'.*at least {MIN_PASSWORD_LENGTH}"):
        accounts.add("dr.c", "viewer", password="x" * (MIN_PASSWORD_LENGTH - 1))
    with pytest.raises(AccountError, match="'dr.c'"):
        accounts.add("dr.c", "viewer", full_name="two\nlines")
    with pytest.raises(AccountError, match="no account 'ghost'"):
        accounts.set_role("ghost", "admin")
    assert [a.name for a in accounts.list()] == ["dr.b"]


@pytest.mark.parametrize("name", ["", ".dot", "-dash", "with space", "x" * 65, "dr.b\n", "rené", "a/b", "a;b"])
def test_bad_names_are_refused(accounts, name):
    with pytest.raises(AccountError, match="not allowed"):
        accounts.add(name, "viewer")


def test_longest_name_is_accepted(accounts):
    assert accounts.add("x" * 64, "viewer").name == "x" * 64


def test_set_role_full_name_enable(accounts):
    accounts.add("dr.b", "viewer")
    assert accounts.set_role("dr.b", "admin").role == "admin"
    with pytest.raises(AccountError):
        accounts.set_role("dr.b", "owner")
    assert accounts.set_full_name("dr.b", "Dr Bee").display_name == "Dr Bee"
    assert accounts.disable("dr.b").disabled and not accounts.enable("dr.b").disabled


# -- passwords ---------------------------------------------------------------------------------
def test_verify_password(accounts):
    accounts.add("dr.b", "reviewer", password=PASSWORD)
    accounts.add("token.only", "reviewer")
    assert accounts.verify_password("dr.b", PASSWORD).name == "dr.b"
    assert accounts.verify_password("dr.b", PASSWORD + "!") is None
    assert accounts.verify_password("dr.b", "") is None
    assert accounts.verify_password("nobody", PASSWORD) is None
    assert accounts.verify_password("token.only", "") is None
    accounts.disable("dr.b")
    assert accounts.verify_password("dr.b", PASSWORD) is None
    accounts.enable("dr.b")
    assert accounts.verify_password("dr.b", PASSWORD) is not None


def test_every_refusal_costs_an_argon2_verify(accounts, hasher):
    accounts.add("dr.b", "reviewer", password=PASSWORD)
    accounts.add("token.only", "reviewer")
    for name in ("nobody", "token.only", "dr.b"):
        before = hasher.verifies
        assert accounts.verify_password(name, "wrong password") is None
        assert hasher.verifies == before + 1, name


def test_set_password_replaces_the_old_one(accounts):
    accounts.add("dr.b", "reviewer", password=PASSWORD)
    accounts.set_password("dr.b", "a brand new secret")
    assert accounts.verify_password("dr.b", PASSWORD) is None
    assert accounts.verify_password("dr.b", "a brand new secret") is not None
    with pytest.raises(AccountError, match="'dr.b'"):
        accounts.set_password("dr.b", "short")


def test_a_hash_with_old_parameters_is_replaced_at_sign_in(store):
    AccountStore(store, CountingHasher(time_cost=1)).add("dr.b", "reviewer", password=PASSWORD)
    stronger = AccountStore(store, CountingHasher(time_cost=2))

    def stored() -> str:
        return store.connection().execute("SELECT password_hash FROM accounts").fetchone()[0]

    assert ",t=1," in stored()
    assert stronger.verify_password("dr.b", PASSWORD) is not None
    assert ",t=2," in stored() and stronger.verify_password("dr.b", PASSWORD) is not None


def test_secrets_are_stored_only_as_argon2id_hashes(store):
    accounts = AccountStore(store)  # the default hasher, as the app uses it
    accounts.add("dr.b", "reviewer", password=PASSWORD)
    _, token = accounts.create_token("dr.b", "slicer")
    assert accounts.verify_token(token).name == "dr.b"
    db = store.connection()
    assert db.execute("SELECT password_hash FROM accounts").fetchone()[0].startswith("$argon2id$")
    assert db.execute("SELECT hash FROM api_tokens").fetchone()[0].startswith("$argon2id$")
    content = database_bytes(store)
    assert b"dr.b" in content  # the search below does read the data
    for secret in (PASSWORD, token, token.rsplit("_", 1)[1]):
        assert secret.encode() not in content


# -- API tokens --------------------------------------------------------------------------------
def test_token_verifies_until_revoked(accounts):
    accounts.add("dr.b", "reviewer")
    info, token = accounts.create_token("dr.b", "  OHIF  ")
    assert token.startswith(f"mura_{info.id}_") and len(info.id) == 12
    assert (info.user_name, info.label, info.last_used_at, info.revoked_at) == ("dr.b", "OHIF", None, None)
    assert accounts.verify_token(token).name == "dr.b"
    assert accounts.tokens("dr.b")[0].last_used_at is not None
    revoked = accounts.revoke_token(info.id)
    assert revoked.revoked_at is not None
    assert accounts.verify_token(token) is None
    assert accounts.revoke_token(info.id).revoked_at == revoked.revoked_at
    with pytest.raises(AccountError, match="'0123456789ab'"):
        accounts.revoke_token("0123456789ab")


def test_a_disabled_account_s_tokens_stop_working(accounts):
    accounts.add("dr.b", "reviewer")
    _, token = accounts.create_token("dr.b")
    accounts.disable("dr.b")
    assert accounts.verify_token(token) is None
    with pytest.raises(AccountError, match="'dr.b'"):
        accounts.create_token("dr.b")
    with pytest.raises(AccountError, match="'ghost'"):
        accounts.create_token("ghost")
    accounts.enable("dr.b")
    assert accounts.verify_token(token).name == "dr.b"


def test_malformed_unknown_and_tampered_tokens(accounts):
    accounts.add("dr.b", "reviewer")
    info, token = accounts.create_token("dr.b")
    secret = token.rsplit("_", 1)[1]
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    other_id = "0" * 12 if info.id != "0" * 12 else "1" * 12
    for bad in ("", "mura_", secret, token + "x" * 200, f"mura_{info.id}", f"mura_{info.id.upper()}_{secret}",
                f"bearer {token}", tampered, f"mura_{other_id}_{secret}", token + "\n"):
        assert accounts.verify_token(bad) is None, bad
    assert accounts.verify_token(token) is not None


def test_a_verified_token_skips_argon2_but_not_the_revocation_check(accounts, hasher):
    accounts.add("dr.b", "reviewer")
    info, token = accounts.create_token("dr.b")
    before = hasher.verifies
    assert accounts.verify_token(token) is not None
    assert hasher.verifies == before + 1
    assert accounts.verify_token(token) is not None and accounts.verify_token(token) is not None
    assert hasher.verifies == before + 1
    assert token not in repr(vars(accounts))  # the cache keeps a digest, not the token
    accounts.disable("dr.b")
    assert accounts.verify_token(token) is None
    accounts.enable("dr.b")
    AccountStore(accounts.store, hasher).revoke_token(info.id)  # another worker of the app revokes it
    assert accounts.verify_token(token) is None


def test_last_used_is_written_at_most_once_a_minute(accounts):
    now = [1000.0]
    accounts._clock = lambda: now[0]
    accounts.add("dr.b", "reviewer")
    info, token = accounts.create_token("dr.b")
    accounts.verify_token(token)
    now[0] = 1030.0
    accounts.verify_token(token)
    assert accounts.tokens()[0].last_used_at == 1000.0
    now[0] = 1061.0
    accounts.verify_token(token)
    assert accounts.tokens()[0].last_used_at == 1061.0


def test_tokens_lists_per_user(accounts):
    accounts.add("dr.b", "reviewer")
    accounts.add("dr.c", "viewer")
    first, _ = accounts.create_token("dr.b", "one")
    accounts.create_token("dr.c", "two")
    accounts.revoke_token(first.id)
    assert [t.label for t in accounts.tokens("dr.b")] == ["one"]
    assert {t.user_name for t in accounts.tokens()} == {"dr.b", "dr.c"}


# -- the identity provider ---------------------------------------------------------------------
def test_external_accounts_follow_the_provider(accounts):
    created = accounts.upsert_external("jdoe", "J Doe", "viewer")
    assert (created.source, created.role, created.full_name) == ("oidc", "viewer", "J Doe")
    updated = accounts.upsert_external("jdoe", "Jane Doe", "reviewer")
    assert (updated.role, updated.full_name) == ("reviewer", "Jane Doe") and updated.created_at == created.created_at
    assert accounts.verify_password("jdoe", "") is None
    with pytest.raises(AccountError, match="'jdoe'"):
        accounts.set_password("jdoe", PASSWORD)


def test_the_provider_cannot_revive_a_disabled_account(accounts):
    accounts.upsert_external("jdoe", "J Doe", "viewer")
    accounts.disable("jdoe")
    again = accounts.upsert_external("jdoe", "J Doe", "admin")
    assert again.disabled and accounts.get("jdoe").disabled and accounts.get("jdoe").role == "viewer"


def test_the_provider_cannot_take_over_a_local_account(accounts):
    accounts.add("admin", "admin", password=PASSWORD)
    with pytest.raises(AccountError, match="'admin'"):
        accounts.upsert_external("admin", "Mallory", "admin")
    assert accounts.get("admin").source == "local" and accounts.get("admin").full_name == ""
    with pytest.raises(AccountError):
        accounts.upsert_external("jdoe", "J Doe", "chief")


# -- sessions ----------------------------------------------------------------------------------
@pytest.fixture
def sessions(store) -> SessionStore:
    return SessionStore(store, idle_s=1800, max_s=12 * 3600)


def test_session_create_and_get(sessions):
    session_id, created = sessions.create("dr.b", "password", now=1000.0)
    assert (created.user_name, created.via, created.expires_at, created.idle_s) == ("dr.b", "password", 1000.0 + 12 * 3600, 1800)
    got = sessions.get(session_id, now=1001.0)
    assert got.user_name == "dr.b" and got.csrf_token == created.csrf_token and len(got.csrf_token) >= 40
    assert sessions.get(session_id + "x", now=1001.0) is None and sessions.get("", now=1001.0) is None
    other_id, other = sessions.create("dr.b", "password", now=1000.0)
    assert other_id != session_id and other.csrf_token != created.csrf_token


def test_session_idle_expiry_and_refresh(sessions):
    session_id, _ = sessions.create("dr.b", "password", now=0.0)
    assert sessions.get(session_id, now=1700.0).last_seen == 1700.0  # use keeps it alive
    assert sessions.get(session_id, now=1705.0).last_seen == 1700.0  # not written again within 15 s
    assert sessions.get(session_id, now=3400.0) is not None
    assert sessions.get(session_id, now=3400.0 + 1801) is None


def test_session_absolute_expiry(sessions):
    session_id, _ = sessions.create("dr.b", "password", now=0.0)
    now = 0.0
    while now + 1000 < 12 * 3600:
        now += 1000
        assert sessions.get(session_id, now=now) is not None
    assert sessions.get(session_id, now=12 * 3600.0) is None


def test_session_end_and_end_user(sessions):
    session_id, _ = sessions.create("dr.b", "password", now=0.0)
    second, _ = sessions.create("dr.b", "monailabel", now=0.0)
    other, _ = sessions.create("dr.c", "oidc", now=0.0)
    assert sessions.end(session_id, now=10.0).user_name == "dr.b"
    assert sessions.get(session_id, now=11.0) is None
    assert sessions.end(session_id, now=12.0) is None
    assert sessions.end_user("dr.b", now=20.0) == 1
    assert sessions.get(second, now=21.0) is None and sessions.get(other, now=21.0).user_name == "dr.c"


def test_an_ended_idle_session_stays_ended_when_idle_time_is_raised(store, sessions):
    session_id, _ = sessions.create("dr.b", "password", now=0.0)
    assert sessions.end(session_id, now=5000.0) is None  # already idle: nothing live was ended, but the row is
    assert SessionStore(store, idle_s=10_000, max_s=12 * 3600).get(session_id, now=5001.0) is None


def test_the_raw_session_id_is_not_stored(store, sessions):
    session_id, _ = sessions.create("dr.b", "password")
    assert sessions.get(session_id) is not None
    content = database_bytes(store)
    assert b"dr.b" in content and session_id.encode() not in content


def test_purge_keeps_a_day_of_history(sessions):
    ended, _ = sessions.create("a", "password", now=0.0)
    idle, _ = sessions.create("b", "password", now=0.0)
    live, _ = sessions.create("c", "password", now=90_000.0)
    sessions.end(ended, now=10.0)
    assert sessions.purge(now=10.0 + 86_000) == 0
    assert sessions.purge(now=1800.0 + 86_400) == 2
    assert sessions.get(live, now=90_001.0) is not None


def test_expire_marks_a_run_out_session_once_and_says_why(store):
    sessions = SessionStore(store, idle_s=60, max_s=3600)
    idle, _ = sessions.create("jdoe", "password", now=1000.0)
    old, _ = sessions.create("jdoe", "password", now=1000.0)
    live, _ = sessions.create("jdoe", "password", now=1000.0)
    sessions.get(old, now=1050.0)
    assert sessions.expire(live, now=1030.0) is None  # still live
    assert sessions.expire(idle, now=1100.0)[1] == "idle"
    assert sessions.expire(idle, now=1100.0) is None  # once
    assert sessions.expire(old, now=4700.0)[1] == "max_age"
    assert sessions.expire("unknown", now=1100.0) is None
