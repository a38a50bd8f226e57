"""Hardening of the review app: browser security headers, request body limits, the sign-in limiter,
and HTTPS. Small Starlette apps behind the middleware, and the real app for TLS, served by uvicorn
on free ports of 127.0.0.1: no Orthanc, no listener."""
from __future__ import annotations

import asyncio
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from listener.config import load_config
from listener.review.security import CSP, MIB, BodyLimit, SecurityHeaders, SignInLimiter
from listener.review.server import make_server, tls_files
from tests.listener.orthanc import free_port
from tests.listener.review.conftest import wait_for
from tests.listener.support import write_config

HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
HSTS = "Strict-Transport-Security"
KIB = 1024
LIMIT = 64 * KIB           # the test app's default limit
UPLOAD_LIMIT = 256 * KIB   # PUT /datastore/


class Served:
    """An ASGI app behind uvicorn in a thread of the test process."""

    def __init__(self, server: uvicorn.Server) -> None:
        self.server = server
        self.port = server.config.port
        self.thread = threading.Thread(target=server.run, name="hardening-app", daemon=True)
        self.thread.start()
        wait_for(lambda: server.started or not self.thread.is_alive(), 30, "the app", poll_s=0.02)
        assert server.started

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


@pytest.fixture
def serve():
    """``serve(app)`` or ``serve(server=uvicorn.Server)``: served until the test ends."""
    started: list[Served] = []

    def start(app=None, server: uvicorn.Server | None = None) -> Served:
        server = server or uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None,
                                                         access_log=False, lifespan="on"))
        started.append(Served(server))
        return started[-1]

    yield start
    for served in started:
        served.stop()


def request(port: int, path: str, method: str = "GET", body=None, headers: dict | None = None,
            context: ssl.SSLContext | None = None):
    """``(status, headers, body)``; ``body`` an iterable of chunks is sent chunked."""
    connection = (http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context) if context
                  else http.client.HTTPConnection("127.0.0.1", port, timeout=30))
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def tiny_app(calls: list) -> Starlette:
    """``calls`` gets ``"entered"`` when the echo route starts and the body once it has read it all."""

    async def ok(request: Request):
        return PlainTextResponse("ok")

    async def secret(request: Request):
        raise HTTPException(401, "sign in first")

    async def framed(request: Request):
        return PlainTextResponse("framed", headers={"X-Frame-Options": "SAMEORIGIN",
                                                    "Content-Security-Policy": "frame-ancestors 'self'"})

    async def echo(request: Request):
        calls.append("entered")
        body = await request.body()
        calls.append(body)
        return JSONResponse({"length": len(body), "sha256": hashlib.sha256(body).hexdigest()})

    return Starlette(routes=[Route("/", ok), Route("/secret", secret), Route("/framed", framed),
                             Route("/upload", echo, methods=["POST", "PUT"]),
                             Route("/datastore/", echo, methods=["POST", "PUT"])])


class Tracked:
    """Counts the requests the wrapped app is done with (answered or failed), so that a test looks at
    what the app saw only once it has seen all of it."""

    def __init__(self, app) -> None:
        self.app = app
        self.finished = 0

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                self.finished += 1


# -- headers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("tls", [False, True])
def test_every_response_carries_the_headers_and_hsts_only_with_tls(serve, tls):
    served = serve(SecurityHeaders(tiny_app([]), tls=tls))
    for path, status in (("/", 200), ("/missing", 404), ("/secret", 401)):
        code, headers, _ = request(served.port, path)
        assert code == status, path
        for name, value in HEADERS.items():
            assert headers.get_all(name) == [value], (path, name)
        assert headers.get_all(HSTS) == (["max-age=31536000"] if tls else None), path


def test_a_header_the_app_set_is_not_overwritten(serve):
    served = serve(SecurityHeaders(tiny_app([]), tls=True))
    code, headers, body = request(served.port, "/framed")
    assert (code, body) == (200, b"framed")
    assert headers.get_all("X-Frame-Options") == ["SAMEORIGIN"]
    assert headers.get_all("Content-Security-Policy") == ["frame-ancestors 'self'"]
    assert headers.get_all("Referrer-Policy") == ["no-referrer"] and headers.get_all(HSTS) == ["max-age=31536000"]


