"""Who may use the review app: named accounts, their API tokens, and the sessions they sign in to.

Every label and every corrected SR names the person who made it, so people sign in as
themselves, not with a shared secret. The tables live in the listener's own database beside the
labels they attribute (one database, one backup; :mod:`listener.migrations` makes them). A copy
of that database must not let anyone sign in: passwords and token secrets are kept only as
argon2 hashes, and sessions only as the SHA-256 of their id.

Accounts are ``local`` (an administrator made them, they may have a password) or come from the
hospital's identity provider (``oidc``: created at first sign-on, following the provider's name
and role, never given a password here). Nothing is deleted: an account that should no longer
sign in is disabled, so the labels it made keep naming someone who existed.
"""
from __future__ import annotations

import builtins
import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from listener.config import ROLES
from listener.store import Store

__all__ = ["MIN_PASSWORD_LENGTH", "ROLES", "Account", "AccountError", "AccountStore", "ApiToken", "Session", "SessionStore",
           "role_allows"]

MIN_PASSWORD_LENGTH = 10
_MAX_PASSWORD_LENGTH = 1024    # argon2 takes any length; a megabyte "password" is a request to refuse, not to hash
_MAX_FULL_NAME = 200
_MAX_LABEL = 100
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_SOURCE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_TOKEN = re.compile(r"mura_([0-9a-f]{12})_([A-Za-z0-9_-]{16,128})")
_TOKEN_TOUCH_S = 60.0          # last_used_at is for the accounts page, not an audit log: a write a minute is plenty
_SESSION_TOUCH_S = 15.0        # idle expiry may come up to this much early; a write per request would not
_PURGE_AFTER_S = 86400.0
_TOKEN_CACHE_SIZE = 1024

# the scalar (two-or-more argument) MAX and MIN, as each backend spells them
_GREATEST = {"sqlite": "MAX", "postgresql": "GREATEST"}
_LEAST = {"sqlite": "MIN", "postgresql": "LEAST"}


def role_allows(role: str, needed: str) -> bool:
    """Roles are ranked, so a check names the least role that may do something."""
    if role not in ROLES or needed not in ROLES:
        return False
    return ROLES.index(role) >= ROLES.index(needed)


class AccountError(ValueError):
    """A refused change or request; the message is fit to show the administrator who made it."""


@dataclass(frozen=True)
class Account:
    name: str
    full_name: str
    role: str
    disabled: bool
    source: str
    created_at: float

    @property
    def display_name(self) -> str:
        return self.full_name or self.name


@dataclass(frozen=True)
class ApiToken:
    id: str
    user_name: str
    label: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


def _account(row) -> Account:
    return Account(name=row["name"], full_name=row["full_name"], role=row["role"], disabled=bool(row["disabled"]),
                   source=row["source"], created_at=row["created_at"])


def _api_token(row) -> ApiToken:
    return ApiToken(id=row["id"], user_name=row["user_name"], label=row["label"], created_at=row["created_at"],
                    last_used_at=row["last_used_at"], revoked_at=row["revoked_at"])


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise AccountError(f"account name {name!r} is not allowed: 1 to 64 letters, digits, '.', '_', '@' or '-', "
                           "starting with a letter or digit")
    return name


