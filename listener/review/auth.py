"""Who may use the review app: a bearer token for programs, a session cookie for the browser.

With ``token`` set in ``[review]``, every path but ``/health`` and the page's static files needs
``Authorization: Bearer <token>`` or the session cookie that signing in with the token gives
(``/?token=...`` or the sign-in form). The cookie is HttpOnly (no script can read it) and
SameSite=Strict (no other site can make the browser send it), and holds a random session id, not
the token. Without a token the app is reachable from this machine only (see
:mod:`listener.review.server`); MONAI Label's client sends no token by default.
"""
from __future__ import annotations

import hmac
import secrets
import time
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

__all__ = ["COOKIE", "TokenAuth"]

COOKIE = "mura_review_session"
_OPEN_PATHS = ("/health", "/favicon.ico")
_SESSION_S = 12 * 3600

_SIGN_IN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mura-monai review: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/style.css"></head>
<body class="signin"><form method="post" action="/login" class="signin-box">
<h1>mura-monai review</h1><p class="muted">Research software: not for diagnostic use.</p>
<label for="token">Access token</label><input id="token" name="token" type="password" autocomplete="current-password" autofocus>
<button type="submit" class="primary">Sign in</button>{error}</form></body></html>"""


class TokenAuth:
    """ASGI middleware; with an empty token it lets everything through."""

    def __init__(self, app, token: str) -> None:
        self.app = app
        self.token = token
        self.sessions: dict[str, float] = {}  # session id -> expiry (time.time())

    def _valid_token(self, candidate: str | None) -> bool:
        return candidate is not None and candidate != "" and hmac.compare_digest(candidate.encode(), self.token.encode())

    def _valid_session(self, session: str | None) -> bool:
        expiry = self.sessions.get(session or "")
        if expiry is None:
            return False
        if expiry < time.time():
            self.sessions.pop(session or "", None)
            return False
        return True

    def _signed_in(self, redirect_to: str) -> Response:
        now = time.time()
        for session, expiry in list(self.sessions.items()):
            if expiry < now:
                del self.sessions[session]
        session = secrets.token_urlsafe(32)
        self.sessions[session] = now + _SESSION_S
        response = RedirectResponse(redirect_to, status_code=303)
        response.set_cookie(COOKIE, session, max_age=_SESSION_S, httponly=True, samesite="strict", path="/")
        return response

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.token:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        path = scope["path"]
        if path in _OPEN_PATHS or path.startswith("/static/"):
            await self.app(scope, receive, send)
            return
        if path == "/" and "token" in request.query_params:
            if self._valid_token(request.query_params["token"]):
                await self._signed_in("/")(scope, receive, send)  # the token leaves the address bar
            else:
                await HTMLResponse(_SIGN_IN.format(error='<p class="error">Wrong token.</p>'), 401)(scope, receive, send)
            return
        if path == "/login" and scope["method"] == "POST":
            body = parse_qs((await request.body()).decode("utf-8", "replace"))
            if self._valid_token((body.get("token") or [""])[0]):
                await self._signed_in("/")(scope, receive, send)
            else:
                await HTMLResponse(_SIGN_IN.format(error='<p class="error">Wrong token.</p>'), 401)(scope, receive, send)
            return
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if (scheme.lower() == "bearer" and self._valid_token(credentials.strip())) or \
                self._valid_session(request.cookies.get(COOKIE)):
            await self.app(scope, receive, send)
            return
        if path == "/" and scope["method"] == "GET":
            response: Response = HTMLResponse(_SIGN_IN.format(error=""), 401)
        else:
            response = JSONResponse({"detail": "Not authenticated: send Authorization: Bearer <token>"}, 401,
                                    headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)
