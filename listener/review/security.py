"""What the review app does for every request before its routes see it: browser hardening headers,
request body limits, and the count of failed sign-ins.

The middleware is plain ASGI rather than Starlette's ``BaseHTTPMiddleware``: that one runs the app
in a task of its own and buffers nothing it can be told about, so it can neither refuse a body
while it streams in nor pass the app's response through untouched.
"""
from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CSP", "MIB", "BodyLimit", "SecurityHeaders", "SignInLimiter"]

# Everything the page needs is served by the app itself (no CDN, no inline script or style), so
# an injected <script> or a link to another origin has nowhere to load from; blob: for the
# heatmaps and radiographs the page draws from fetched bytes.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; font-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
MIB = 1024 * 1024

_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),                 # frame-ancestors for browsers that predate CSP 2
    (b"referrer-policy", b"no-referrer"),          # study ids in URLs must not leave with a link
    (b"x-content-type-options", b"nosniff"),       # an uploaded file is never run as a script
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
# a year: browsers that saw the app once over HTTPS refuse a downgraded (plain HTTP) address
_HSTS = (b"strict-transport-security", b"max-age=31536000")


class SecurityHeaders:
    """Hardening headers on every HTTP response; a header the app set itself is left as it is
    (a route that must be framed, or that needs another policy, says so)."""

    def __init__(self, app: ASGIApp, tls: bool) -> None:
        self.app = app
        # HSTS over plain HTTP is ignored by browsers at best; over an HTTPS address a user may later
        # reach by HTTP too it would lock them out, so only when the app itself serves HTTPS
        self.headers = _HEADERS + [_HSTS] if tls else list(_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in self.headers if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _BodyTooLarge(Exception):
    """Raised into the app from ``receive`` once the body passed its limit: the app must stop, not
    go on with a truncated body."""


class BodyLimit:
    """Refuses a request body over its limit (413) before the app buffers it: Starlette reads a
    body or a multipart form into memory whole, so without a limit one request could exhaust it.

    ``limits`` maps ``(METHOD, path)`` to bytes for the routes that take more than
    ``default_bytes`` (a DICOM upload); a trailing slash does not count, since Starlette redirects
    ``/datastore`` to ``/datastore/`` and the client sends its body again there.
    """

    def __init__(self, app: ASGIApp, default_bytes: int = MIB, limits: dict[tuple[str, str], int] | None = None) -> None:
        self.app = app
        self.default_bytes = default_bytes
        self.limits = {(method.upper(), _route(path)): limit for (method, path), limit in (limits or {}).items()}

    def limit(self, method: str, path: str) -> int:
        return self.limits.get((method.upper(), _route(path)), self.default_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["method"], scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            # the server drains the body it then receives: nothing of it is kept
            await _refuse(scope, limit, send)
            return
        received = 0
        refused = started = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                raise _BodyTooLarge()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not started:  # else the answer the app began is cut short: uvicorn closes the connection
                        await _refuse(scope, limit, send)
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 went out; whatever the app answers to its failed read does not
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            # once refused, what the app raises is the failed read (or its own wrapping of it):
            # the request has its answer
            if not refused:
                raise


def _route(path: str) -> str:
    return path.rstrip("/") or "/"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses such a request itself; counting still applies
    return None


async def _refuse(scope: Scope, limit: int, send: Send) -> None:
    body = json.dumps({"detail": f"request body over {limit / MIB:g} MiB "
                                 f"(the limit for {scope['method']} {scope['path']})"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class SignInLimiter:
    """Failed sign-ins per key in a sliding window: a password is guessed one attempt at a time, so
    at most ``attempts`` guesses per ``window_s`` against one user name (``"user:NAME"``) and from
    one address (``"client:IP"``), whichever runs out first.

    Only the last ``attempts`` failures of a key are kept, and keys with none left in the window are
    dropped as others fail, so names an attacker makes up cost memory only for one window; beyond
    ``max_keys`` the longest quiet keys go first.
    """

    def __init__(self, attempts: int, window_s: float, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        if attempts < 1 or window_s <= 0:
            raise ValueError("attempts and window_s must be positive")
        self.attempts = attempts
        self.window_s = window_s
        self.clock = clock
        self.max_keys = max_keys
        # least recently failed first: the stale keys are at the front
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()  # sign-in handlers may run in the thread pool

    def blocked(self, *keys: str) -> float | None:
        """Seconds until every one of ``keys`` allows another attempt, or ``None`` when they all do now."""
        now = self.clock()
        wait = 0.0
        with self._lock:
            for key in keys:
                times = self._failures.get(key)
                if times is None:
                    continue
                if times[-1] <= now - self.window_s:
                    del self._failures[key]
                elif len(times) >= self.attempts:
                    # the oldest of the last `attempts` failures leaving the window frees one attempt
                    wait = max(wait, times[0] + self.window_s - now)
        return wait if wait > 0 else None

    def failed(self, *keys: str) -> None:
        now = self.clock()
        with self._lock:
            for key in keys:
                times = self._failures.pop(key, None) or deque(maxlen=self.attempts)
                times.append(now)
                self._failures[key] = times  # to the back: most recently failed
            self._drop_stale(now)

    def succeeded(self, *keys: str) -> None:
        """Clears the ``user:`` keys' counts; an address keeps its count, so that signing in to an
        account of one's own does not buy more guesses at the others."""
        with self._lock:
            for key in keys:
                if key.startswith("user:"):
                    self._failures.pop(key, None)

    def __len__(self) -> int:
        return len(self._failures)

    def _drop_stale(self, now: float) -> None:
        while self._failures:
            key, times = next(iter(self._failures.items()))
            if times[-1] > now - self.window_s and len(self._failures) <= self.max_keys:
                break
            del self._failures[key]