def _check_role(name: str, role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"account {name!r}: role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def _check_full_name(name: str, full_name: str) -> str:
    full_name = (full_name or "").strip()
    if len(full_name) > _MAX_FULL_NAME or any(ord(c) < 32 or ord(c) == 127 for c in full_name):
        raise AccountError(f"account {name!r}: the full name must be one line of at most {_MAX_FULL_NAME} characters")
    return full_name


def _check_source(name: str, source: str) -> str:
    if not isinstance(source, str) or not _SOURCE.fullmatch(source):
        raise AccountError(f"account {name!r}: source {source!r} is not a source name")
    return source


def _check_password(name: str, password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"account {name!r}: the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > _MAX_PASSWORD_LENGTH:
        raise AccountError(f"account {name!r}: the password must have at most {_MAX_PASSWORD_LENGTH} characters")
    return password


class AccountStore:
    """The ``accounts`` and ``api_tokens`` tables of a listener :class:`~listener.store.Store`."""

    def __init__(self, store: Store, hasher: argon2.PasswordHasher | None = None) -> None:
        self.store = store
        self.hasher = hasher or argon2.PasswordHasher()
        self._clock: Callable[[], float] = time.time
        self._dummy_hash: str | None = None
        self._verified_tokens: dict[str, str] = {}  # sha256(token) -> token id; never the token itself
        self._lock = threading.Lock()

    # -- accounts ----------------------------------------------------------------------------
    def add(self, name: str, role: str, *, full_name: str = "", password: str | None = None,
            source: str = "local") -> Account:
        """``password=None`` makes an account that signs in only some other way (the identity
        provider, an API token), never with an empty or guessable password."""
        _check_name(name)
        _check_role(name, role)
        full_name = _check_full_name(name, full_name)
        _check_source(name, source)
        if password is not None and source != "local":
            raise AccountError(f"account {name!r} signs in through its identity provider ({source}), not with a password")
        password_hash = self.hasher.hash(_check_password(name, password)) if password is not None else None
        now = self._clock()
        with self.store.transaction() as db:
            if db.execute("SELECT 1 FROM accounts WHERE name=?", (name,)).fetchone():
                raise AccountError(f"account {name!r} already exists")
            db.execute("INSERT INTO accounts (name, full_name, role, password_hash, disabled, source, created_at, updated_at) "
                       "VALUES (?, ?, ?, ?, 0, ?, ?, ?)", (name, full_name, role, password_hash, source, now, now))
        return self._require(name)

    def get(self, name: str) -> Account | None:
        row = self.store.connection().execute("SELECT * FROM accounts WHERE name=?", (name,)).fetchone()
        return _account(row) if row else None

    def list(self) -> builtins.list[Account]:
        return [_account(r) for r in self.store.connection().execute("SELECT * FROM accounts ORDER BY name")]

    def count_enabled(self) -> int:
        """Zero means nobody can sign in by name yet: the app's first-run setup keys on it."""
        return self.store.connection().execute("SELECT COUNT(*) FROM accounts WHERE disabled=0").fetchone()[0]

    def set_password(self, name: str, password: str) -> Account:
        account = self._require(name)
        if account.source != "local":
            raise AccountError(f"account {name!r} signs in through its identity provider ({account.source}), "
                               "not with a password")
        return self._update(name, password_hash=self.hasher.hash(_check_password(name, password)))

    def set_role(self, name: str, role: str) -> Account:
        return self._update(name, role=_check_role(name, role))

    def set_full_name(self, name: str, full_name: str) -> Account:
        return self._update(name, full_name=_check_full_name(name, full_name))

    def disable(self, name: str) -> Account:
        """Tokens are left as they are: every check re-reads the account, so a disabled account's
        tokens stop working at once, and work again if it is enabled."""
        return self._update(name, disabled=1)

    def enable(self, name: str) -> Account:
        return self._update(name, disabled=0)

    def verify_password(self, name: str, password: str) -> Account | None:
        """Every refusal costs one argon2 verify, as a success does, so the time taken does not
        tell a guesser which names exist, are disabled or have a password."""
        row = self.store.connection().execute("SELECT * FROM accounts WHERE name=?", (name,)).fetchone()
        stored = row["password_hash"] if row is not None else None
        if not self._argon2_matches(stored or self._dummy(), password if isinstance(password, str) else ""):
            return None
        if row is None or stored is None or row["disabled"]:
            return None
        if self.hasher.check_needs_rehash(stored):  # the hasher's parameters were raised since this hash was made
            with self.store.transaction() as db:
                db.execute("UPDATE accounts SET password_hash=? WHERE name=? AND password_hash=?",
                           (self.hasher.hash(password), name, stored))
        return _account(row)

    def upsert_external(self, name: str, full_name: str, role: str, source: str = "oidc") -> Account:
        """The provider is the authority on who a person is and what they may do, so its name and
        role replace ours at each sign-on; but it may neither revive an account disabled here
        nor sign in as a local account that happens to share a name."""
        _check_name(name)
        _check_role(name, role)
        full_name = _check_full_name(name, full_name)
        _check_source(name, source)
        if source == "local":
            raise AccountError(f"account {name!r}: an external sign-on cannot have source 'local'")
        existing = self.get(name)
        if existing is None:
            try:
                return self.add(name, role, full_name=full_name, source=source)
            except AccountError:  # made by a concurrent first sign-on: carry on with it
                existing = self._require(name)
        if existing.source != source:
            raise AccountError(f"account {name!r} is a {existing.source} account; sign-on through {source} may not use it")
        if existing.disabled or (existing.full_name, existing.role) == (full_name, role):
            return existing
        return self._update(name, full_name=full_name, role=role)

    # -- API tokens --------------------------------------------------------------------------
    def create_token(self, name: str, label: str = "") -> tuple[ApiToken, str]:
        """The token is returned once and never again: only the argon2 hash of its secret is kept.
        Its id is in the clear, so a check finds the one row to verify instead of trying all."""
        account = self.get(name)
        if account is None or account.disabled:
            raise AccountError(f"account {name!r} does not exist or is disabled: no token for it")
        label = (label or "").strip()
        if len(label) > _MAX_LABEL or any(ord(c) < 32 for c in label):
            raise AccountError(f"token of {name!r}: the label must be one line of at most {_MAX_LABEL} characters")
        secret = secrets.token_urlsafe(32)
        secret_hash = self.hasher.hash(secret)
        now = self._clock()
        with self.store.transaction() as db:
            token_id = secrets.token_hex(6)
            while db.execute("SELECT 1 FROM api_tokens WHERE id=?", (token_id,)).fetchone():
                token_id = secrets.token_hex(6)
            db.execute("INSERT INTO api_tokens (id, user_name, hash, label, created_at) VALUES (?, ?, ?, ?, ?)",
                       (token_id, name, secret_hash, label, now))
        return self._token(token_id), f"mura_{token_id}_{secret}"

    def tokens(self, name: str | None = None) -> builtins.list[ApiToken]:
        """Revoked ones too: the accounts page shows what existed and when it stopped."""
        query = "SELECT * FROM api_tokens" + (" WHERE user_name=?" if name is not None else "") + " ORDER BY created_at, id"
        return [_api_token(r) for r in self.store.connection().execute(query, (name,) if name is not None else ())]

    def revoke_token(self, token_id: str) -> ApiToken:
        """Revoking twice keeps the first time: that is when it stopped working."""
        with self.store.transaction() as db:
            if not db.execute("UPDATE api_tokens SET revoked_at=COALESCE(revoked_at, ?) WHERE id=?",
                              (self._clock(), token_id)).rowcount:
                raise AccountError(f"no API token {token_id!r}")
        with self._lock:
            for digest in [d for d, cached_id in self._verified_tokens.items() if cached_id == token_id]:
                del self._verified_tokens[digest]
        return self._token(token_id)

    def verify_token(self, token: str) -> Account | None:
        """MONAI Label's client sends the token with every one of its many calls, and argon2 is
        slow on purpose; so a token that verified once is remembered (by its SHA-256) and only
        its row and its account are checked again, on every call, for a revocation or a
        disabled account."""
        match = _TOKEN.fullmatch(token) if isinstance(token, str) and len(token) <= 160 else None
        if match is None:
            return None
        token_id, secret = match.groups()
        row = self.store.connection().execute(
            "SELECT t.hash, t.last_used_at, t.revoked_at, a.* FROM api_tokens t JOIN accounts a ON a.name=t.user_name "
            "WHERE t.id=?", (token_id,)).fetchone()
        if row is None or row["revoked_at"] is not None or row["disabled"]:
            return None
        digest = _sha256(token)
        if self._verified_tokens.get(digest) != token_id:
            if not self._argon2_matches(row["hash"], secret):
                return None
            with self._lock:
                if len(self._verified_tokens) >= _TOKEN_CACHE_SIZE:
                    self._verified_tokens.pop(next(iter(self._verified_tokens)))
                self._verified_tokens[digest] = token_id
        now = self._clock()
        if row["last_used_at"] is None or now - row["last_used_at"] >= _TOKEN_TOUCH_S:
            with self.store.transaction() as db:
                db.execute("UPDATE api_tokens SET last_used_at=? WHERE id=?", (now, token_id))
        return _account(row)

    # -- helpers -----------------------------------------------------------------------------
    def _argon2_matches(self, stored: str, secret: str) -> bool:
        try:
            return self.hasher.verify(stored, secret)
        except (VerificationError, InvalidHashError):
            return False

    def _dummy(self) -> str:
        """A hash made with this hasher's own parameters, so a refusal costs what a check costs."""
        if self._dummy_hash is None:
            self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))
        return self._dummy_hash

    def _require(self, name: str) -> Account:
        account = self.get(name)
        if account is None:
            raise AccountError(f"no account {name!r}")
        return account

    def _update(self, name: str, **columns: object) -> Account:
        assignments = ", ".join(f"{column}=?" for column in columns)  # column names come from this module only
        with self.store.transaction() as db:
            if not db.execute(f"UPDATE accounts SET {assignments}, updated_at=? WHERE name=?",
                              (*columns.values(), self._clock(), name)).rowcount:
                raise AccountError(f"no account {name!r}")
        return self._require(name)

    def _token(self, token_id: str) -> ApiToken:
        return _api_token(self.store.connection().execute("SELECT * FROM api_tokens WHERE id=?", (token_id,)).fetchone())


