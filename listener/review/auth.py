"""Who is asking, and what they may do: named accounts, API tokens, sessions, CSRF, sign-in.

A hospital has to know which person accepted or overrode a finding, so the review app signs in
people, not a shared secret:

- **The page** signs in with a user name and password (or the hospital's OpenID Connect
  provider, :mod:`listener.review.oidc`) and then holds a session cookie: HttpOnly, SameSite=Strict,
  a random id whose SHA-256 is all the database keeps. The session ends after
  ``session_idle_minutes`` without a request, after ``session_max_hours`` in any case, on sign-out,
  and when the account is disabled. Every request that changes something and rides on the cookie
  carries the session's CSRF token in ``X-CSRF-Token`` (the sign-in form a double-submit cookie).
- **Programs** (MONAI Label's client, scripts) send ``Authorization: Bearer``: a per-user API token
  (``mura-review tokens create``), or the access token MONAI Label's client gets from
  ``POST /auth/token`` with a user name and password. A browser never adds that header by itself,
  so bearer requests need no CSRF token.
- **The shared token** of earlier versions (``[review] token``) still signs in, as the one identity
  ``token_user`` with ``token_role``: deprecated, said so at start, kept so set-ups do not break.
- **Nobody configured** (no account, no shared token, no sign-on): the app listens on 127.0.0.1
  only (:func:`listener.review.server.effective_host`) and lets this machine in unnamed. Once a
  first account exists, sign-in is required from the next request on.

Roles (:data:`listener.config.ROLES`): ``viewer`` reads, ``reviewer`` also labels and uploads,
``admin`` also manages accounts and reads the audit trail through the API.
"""
from __future__ import annotations

import hmac
import html
import logging
import re
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.authentication import BaseUser
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from listener.config import ReviewSettings
from listener.review.accounts import Account, AccountError, AccountStore, Session, SessionStore, role_allows
from listener.review.audit import AuditLog
from listener.review.security import SignInLimiter

__all__ = ["COOKIE", "CSRF_HEADER", "Identity", "ReviewAuth", "auth_routes", "identity_of", "require"]

logger = logging.getLogger("listener.review")

COOKIE = "mura_review_session"
LOGIN_COOKIE = "mura_review_login"      # the sign-in form's double-submit CSRF token
CSRF_HEADER = "x-csrf-token"
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# reachable before signing in: the health check, the sign-in endpoints, the page's own files
_OPEN_PATHS = ("/health", "/favicon.ico", "/login", "/auth/", "/auth/token", "/auth/oidc/login", "/auth/oidc/callback")
_NAME = re.compile(r"[^\w.@-]")


@dataclass(frozen=True)
class Identity(BaseUser):
    """The one asking; ``name`` None on an unconfigured app (this machine, unnamed)."""

    name: str | None
    full_name: str
    role: str
    via: str                         # password | oidc | token | access-token | shared-token | open
    csrf_token: str | None = None    # cookie sessions only
    session_expires_at: float | None = None

    @property
    def is_authenticated(self) -> bool:
        return self.name is not None

    @property
    def display_name(self) -> str:
        return self.full_name or self.name or ""

    @property
    def identity(self) -> str:
        return self.name or ""


def identity_of(request: HTTPConnection) -> Identity:
    user = request.scope.get("user")
    assert isinstance(user, Identity), "the review app runs behind ReviewAuth"
    return user


def require(request: HTTPConnection, role: str, action: str) -> Identity:
    """The caller's identity if its role allows ``action``; 403 (audited) otherwise."""
    who = identity_of(request)
    if role_allows(who.role, role):
        return who
    auth: ReviewAuth = request.app.state.auth
    auth.audit.record("access_denied", who.name, outcome="refused", client=_client(request), action=action,
                      role=who.role, needed=role)
    raise HTTPException(403, f"{action} needs the {role} role; {who.name or 'this session'} is a {who.role}")


def _client(request: HTTPConnection) -> str | None:
    return request.client.host if request.client else None


def _clean_name(text: str) -> str:
    """A user name as typed, fit for the audit trail (bounded, no control characters)."""
    return _NAME.sub("?", text.strip())[:64]