# -- body limits ------------------------------------------------------------------------------

@pytest.fixture
def limited(serve):
    calls: list = []
    tracked = Tracked(tiny_app(calls))
    served = serve(SecurityHeaders(BodyLimit(tracked, default_bytes=LIMIT, limits={("PUT", "/datastore/"): UPLOAD_LIMIT}),
                                   tls=False))
    served.calls, served.tracked = calls, tracked
    return served


def _finished(served, requests: int) -> None:
    wait_for(lambda: served.tracked.finished >= requests, 10, "the app to finish", poll_s=0.01)
    assert served.tracked.finished == requests


def _chunks(data: bytes, size: int = 8 * KIB):
    for start in range(0, len(data), size):
        yield data[start:start + size]


def _detail(body: bytes) -> str:
    return json.loads(body)["detail"]


def test_a_declared_body_over_the_limit_is_refused_before_any_byte_is_sent(limited):
    connection = http.client.HTTPConnection("127.0.0.1", limited.port, timeout=30)
    try:
        connection.putrequest("POST", "/upload")
        connection.putheader("Content-Length", str(10 * MIB))
        connection.endheaders()  # and no body: an app waiting for it would never answer
        response = connection.getresponse()
        assert response.status == 413
        assert _detail(response.read()) == "request body over 0.0625 MiB (the limit for POST /upload)"
        assert response.headers["X-Frame-Options"] == "DENY"  # the refusal is a response like any other
    finally:
        connection.close()
    assert request(limited.port, "/")[0] == 200
    _finished(limited, 1)  # that GET: the app never saw the POST
    assert limited.calls == []


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(limited):
    connection = http.client.HTTPConnection("127.0.0.1", limited.port, timeout=30)
    try:
        connection.putrequest("POST", "/upload")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        chunk = os.urandom(LIMIT + 1)
        connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))  # no last chunk: the body has not ended
        response = connection.getresponse()
        assert response.status == 413
        assert _detail(response.read()) == "request body over 0.0625 MiB (the limit for POST /upload)"
    finally:
        connection.close()
    _finished(limited, 1)
    assert limited.calls == ["entered"]  # the route started reading and never got a body, whole or cut


def test_a_whole_chunked_body_over_the_limit_gets_the_413_not_the_apps_answer(limited):
    code, _, body = request(limited.port, "/upload", "POST", body=_chunks(os.urandom(3 * LIMIT)))
    assert code == 413 and _detail(body).startswith("request body over 0.0625 MiB")
    _finished(limited, 1)
    assert limited.calls == ["entered"]
    assert request(limited.port, "/")[0] == 200  # and the server goes on serving
    _finished(limited, 2)


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_up_to_the_limit_reaches_the_app_intact(limited, chunked):
    for size in (10 * KIB, LIMIT):
        data = os.urandom(size)
        code, _, body = request(limited.port, "/upload", "POST", body=_chunks(data) if chunked else data)
        assert code == 200, body
        assert json.loads(body) == {"length": size, "sha256": hashlib.sha256(data).hexdigest()}
    assert limited.calls[-1] == data


def test_the_limit_of_a_path_applies_to_that_method_and_path_only(limited):
    data = os.urandom(200 * KIB)  # over the default, under PUT /datastore/'s
    code, _, body = request(limited.port, "/datastore/", "PUT", body=data)
    assert code == 200 and json.loads(body)["sha256"] == hashlib.sha256(data).hexdigest()
    code, _, body = request(limited.port, "/datastore/", "PUT", body=_chunks(data))
    assert code == 200 and json.loads(body)["length"] == len(data)
    for method, path in (("POST", "/datastore/"), ("PUT", "/upload")):
        code, _, body = request(limited.port, path, method, body=data)
        assert code == 413 and _detail(body) == f"request body over 0.0625 MiB (the limit for {method} {path})"
    code, _, body = request(limited.port, "/datastore/", "PUT", body=os.urandom(UPLOAD_LIMIT + 1))
    assert code == 413 and _detail(body) == "request body over 0.25 MiB (the limit for PUT /datastore/)"


