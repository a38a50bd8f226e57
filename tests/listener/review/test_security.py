"""Who gets in: the token, the session cookie, 127.0.0.1 without a token, no patient name by default."""
from __future__ import annotations

import http.client
import json
import logging
import re
import urllib.parse

import pydicom
import pytest

from listener.config import ReviewSettings
from listener.store import Store
from tests.listener.review.conftest import TOKEN

PATHS = ["/", "/info/", "/datastore/", "/datastore/studies", "/activelearning/first"]


def _request(url: str, path: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None):
    parsed = urllib.parse.urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


@pytest.fixture
def guarded(make_listener, serve):
    return serve(make_listener(review={"token": TOKEN}))


def test_every_endpoint_but_health_needs_the_token(guarded):
    assert _request(guarded.url, "/health")[0] == 200
    for path in PATHS:
        assert _request(guarded.url, path)[0] == 401, path
        assert _request(guarded.url, path, headers={"Authorization": "Bearer wrong"})[0] == 401, path
        assert _request(guarded.url, path, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200, path
    status, _, body = _request(guarded.url, "/datastore/label?image=x&tag=final", "PUT", body=b"{}",
                               headers={"Content-Type": "application/json"})
    assert status == 401 and b"Bearer" in body


def test_the_page_signs_in_once_and_keeps_an_httponly_strict_session_cookie(guarded):
    status, headers, body = _request(guarded.url, "/")
    assert status == 401 and b'name="token"' in body  # the sign-in form
    assert _request(guarded.url, "/?token=wrong")[0] == 401
    status, headers, _ = _request(guarded.url, f"/?token={TOKEN}")
    assert status == 303 and headers["Location"] == "/"  # the token leaves the address bar
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and TOKEN not in cookie
    session = cookie.split(";")[0]
    assert _request(guarded.url, "/datastore/studies", headers={"Cookie": session})[0] == 200
    assert _request(guarded.url, "/datastore/studies", headers={"Cookie": "mura_review_session=forged"})[0] == 401
    status, headers, body = _request(guarded.url, "/")  # the form, and its double-submit cookie
    csrf = re.search(rb'name="csrf" value="([^"]+)"', body).group(1).decode()
    form_cookie = headers["Set-Cookie"].split(";")[0]
    status, headers, _ = _request(guarded.url, "/login", "POST", body=f"csrf={csrf}&token={TOKEN}".encode(),
                                  headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": form_cookie})
    assert status == 303 and "HttpOnly" in headers["Set-Cookie"]


def test_without_a_token_the_app_listens_on_127_0_0_1_only_and_says_so(make_listener, serve, caplog):
    caplog.set_level(logging.WARNING, logger="listener.review")
    app = serve(make_listener(review={"host": "0.0.0.0"}), ReviewSettings(host="0.0.0.0"))
    assert app.server.config.host == "127.0.0.1"
    assert "127.0.0.1 only" in caplog.text
    assert _request(app.url, "/info/")[0] == 200  # MONAI Label's client sends no token


def _patient_names(store: Store) -> set[str]:
    names = set()
    for study in store.studies():
        ds = pydicom.dcmread(store.instances(study.key)[0]["path"], stop_before_pixels=True)
        names.add(str(ds.PatientName))
    return names


@pytest.mark.parametrize("shown", [False, True])
def test_patient_names_appear_only_where_the_config_allows(make_listener, serve, shown):
    config = make_listener(review={"show_patient_name": shown})
    app = serve(config)
    names = _patient_names(Store(config.spool_dir / "queue.sqlite3"))
    assert names and all(names)
    studies = json.loads(_request(app.url, "/datastore/studies")[2])["studies"]
    texts = [_request(app.url, path)[2].decode() for path in
             ["/", "/info/", "/datastore/?output=all", "/datastore/studies", "/activelearning/first",
              *(f"/datastore/study?study={s['id']}" for s in studies)]]
    leaked = {name for name in names for text in texts if name in text}
    assert leaked == (names if shown else set())