# -- sessions ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Session:
    user_name: str
    via: str
    csrf_token: str
    created_at: float
    last_seen: float
    expires_at: float
    idle_s: float


class SessionStore:
    """Server-side sessions: the browser's cookie and MONAI Label's /auth/token access tokens.

    Kept in the database rather than in a signed cookie so that signing out, disabling an account
    or restarting the app behave as people expect: an ended session is over everywhere at once.
    The row's key is the SHA-256 of the session id, so the database holds nothing a thief could
    present, and the lookup's timing depends on the hash, not on how much of a guess was right.
    """

    def __init__(self, store: Store, idle_s: float, max_s: float) -> None:
        self.store = store
        self.idle_s = float(idle_s)
        self.max_s = float(max_s)

    def create(self, user_name: str, via: str, now: float | None = None) -> tuple[str, Session]:
        now = time.time() if now is None else now
        session_id, csrf_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self.store.transaction() as db:
            db.execute("INSERT INTO sessions (id_hash, user_name, via, csrf_token, created_at, last_seen, expires_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (_sha256(session_id), user_name, via, csrf_token, now, now, now + self.max_s))
        return session_id, Session(user_name, via, csrf_token, now, now, now + self.max_s, self.idle_s)

    def get(self, session_id: str, now: float | None = None) -> Session | None:
        now = time.time() if now is None else now
        session = self._live(session_id, now)
        if session is not None and now - session.last_seen >= _SESSION_TOUCH_S:
            with self.store.transaction() as db:
                db.execute(f"UPDATE sessions SET last_seen={_GREATEST[self.store.dialect]}(last_seen, ?) WHERE id_hash=?",
                           (now, _sha256(session_id)))
            session = Session(session.user_name, session.via, session.csrf_token, session.created_at, now,
                              session.expires_at, session.idle_s)
        return session

    def end(self, session_id: str, now: float | None = None) -> Session | None:
        """Marks the row ended whatever its state (an expired session must not come back if the
        idle time is raised later); returns the session only if it was still live."""
        now = time.time() if now is None else now
        session = self._live(session_id, now)
        with self.store.transaction() as db:
            db.execute("UPDATE sessions SET ended_at=? WHERE id_hash=? AND ended_at IS NULL", (now, _sha256(session_id)))
        return session

    def expire(self, session_id: str, now: float | None = None) -> tuple[Session, str] | None:
        """A session that ran out (idle, or past its end) and was not yet marked: marks it ended and
        returns it with why (``idle`` | ``max_age``), once, so its expiry is audited once."""
        now = time.time() if now is None else now
        if not isinstance(session_id, str) or not session_id:
            return None
        with self.store.transaction() as db:
            row = db.execute("SELECT * FROM sessions WHERE id_hash=? AND ended_at IS NULL", (_sha256(session_id),)).fetchone()
            if row is None or (now < row["expires_at"] and now - row["last_seen"] <= self.idle_s):
                return None
            db.execute("UPDATE sessions SET ended_at=? WHERE id_hash=?", (now, _sha256(session_id)))
        session = Session(row["user_name"], row["via"], row["csrf_token"], row["created_at"], row["last_seen"],
                          row["expires_at"], self.idle_s)
        return session, "max_age" if now >= row["expires_at"] else "idle"

    def end_user(self, user_name: str, now: float | None = None) -> int:
        """Ends every session of the account; returns how many were still live."""
        now = time.time() if now is None else now
        with self.store.transaction() as db:
            live = db.execute("SELECT COUNT(*) FROM sessions WHERE user_name=? AND ended_at IS NULL AND expires_at > ? "
                              "AND last_seen + ? >= ?", (user_name, now, self.idle_s, now)).fetchone()[0]
            db.execute("UPDATE sessions SET ended_at=? WHERE user_name=? AND ended_at IS NULL", (now, user_name))
        return live

    def purge(self, now: float | None = None) -> int:
        """Rows stay a day after they stop working, so a sign-out or expiry can still be looked into."""
        now = time.time() if now is None else now
        with self.store.transaction() as db:
            return db.execute(f"DELETE FROM sessions WHERE {_LEAST[self.store.dialect]}(expires_at, last_seen + ?, "
                              "COALESCE(ended_at, expires_at)) <= ?", (self.idle_s, now - _PURGE_AFTER_S)).rowcount

    def _live(self, session_id: str, now: float) -> Session | None:
        if not isinstance(session_id, str) or not session_id:
            return None
        row = self.store.connection().execute("SELECT * FROM sessions WHERE id_hash=?", (_sha256(session_id),)).fetchone()
        if row is None or row["ended_at"] is not None or now >= row["expires_at"] or now - row["last_seen"] > self.idle_s:
            return None
        return Session(row["user_name"], row["via"], row["csrf_token"], row["created_at"], row["last_seen"],
                       row["expires_at"], self.idle_s)
