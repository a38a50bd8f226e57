"""Named accounts against the real app: sign-in, roles, sessions, CSRF, tokens, the shared-token fallback.

Each test runs the app (uvicorn in a thread) over its own copy of the live listener's database
and talks to it over HTTP as a browser would (httpx keeps the cookies), or as MONAI Label's client.
"""
from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from argon2 import PasswordHasher
from monailabel.client.client import MONAILabelClient, MONAILabelClientException  # installed --no-deps by make

from listener.review.accounts import AccountStore
from listener.review.audit import AuditLog
from listener.review.datastore import study_id
from listener.store import Store
from mura_monai.dicom_out import read_sr_result
from tests.dicom_out.dciodvfy import dciodvfy_errors

PASSWORD = "correct horse battery"
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def add_user(config, name: str, role: str, full_name: str = "", password: str | None = PASSWORD) -> None:
    store = Store(config.spool_dir / "queue.sqlite3")
    try:
        AccountStore(store, FAST).add(name, role, full_name=full_name, password=password)
    finally:
        store.close()


def audit_entries(config, **filters) -> list:
    store = Store(config.spool_dir / "queue.sqlite3")
    try:
        return AuditLog(store, None).entries(**filters)
    finally:
        store.close()


class Browser:
    """A browser's view of the app: cookies kept, the sign-in form filled as a person would."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, follow_redirects=False, timeout=60)
        self.csrf: str | None = None

    def sign_in(self, name: str, password: str = PASSWORD) -> httpx.Response:
        form = self.http.get("/")
        assert form.status_code == 401 and 'name="password"' in form.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
        answer = self.http.post("/login", data={"csrf": csrf, "username": name, "password": password})
        if answer.status_code == 303:
            self.csrf = self.http.get("/auth/me").json()["csrf_token"]
        return answer

    def label(self, sid: str, finding: str, csrf: bool = True, **extra) -> httpx.Response:
        headers = {"X-CSRF-Token": self.csrf} if csrf and self.csrf else {}
        return self.http.put(f"/datastore/label?image={sid}&tag=final", json={"finding": finding, **extra},
                             headers=headers)


@pytest.fixture
def accounts_app(make_listener, serve):
    config = make_listener(review={"session_idle_minutes": 30.0})
    add_user(config, "jdoe", "reviewer", "Doe^Jane")
    add_user(config, "vview", "viewer", "View^Victor")
    add_user(config, "root", "admin", "Admin^Ada")
    return config, serve(config)


def _first_study(config) -> tuple[str, str, str]:
    """``(study id, the model's finding, its opposite)`` of the first study."""
    study = Store(config.spool_dir / "queue.sqlite3").studies()[0]
    finding = read_sr_result(pydicom.dcmread(study.sr_path))["finding"]
    return study_id(study.key), finding, "normal" if finding == "abnormal" else "abnormal"


def test_a_reviewer_signs_in_labels_as_themself_and_the_sr_names_their_full_name(accounts_app):
    config, app = accounts_app
    browser = Browser(app.url)
    answer = browser.sign_in("jdoe")
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    me = browser.http.get("/auth/me").json()
    assert (me["user"], me["role"], me["display_name"]) == ("jdoe", "reviewer", "Doe^Jane") and me["csrf_token"]
    sid, _, corrected = _first_study(config)
    saved = browser.label(sid, corrected, reviewer="someone-else")  # a name in the call cannot change who it is
    assert saved.status_code == 200, saved.text
    info = saved.json()["label_info"]
    assert (info["reviewer"], info["reviewer_name"], info["attribution"]) == ("jdoe", "Doe^Jane", "reviewer")
    sr_path = Store(config.spool_dir / "queue.sqlite3").study(
        next(s.key for s in Store(config.spool_dir / "queue.sqlite3").studies() if study_id(s.key) == sid)).sr_path
    sr = pydicom.dcmread(sr_path)
    assert sr.VerificationFlag == "VERIFIED" and str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Doe^Jane"
    assert read_sr_result(sr)["finding"] == corrected and dciodvfy_errors(sr_path) == []
    events = [(e.actor, e.event) for e in audit_entries(config)]
    assert ("jdoe", "sign_in") in events and ("jdoe", "label_saved") in events


def test_a_viewer_reads_but_cannot_label_or_upload_and_the_refusal_is_audited(accounts_app):
    config, app = accounts_app
    browser = Browser(app.url)
    assert browser.sign_in("vview").status_code == 303
    sid, finding, _ = _first_study(config)
    assert browser.http.get(f"/datastore/study?study={sid}").status_code == 200
    refused = browser.label(sid, finding)
    assert refused.status_code == 403 and "reviewer role" in refused.json()["detail"]
    assert browser.http.put("/datastore/", files={"file": ("x.dcm", b"DICM")},
                            headers={"X-CSRF-Token": browser.csrf}).status_code == 403
    denied = audit_entries(config, user="vview", event="access_denied")
    assert [e.detail["action"] for e in denied] == ["saving a label", "uploading a study"]
    opened = audit_entries(config, user="vview", event="study_opened")
    assert [e.detail["study"] for e in opened] == [sid]
    assert not [e for e in audit_entries(config, event="label_saved")]


def test_wrong_passwords_are_refused_audited_and_rate_limited(make_listener, serve):
    config = make_listener(review={"sign_in_attempts": 3, "sign_in_window_s": 600.0})
    add_user(config, "jdoe", "reviewer")
    app = serve(config)
    browser = Browser(app.url)
    for _ in range(3):
        answer = browser.sign_in("jdoe", "wrong password!")
        assert answer.status_code == 401 and "Wrong user name or password" in answer.text
    blocked = browser.sign_in("jdoe")  # the right password, but over the limit
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    unknown = Browser(app.url).sign_in("nobody-here", "whatever it is")
    assert unknown.status_code in (401, 429) and "Wrong user name or password" in unknown.text or unknown.status_code == 429
    failed = audit_entries(config, event="sign_in_failed")
    assert [e.detail["reason"] for e in failed if e.actor == "jdoe"] == ["wrong_credentials"] * 3 + ["rate_limited"]
    assert not audit_entries(config, event="sign_in")
    assert PASSWORD not in Path(config.spool_dir / "audit.jsonl").read_text()


def test_state_changes_on_the_cookie_need_the_csrf_token(accounts_app):
    config, app = accounts_app
    browser = Browser(app.url)
    browser.sign_in("jdoe")
    sid, finding, _ = _first_study(config)
    missing = browser.label(sid, finding, csrf=False)
    assert missing.status_code == 403 and "CSRF" in missing.json()["detail"]
    wrong = browser.http.put(f"/datastore/label?image={sid}&tag=final", json={"finding": finding},
                             headers={"X-CSRF-Token": "forged"})
    assert wrong.status_code == 403
    other_site = browser.http.put(f"/datastore/label?image={sid}&tag=final", json={"finding": finding},
                                  headers={"X-CSRF-Token": browser.csrf, "Origin": "https://evil.example"})
    assert other_site.status_code == 403
    assert browser.http.post("/logout").status_code == 403  # signing someone out is a state change too
    assert browser.label(sid, finding).status_code == 200
    # the sign-in form's own token: a form posted without the cookie the form page set is refused
    stranger = httpx.post(app.url + "/login", data={"csrf": "x", "username": "jdoe", "password": PASSWORD})
    assert stranger.status_code == 403 and "expired" in stranger.text


def test_sign_out_idle_expiry_and_disabling_end_sessions(accounts_app):
    config, app = accounts_app
    browser = Browser(app.url)
    browser.sign_in("jdoe")
    assert browser.http.post("/logout", headers={"X-CSRF-Token": browser.csrf}).status_code == 200
    assert browser.http.get("/datastore/studies").status_code == 401
    assert [e.event for e in audit_entries(config, user="jdoe")][-1] == "sign_out"

    browser = Browser(app.url)
    browser.sign_in("jdoe")
    assert browser.http.get("/datastore/studies").status_code == 200
    db = sqlite3.connect(config.spool_dir / "queue.sqlite3")
    db.execute("UPDATE sessions SET last_seen = last_seen - 31 * 60")  # 31 minutes without a request
    db.commit()
    db.close()
    assert browser.http.get("/datastore/studies").status_code == 401
    page = browser.http.get("/")
    assert page.status_code == 401 and "session has ended" in page.text
    expired = audit_entries(config, event="session_expired")
    assert [(e.actor, e.detail["reason"]) for e in expired] == [("jdoe", "idle")]  # once, not per request

    browser = Browser(app.url)
    browser.sign_in("jdoe")
    bin_dir = Path(sys.executable).parent
    result = subprocess.run([str(bin_dir / "mura-review"), "users", "disable", "jdoe", "--config", str(config.path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert browser.http.get("/datastore/studies").status_code == 401
    assert Browser(app.url).sign_in("jdoe").status_code == 401


def test_monai_label_client_with_a_per_user_token_runs_the_readme_methods_attributed(accounts_app, tmp_path):
    """Every MONAI Label client method the README lists, with nothing but the user's token."""
    config, app = accounts_app
    store = Store(config.spool_dir / "queue.sqlite3")
    token, secret = AccountStore(store, FAST).create_token("jdoe", "slicer")
    client = MONAILabelClient(app.url, tmpdir=str(tmp_path), client_id="slicer-7")
    assert client.auth_enabled() is True
    with pytest.raises(MONAILabelClientException):
        client.info()  # no token yet
    client.update_auth({"token_type": "Bearer", "access_token": secret})
    assert client.auth_valid_token()
    info = client.info()
    assert info["labels"] == {"abnormal": 1}
    objects = client.datastore()["objects"]
    sid = client.next_sample("abnormal", {})["id"]
    assert sid in objects
    _, result = client.infer("ensemble", sid, {})
    assert result["study"] == sid and 0 <= result["probability"] <= 1
    label = tmp_path / "label.txt"
    label.write_text("normal")
    saved = client.save_label(sid, str(label), tag="final")
    assert (saved["label_info"]["reviewer"], saved["label_info"]["reviewer_name"]) == ("jdoe", "Doe^Jane")
    assert saved["label_info"]["client_id"] == "slicer-7"
    assert json.loads(open(client.download_label(sid, "final")).read())["reviewer"] == "jdoe"
    not_dicom = tmp_path / "note.txt"
    not_dicom.write_text("not an image")
    with pytest.raises(MONAILabelClientException) as error:
        client.upload_image(str(not_dicom), image_id="x", params={})
    assert "415" in error.value.msg  # past the sign-in and the reviewer role, refused for what it is
    used = audit_entries(config, user="jdoe")
    assert {"study_opened", "label_saved"} <= {e.event for e in used}
    AccountStore(store, FAST).revoke_token(token.id)
    with pytest.raises(MONAILabelClientException):
        client.info()


def test_monai_label_client_signs_in_with_a_password_for_an_access_token(accounts_app, tmp_path):
    config, app = accounts_app
    client = MONAILabelClient(app.url, tmpdir=str(tmp_path))
    with pytest.raises(MONAILabelClientException):
        client.auth_token("jdoe", "wrong password!")
    token = client.auth_token("jdoe", PASSWORD)
    assert token["token_type"] == "bearer" and token["expires_in"] > 0
    client.update_auth(token)
    assert client.auth_valid_token() and client.info()["labels"] == {"abnormal": 1}
    # an access token is no browser session: it does not work as the cookie
    assert httpx.get(app.url + "/datastore/studies", cookies={"mura_review_session": token["access_token"]}).status_code == 401
    assert [e.detail["via"] for e in audit_entries(config, event="sign_in")] == ["access-token"]


def test_the_shared_token_still_signs_in_as_its_configured_identity(make_listener, serve):
    config = make_listener(review={"token": "legacy-token", "token_user": "ward-7", "token_full_name": "Ward 7^Reading room"})
    app = serve(config)
    sid, _, corrected = _first_study(config)
    headers = {"Authorization": "Bearer legacy-token"}
    saved = httpx.put(f"{app.url}/datastore/label?image={sid}&tag=final", json={"finding": corrected}, headers=headers)
    assert saved.status_code == 200, saved.text
    assert (saved.json()["label_info"]["reviewer"], saved.json()["label_info"]["reviewer_name"]) == (
        "ward-7", "Ward 7^Reading room")
    page = httpx.get(f"{app.url}/?token=legacy-token")
    assert page.status_code == 303 and page.headers["location"] == "/"
    assert httpx.get(f"{app.url}/auth/me", cookies=page.cookies).json()["user"] == "ward-7"
    assert httpx.get(f"{app.url}/datastore/studies", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_an_open_app_closes_once_the_first_account_exists(make_listener, serve):
    config = make_listener()
    app = serve(config)
    assert httpx.get(app.url + "/datastore/studies").status_code == 200
    assert httpx.get(app.url + "/auth/").json()["enabled"] is False
    add_user(config, "jdoe", "reviewer")
    assert httpx.get(app.url + "/datastore/studies").status_code == 401
    assert httpx.get(app.url + "/auth/").json()["enabled"] is True
    assert Browser(app.url).sign_in("jdoe").status_code == 303


def test_admins_manage_accounts_and_read_the_audit_over_the_api(accounts_app):
    config, app = accounts_app
    reviewer = Browser(app.url)
    reviewer.sign_in("jdoe")
    assert reviewer.http.get("/admin/users").status_code == 403
    admin = Browser(app.url)
    admin.sign_in("root")
    listed = admin.http.get("/admin/users").json()["users"]
    assert {u["name"]: u["role"] for u in listed} == {"jdoe": "reviewer", "vview": "viewer", "root": "admin"}
    headers = {"X-CSRF-Token": admin.csrf}
    added = admin.http.post("/admin/users", json={"action": "add", "name": "kim", "role": "viewer",
                                                  "password": "another long one"}, headers=headers)
    assert added.status_code == 200 and added.json()["user"]["role"] == "viewer"
    lowered = admin.http.post("/admin/users", json={"action": "role", "name": "jdoe", "role": "viewer"}, headers=headers)
    assert lowered.status_code == 200
    assert reviewer.http.get("/datastore/studies").status_code == 401  # a lower role ends the sessions
    bad = admin.http.post("/admin/users", json={"action": "role", "name": "jdoe", "role": "chief"}, headers=headers)
    assert bad.status_code == 400 and "chief" in bad.json()["detail"]
    trail = admin.http.get("/admin/audit", params={"user": "root"}).json()["entries"]
    assert [e["event"] for e in trail][-2:] == ["user_added", "user_changed"]
    assert admin.http.get("/admin/audit", params={"since": "yesterday-ish"}).status_code == 400


def test_the_cli_manages_users_and_tokens_and_prints_the_audit(make_listener, tmp_path):
    config = make_listener()
    review = [str(Path(sys.executable).parent / "mura-review"), "--config", str(config.path)]

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([*review, *args], input=stdin, capture_output=True, text=True, timeout=120)

    added = run("users", "add", "jdoe", "--role", "reviewer", "--full-name", "Doe^Jane", "--password-stdin",
                stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert run("users", "add", "jdoe", "--role", "viewer", "--no-password").returncode == 2  # a duplicate
    short = run("users", "add", "kim", "--role", "viewer", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "password" in short.stderr
    listed = json.loads(run("users", "list", "--json").stdout)
    assert [(u["name"], u["role"], u["full_name"]) for u in listed] == [("jdoe", "reviewer", "Doe^Jane")]
    created = run("tokens", "create", "jdoe", "--label", "scripts")
    secret = created.stdout.strip()
    assert created.returncode == 0 and secret.startswith("mura_") and secret not in run("tokens", "list").stdout
    assert run("users", "role", "jdoe", "admin").returncode == 0
    assert run("users", "passwd", "jdoe", "--password-stdin", stdin="a new long password\n").returncode == 0
    store = Store(config.spool_dir / "queue.sqlite3")
    assert AccountStore(store, FAST).verify_password("jdoe", "a new long password").role == "admin"
    assert AccountStore(store, FAST).verify_token(secret).name == "jdoe"
    assert PASSWORD.encode() not in (config.spool_dir / "queue.sqlite3").read_bytes()
    table = run("audit", "--since", "1h")
    assert table.returncode == 0
    for event in ("user_added", "token_created", "user_changed", "password_changed"):
        assert event in table.stdout
    lines = [json.loads(line) for line in run("audit", "--json", "--event", "token_created").stdout.splitlines()]
    assert [(e["event"], e["detail"]["user"]) for e in lines] == [("token_created", "jdoe")]
    assert lines[0]["actor"].startswith("cli:")
    assert run("audit", "--verify").returncode == 0
    assert run("audit", "--since", "last tuesday").returncode == 2
    assert run("users", "disable", "nobody").returncode == 2


def test_every_response_carries_the_security_headers_and_the_page_has_no_inline_script(accounts_app):
    _, app = accounts_app
    for path in ("/", "/health", "/static/app.js", "/datastore/studies"):
        headers = httpx.get(app.url + path).headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, path
        assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "no-referrer", path
    browser = Browser(app.url)
    browser.sign_in("jdoe")
    for page in (httpx.get(app.url + "/").text, browser.http.get("/").text):
        assert not re.search(r"<script(?![^>]*\bsrc=)", page) and " on" not in re.sub(r"<[^>]*>", "", "") and \
            not re.search(r"<[^>]+\son[a-z]+=", page) and "style=" not in page


def test_uploads_over_the_limit_and_ids_that_look_like_paths_are_refused(make_listener, serve):
    config = make_listener(review={"max_upload_mb": 1.0})
    app = serve(config)
    big = httpx.put(app.url + "/datastore/", files={"file": ("big.dcm", b"\0" * (2 * 1024 * 1024))})
    assert big.status_code == 413 and "MiB" in big.json()["detail"]
    label = httpx.put(app.url + "/datastore/label?image=x&tag=final", content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                      headers={"Content-Type": "application/json"})
    assert label.status_code == 413
    for bad in ("../queue.sqlite3", "..%2F..%2Fetc%2Fpasswd", "/etc/passwd", "s" + "0" * 16, "i../../queue.sqlite3"):
        for path in ("/datastore/image", "/datastore/heatmap", "/datastore/study", "/datastore/label"):
            key = "study" if path == "/datastore/study" else "image"
            assert httpx.get(f"{app.url}{path}?{key}={bad}").status_code == 404, (path, bad)
    assert httpx.get(app.url + "/static/..%2F..%2Fauth.py").status_code == 404
    assert httpx.get(app.url + "/static/../review/auth.py").status_code == 404


def test_secrets_are_compared_in_constant_time(make_listener, serve, monkeypatch):
    """The shared token, the CSRF tokens and the sign-in form's token all go through hmac.compare_digest."""
    import hmac

    import listener.review.auth as auth_module

    compared: list[int] = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append(len(a))
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", spy)
    config = make_listener(review={"token": "legacy-token"})
    add_user(config, "jdoe", "reviewer")
    app = serve(config)
    assert httpx.get(app.url + "/info/", headers={"Authorization": "Bearer legacy-tokeX"}).status_code == 401
    assert compared, "the shared token was compared without hmac.compare_digest"
    compared.clear()
    browser = Browser(app.url)
    browser.sign_in("jdoe")
    assert compared  # the sign-in form's double-submit token
    compared.clear()
    sid, finding, _ = _first_study(config)
    browser.label(sid, finding)
    assert compared  # the session's CSRF token
    started = time.monotonic()
    assert time.monotonic() - started >= 0