def test_an_app_that_goes_on_after_the_refused_read_is_not_heard():
    async def stubborn(scope, receive, send):
        try:
            while (await receive()).get("more_body"):
                pass
        except Exception:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"half a body will do"})

    chunks = [{"type": "http.request", "body": b"x" * 600, "more_body": True} for _ in range(3)]
    sent: list = []

    async def receive():
        return chunks.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/upload", "headers": []}
    asyncio.run(BodyLimit(stubborn, default_bytes=1000)(scope, receive, send))
    assert [message.get("status") for message in sent] == [413, None]
    assert _detail(sent[1]["body"]).startswith("request body over")
    assert len(chunks) == 1  # the third chunk was never asked for


def test_limits_name_the_route_with_or_without_its_trailing_slash():
    limits = BodyLimit(tiny_app([]), limits={("put", "/datastore/"): 256 * MIB})
    assert limits.limit("PUT", "/datastore/") == limits.limit("PUT", "/datastore") == 256 * MIB
    assert limits.limit("POST", "/datastore/") == limits.limit("PUT", "/datastore/x") == MIB


# -- sign-in limiter --------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_attempt_after_n_failures_is_blocked_until_the_window_lets_one_go():
    clock = Clock()
    limiter = SignInLimiter(attempts=3, window_s=60, clock=clock)
    for _ in range(3):
        assert limiter.blocked("user:alice", "client:10.0.0.1") is None
        limiter.failed("user:alice", "client:10.0.0.1")
        clock.now += 1
    assert limiter.blocked("user:alice", "client:10.0.0.1") == pytest.approx(57)  # the first failure leaves at 1060
    assert limiter.blocked("user:alice", "client:10.0.0.2") == pytest.approx(57)  # the name, from anywhere
    assert limiter.blocked("user:bob", "client:10.0.0.1") == pytest.approx(57)    # the address, for any name
    assert limiter.blocked("user:bob", "client:10.0.0.2") is None
    clock.now = 1059.5
    assert limiter.blocked("user:alice") == pytest.approx(0.5)
    clock.now = 1060.0
    assert limiter.blocked("user:alice", "client:10.0.0.1") is None
    limiter.failed("user:alice")  # a sliding window: the failures of 1001 and 1002 still count
    assert limiter.blocked("user:alice") == pytest.approx(1)
    clock.now = 1061.0
    assert limiter.blocked("user:alice") is None


def test_a_wait_is_the_longest_of_the_keys():
    clock = Clock()
    limiter = SignInLimiter(attempts=1, window_s=30, clock=clock)
    limiter.failed("client:10.0.0.1")
    clock.now += 10
    limiter.failed("user:alice")
    assert limiter.blocked("user:alice", "client:10.0.0.1") == pytest.approx(30)
    assert limiter.blocked("client:10.0.0.1") == pytest.approx(20)


def test_success_clears_the_user_name_but_not_the_address():
    limiter = SignInLimiter(attempts=2, window_s=60, clock=Clock())
    for _ in range(2):
        limiter.failed("user:alice", "client:10.0.0.1")
    assert limiter.blocked("user:alice") and limiter.blocked("client:10.0.0.1")
    limiter.succeeded("user:alice", "client:10.0.0.1")
    assert limiter.blocked("user:alice") is None
    assert limiter.blocked("client:10.0.0.1") == pytest.approx(60)
    assert limiter.blocked("user:alice", "client:10.0.0.1") == pytest.approx(60)