class ReviewAuth:
    """Accounts, sessions, limits and the audit trail of one app, and the ASGI gate in front of it."""

    def __init__(self, settings: ReviewSettings, accounts: AccountStore, sessions: SessionStore, audit: AuditLog,
                 *, https: bool = False) -> None:
        self.settings = settings
        self.accounts = accounts
        self.sessions = sessions
        self.audit = audit
        self.https = https
        self.limiter = SignInLimiter(settings.sign_in_attempts, settings.sign_in_window_s)
        # decided once: an app that started open listens on 127.0.0.1 only; one that started with
        # sign-in never opens, even if every account is later disabled
        self.started_open = not self.configured()
        if settings.token:
            logger.warning("[review] token is deprecated: it signs everyone in as one identity; add accounts with "
                           "'mura-review users add' and remove the token", extra={"token_user": settings.token_user})

    def configured(self) -> bool:
        return bool(self.settings.token or self.settings.oidc or self.accounts.list())

    def is_open(self) -> bool:
        return self.started_open and not self.accounts.list()

    # -- identities ---------------------------------------------------------------------
    def _shared_identity(self, session: Session | None = None) -> Identity:
        s = self.settings
        return Identity(s.token_user, s.token_full_name, s.token_role, "shared-token",
                        session.csrf_token if session else None, session.expires_at if session else None)

    def _account_identity(self, account: Account | None, via: str, session: Session | None = None) -> Identity | None:
        if account is None or account.disabled:
            return None
        return Identity(account.name, account.full_name, account.role, via,
                        session.csrf_token if session else None, session.expires_at if session else None)

    def shared_token_matches(self, candidate: str) -> bool:
        token = self.settings.token
        return bool(token) and hmac.compare_digest(candidate.encode(), token.encode())

    def from_bearer(self, token: str) -> Identity | None:
        if token.startswith("mura_"):
            return self._account_identity(self.accounts.verify_token(token), "token")
        if self.shared_token_matches(token):
            return self._shared_identity()
        session = self.sessions.get(token)
        if session is None or session.via != "access-token":
            return None  # a browser session's id is no bearer token
        return self._account_identity(self.accounts.get(session.user_name), "access-token")

    def from_cookie(self, session_id: str, client: str | None = None) -> Identity | None:
        session = self.sessions.get(session_id)
        if session is None:
            expired = self.sessions.expire(session_id)
            if expired is not None:
                self.audit.record("session_expired", expired[0].user_name, client=client, via=expired[0].via,
                                  reason=expired[1])
            return None
        if session.via == "access-token":
            return None
        if session.via == "shared-token":
            return self._shared_identity(session) if self.settings.token else None
        identity = self._account_identity(self.accounts.get(session.user_name), session.via, session)
        if identity is None:
            self.sessions.end(session_id)
        return identity

    # -- sign-in ------------------------------------------------------------------------
    def start_session(self, request: HTTPConnection, name: str, via: str, redirect_to: str = "/") -> Response:
        session_id, session = self.sessions.create(name, via)
        self.audit.record("sign_in", name, client=_client(request), via=via)
        response = RedirectResponse(redirect_to, status_code=303)
        response.set_cookie(COOKIE, session_id, max_age=int(session.expires_at - session.created_at), httponly=True,
                            samesite="strict", secure=self.https, path="/")
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def oidc_signed_in(self, request: Request, identity) -> Response:
        """The provider vouched for ``identity`` (:class:`listener.review.oidc.OidcIdentity`)."""
        try:
            account = self.accounts.upsert_external(identity.name, identity.full_name, identity.role)
        except AccountError:
            return await self.oidc_refused(request, "local_account", identity.name)
        if account.disabled:
            return await self.oidc_refused(request, "disabled", identity.name)
        response = self.start_session(request, account.name, "oidc")
        # The provider's redirect made this a cross-site navigation, on which the browser withholds
        # a SameSite=Strict cookie; a page of ours that moves on to "/" is same-site again.
        page = HTMLResponse('<!doctype html><html><head><meta http-equiv="refresh" content="0;url=/">'
                            '<title>Signed in</title></head><body><a href="/">Continue</a></body></html>')
        page.raw_headers += [(k, v) for k, v in response.raw_headers if k == b"set-cookie"]
        return page

    async def oidc_refused(self, request: Request, reason: str, name: str | None) -> Response:
        self.refuse_sign_in(request, name, reason, "oidc")
        return self.sign_in_page(403, f"Single sign-on refused ({reason.replace('_', ' ')}).")

    def refuse_sign_in(self, request: HTTPConnection, name: str | None, reason: str, via: str) -> None:
        self.audit.record("sign_in_failed", _clean_name(name) if name else None, outcome="refused",
                          client=_client(request), via=via, reason=reason)

    def check_password(self, request: HTTPConnection, name: str, password: str, via: str) -> Account | Response:
        """The account, or the refusal (429 while over the limit, 401 otherwise) to send."""
        keys = (f"user:{name.lower()}", f"client:{_client(request)}")
        wait = self.limiter.blocked(*keys)
        if wait is not None:
            self.refuse_sign_in(request, name, "rate_limited", via)
            return self._refusal(request, 429, "Too many failed sign-ins: try again later.",
                                 {"Retry-After": str(max(1, round(wait)))})
        account = self.accounts.verify_password(name, password) if name and password else None
        if account is None:
            self.limiter.failed(*keys)
            self.refuse_sign_in(request, name, "wrong_credentials", via)
            return self._refusal(request, 401, "Wrong user name or password.")
        self.limiter.succeeded(*keys)
        return account

    def _refusal(self, request: HTTPConnection, status: int, message: str, headers: dict | None = None) -> Response:
        if request.url.path == "/login":
            return self.sign_in_page(status, message, headers)
        return JSONResponse({"detail": message}, status, headers=headers)

    def sign_in_page(self, status: int = 401, error: str = "", headers: dict | None = None) -> Response:
        csrf = secrets.token_urlsafe(24)
        oidc = self.settings.oidc
        parts = [_SIGN_IN_HEAD, f'<input type="hidden" name="csrf" value="{csrf}">', _PASSWORD_FIELDS]
        if self.settings.token:
            parts.append(_TOKEN_FIELDS)
        parts.append('<button type="submit" class="primary">Sign in</button>')
        if error:
            parts.append(f'<p class="error" role="alert">{html.escape(error)}</p>')
        parts.append("</form>")
        if oidc is not None:
            parts.append(f'<p class="sso"><a class="button" href="/auth/oidc/login">{html.escape(oidc.button)}</a></p>')
        parts.append("</div></body></html>")
        response = HTMLResponse("".join(parts), status, headers=headers)
        response.set_cookie(LOGIN_COOKIE, csrf, max_age=3600, httponly=True, samesite="strict", secure=self.https,
                            path="/login")
        response.headers["Cache-Control"] = "no-store"
        return response

    # -- the gate -----------------------------------------------------------------------
    def identify(self, request: HTTPConnection) -> tuple[Identity | None, bool]:
        """``(identity, by_cookie)``; identity None: not signed in."""
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return self.from_bearer(credentials.strip()), False
        session_id = request.cookies.get(COOKIE)
        if session_id:
            identity = self.from_cookie(session_id, _client(request))
            if identity is not None:
                return identity, True
        if self.is_open():
            return Identity(None, "", "reviewer", "open"), False
        return None, False

    def csrf_ok(self, request: HTTPConnection, identity: Identity) -> bool:
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return False
        sent = request.headers.get(CSRF_HEADER, "")
        return identity.csrf_token is not None and hmac.compare_digest(sent.encode(), identity.csrf_token.encode())