def test_stale_keys_are_dropped_and_the_number_of_keys_is_bounded():
    clock = Clock()
    limiter = SignInLimiter(attempts=3, window_s=10, clock=clock)
    for i in range(500):  # made-up names from one address
        limiter.failed(f"user:guess{i}", "client:10.0.0.9")
    assert len(limiter) == 501
    clock.now += 5
    limiter.failed("user:recent")
    clock.now += 6  # the guesses are 11 s old, user:recent 6 s
    limiter.failed("user:alice", "client:10.0.0.1")
    assert len(limiter) == 3
    assert limiter.blocked("user:guess0", "client:10.0.0.9") is None
    limiter.failed("user:recent", "user:recent")
    assert limiter.blocked("user:recent")  # its failure of 6 s ago was kept

    bounded = SignInLimiter(attempts=3, window_s=10, clock=clock, max_keys=50)
    for i in range(200):
        bounded.failed(f"user:guess{i}")
    assert len(bounded) == 50
    bounded.failed("user:guess199", "user:guess199")
    assert bounded.blocked("user:guess199")  # the newest keys are the ones kept ...
    bounded.failed("user:guess0", "user:guess0")
    assert bounded.blocked("user:guess0") is None  # ... and the oldest forgotten


# -- TLS --------------------------------------------------------------------------------------

def certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (``name.crt``, ``name.key``), its own CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"127.0.0.1 {name}")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


@pytest.fixture
def certificates(tmp_path) -> dict[str, tuple[Path, Path]]:
    return {name: certificate(tmp_path, name) for name in ("listener", "review")}


def _review_app(serve, folder: Path, caplog, review: dict, **listener) -> tuple[Served, str]:
    """The real app of a listener config in ``folder``; and the url its start logged."""
    config = load_config(write_config(folder, review={"port": free_port(), **review}, **listener))
    with caplog.at_level(logging.INFO, logger="listener.review"):
        caplog.clear()
        server = make_server(config)
    urls = [record.url for record in caplog.records if record.getMessage() == "review app"]
    assert len(urls) == 1
    return serve(server=server), urls[0]


def test_the_listeners_certificate_serves_https_and_plain_http_is_refused(serve, tmp_path, certificates, caplog):
    served, url = _review_app(serve, tmp_path, caplog, {}, tls_cert="listener.crt", tls_key="listener.key")
    assert url == f"https://127.0.0.1:{served.port}/"
    code, _, body = request(served.port, "/health", context=trusting(certificates["listener"][0]))
    assert code == 200 and json.loads(body) == {"status": "ok"}
    with pytest.raises((http.client.HTTPException, OSError)):
        request(served.port, "/health")
    with pytest.raises(ssl.SSLCertVerificationError):  # the client checks whom it talks to
        request(served.port, "/health", context=trusting(certificates["review"][0]))


def test_tls_false_serves_plain_http_with_the_listeners_certificate_set(serve, tmp_path, certificates, caplog):
    served, url = _review_app(serve, tmp_path, caplog, {"tls": False}, tls_cert="listener.crt", tls_key="listener.key")
    assert url == f"http://127.0.0.1:{served.port}/"
    code, _, body = request(served.port, "/health")
    assert code == 200 and json.loads(body) == {"status": "ok"}
    with pytest.raises(ssl.SSLError):
        request(served.port, "/health", context=trusting(certificates["listener"][0]))


def test_the_review_certificate_takes_precedence_over_the_listeners(serve, tmp_path, certificates, caplog):
    served, url = _review_app(serve, tmp_path, caplog, {"tls_cert": "review.crt", "tls_key": "review.key"},
                              tls_cert="listener.crt", tls_key="listener.key")
    assert url.startswith("https://")
    code, _, _ = request(served.port, "/health", context=trusting(certificates["review"][0]))
    assert code == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        request(served.port, "/health", context=trusting(certificates["listener"][0]))


def test_tls_files_resolve_beside_the_config_and_without_a_certificate_there_is_none(tmp_path, certificates):
    config = load_config(write_config(tmp_path, review={}, tls_cert="listener.crt", tls_key="listener.key"))
    assert config.review is not None
    assert tls_files(config, config.review) == tuple(path.resolve() for path in certificates["listener"])
    bare = load_config(write_config(tmp_path / "bare", review={}))
    assert bare.review is not None and bare.review.tls
    assert tls_files(bare, bare.review) is None