class AuthMiddleware:
    """Puts the caller's :class:`Identity` in ``scope["user"]``; answers 401 / 403 itself."""

    def __init__(self, app, auth: ReviewAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        path = scope["path"]
        identity, by_cookie = self.auth.identify(request)
        if path in _OPEN_PATHS or path.startswith("/static/"):  # the sign-in forms carry their own CSRF token
            scope["user"] = identity or Identity(None, "", "viewer", "anonymous")
            await self.app(scope, receive, send)
            return
        if identity is None:
            response: Response
            if path == "/" and scope["method"] == "GET":
                if "token" in request.query_params:  # the deprecated shared-token link: sign in, drop it from the URL
                    response = self._token_link(request)
                elif request.cookies.get(COOKIE):
                    response = self.auth.sign_in_page(401, "Your session has ended: please sign in again.")
                else:
                    response = self.auth.sign_in_page()
            else:
                response = JSONResponse({"detail": "Not authenticated: sign in, or send Authorization: Bearer <token>"},
                                        401, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        if by_cookie and scope["method"] not in _SAFE_METHODS and not self.auth.csrf_ok(request, identity):
            await JSONResponse({"detail": "CSRF token missing or wrong: reload the page"}, 403)(scope, receive, send)
            return
        scope["user"] = identity
        await self.app(scope, receive, send)

    def _token_link(self, request: Request) -> Response:
        if self.auth.shared_token_matches(request.query_params["token"]):
            return self.auth.start_session(request, self.auth.settings.token_user, "shared-token")
        self.auth.refuse_sign_in(request, None, "wrong_token", "shared-token")
        return self.auth.sign_in_page(401, "Wrong token.")


def auth_routes(auth: ReviewAuth) -> list[Route]:
    """Sign-in and sign-out for the page, and MONAI Label's ``/auth/`` endpoints for its client."""

    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))

        def field(key: str) -> str:
            return (form.get(key) or [""])[0]

        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(field("csrf").encode(), expected.encode()):
            return auth.sign_in_page(403, "The sign-in form expired: please sign in again.")
        if field("token"):
            if auth.shared_token_matches(field("token")):
                return auth.start_session(request, auth.settings.token_user, "shared-token")
            auth.refuse_sign_in(request, None, "wrong_token", "shared-token")
            return auth.sign_in_page(401, "Wrong token.")
        checked = auth.check_password(request, field("username").strip(), field("password"), "password")
        if isinstance(checked, Response):
            return checked
        return auth.start_session(request, checked.name, "password")

    async def logout(request: Request) -> Response:
        who = identity_of(request)
        session_id = request.cookies.get(COOKIE)
        if session_id and auth.sessions.end(session_id) is not None:
            auth.audit.record("sign_out", who.name, client=_client(request), via=who.via)
        response = JSONResponse({"signed_out": True})
        response.delete_cookie(COOKIE, path="/")
        return response

    async def auth_info(request: Request) -> Response:
        # MONAI Label's client asks here whether to fetch a token (auth_enabled)
        return JSONResponse({"enabled": not auth.is_open(), "client_id": "mura-monai-review",
                             "oidc": auth.settings.oidc is not None})

    async def token(request: Request) -> Response:
        # MONAI Label's client.auth_token(username, password): the OAuth 2 password grant
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        name, password = (form.get("username") or [""])[0].strip(), (form.get("password") or [""])[0]
        if (form.get("grant_type") or ["password"])[0] != "password":
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        checked = auth.check_password(request, name, password, "access-token")
        if isinstance(checked, Response):
            return checked
        access, session = auth.sessions.create(checked.name, "access-token")
        auth.audit.record("sign_in", checked.name, client=_client(request), via="access-token")
        return JSONResponse({"access_token": access, "token_type": "bearer",
                             "expires_in": int(session.expires_at - time.time())},
                            headers={"Cache-Control": "no-store"})

    async def token_valid(request: Request) -> Response:
        who = identity_of(request)
        if not who.is_authenticated and not auth.is_open():
            return JSONResponse({"valid": False}, 401)
        return JSONResponse({"valid": True})

    async def me(request: Request) -> Response:
        who = identity_of(request)
        return JSONResponse({"user": who.name, "full_name": who.full_name, "display_name": who.display_name,
                             "role": who.role, "via": who.via, "csrf_token": who.csrf_token,
                             "session_expires_at": who.session_expires_at, "open": who.via == "open"},
                            headers={"Cache-Control": "no-store"})

    return [
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/auth/", auth_info),
        Route("/auth/token", token, methods=["POST"]),
        Route("/auth/token/valid", token_valid),
        Route("/auth/me", me),
    ]


_SIGN_IN_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mura-monai review: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="/static/favicon.svg"><link rel="stylesheet" href="/static/style.css"></head>
<body class="signin"><div class="signin-box"><form method="post" action="/login" id="signin-form">
<h1>mura-monai review</h1><p class="muted">Research software: not for diagnostic use.</p>"""
_PASSWORD_FIELDS = """<label for="username">User name</label>
<input id="username" name="username" autocomplete="username" autofocus maxlength="64">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password">"""
_TOKEN_FIELDS = """<details class="legacy"><summary>Shared access token (deprecated)</summary>
<input id="token" name="token" type="password" autocomplete="off" aria-label="shared access token"></details>"""
