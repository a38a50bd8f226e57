"""Single sign-on through the real review app: a local OpenID Connect provider, Debian's Chromium.

The provider runs on ``localhost`` and the app on ``127.0.0.1``: two sites, so the browser treats the
provider's redirect back as a cross-site navigation, as it would between a hospital's identity
provider and the review app.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from listener.review.accounts import AccountStore
from listener.review.audit import AuditLog
from listener.store import Store
from tests.listener.orthanc import free_port
from tests.listener.review.oidc_provider import OidcProvider, sign_on

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def provider():
    with OidcProvider(hostname="localhost") as running:
        yield running


@pytest.fixture
def sign_on_app(make_listener, serve, provider):
    """The review app with ``[review.oidc]`` at the provider: groups "radiology" review, "residents" view."""
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    client_id, secret = provider.register_client([public + "/auth/oidc/callback"])
    config = make_listener(review={"public_url": public, "oidc": {
        "issuer": provider.url, "client_id": client_id, "client_secret": secret, "role_claim": "groups",
        "reviewer_values": ["radiology"], "viewer_values": ["residents"], "button": "Sign in with Hospital ID"}})
    provider.set_user("house", {"preferred_username": "house", "name": "House^Gregory", "groups": ["radiology"]})
    provider.set_user("cuddy", {"preferred_username": "cuddy", "name": "Cuddy^Lisa", "groups": ["administration"]})
    return config, serve(config, port=port)


def _audit(config, **filters):
    store = Store(config.spool_dir / "queue.sqlite3")
    try:
        return AuditLog(store, None).entries(**filters)
    finally:
        store.close()


def test_a_sign_on_gets_the_role_from_the_claims_and_an_unmapped_one_is_refused(sign_on_app):
    config, app = sign_on_app
    with httpx.Client(base_url=app.url, timeout=60) as browser:
        page = browser.get("/")
        assert page.status_code == 401 and 'href="/auth/oidc/login"' in page.text and "Hospital ID" in page.text
        assert sign_on(browser, "house").status_code == 200
        me = browser.get("/auth/me").json()
        assert (me["user"], me["display_name"], me["role"], me["via"]) == ("house", "House^Gregory", "reviewer", "oidc")
    with httpx.Client(base_url=app.url, timeout=60) as browser:
        refused = sign_on(browser, "cuddy")
        assert refused.status_code == 403 and "no role" in refused.text
        assert browser.get("/datastore/studies").status_code == 401
    accounts = {a.name: a for a in AccountStore(Store(config.spool_dir / "queue.sqlite3")).list()}
    assert set(accounts) == {"house"} and accounts["house"].source == "oidc"
    assert [(e.actor, e.detail["via"]) for e in _audit(config, event="sign_in")] == [("house", "oidc")]
    assert [(e.actor, e.detail["reason"]) for e in _audit(config, event="sign_in_failed")] == [("cuddy", "no_role")]


def test_a_locally_disabled_sign_on_account_stays_out(sign_on_app):
    config, app = sign_on_app
    with httpx.Client(base_url=app.url, timeout=60) as browser:
        assert sign_on(browser, "house").status_code == 200
    result = subprocess.run([str(Path(sys.executable).parent / "mura-review"), "users", "disable", "house",
                             "--config", str(config.path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    with httpx.Client(base_url=app.url, timeout=60) as browser:
        refused = sign_on(browser, "house")
        assert refused.status_code == 403 and "disabled" in refused.text


@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="Debian's chromium is needed (make system-deps)")
def test_a_radiologist_signs_on_in_the_browser_and_labels_as_themself(sign_on_app, provider):
    sync_api = pytest.importorskip("playwright.sync_api")
    config, app = sign_on_app
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page()
            page.goto(app.url + "/")
            page.click("text=Sign in with Hospital ID")
            page.fill('input[name="sub"]', "house")
            page.click('button[type="submit"]:has-text("Authorize")')
            # back at the app, signed in: the SameSite=Strict session cookie came along
            page.locator("tr.study-row").first.wait_for()
            assert page.locator("#user-name").inner_text() == "Gregory House"
            assert page.locator("#user-role").text_content() == "reviewer"
            page.locator("tr.study-row").first.click()
            # the button, not the "o" shortcut (test_browser covers the shortcuts): a key goes
            # wherever the focus is, and under load it once went where "o" did nothing
            page.locator("#btn-override:not([disabled])").click()
            page.locator("#review-state .state.overridden").wait_for()
            sid = page.evaluate("() => location.hash.split('/').pop()")
        finally:
            browser.close()
    with httpx.Client(base_url=app.url, timeout=60) as api:
        assert sign_on(api, "house").status_code == 200
        labels = api.get(f"/datastore/label/info?label={sid}&tag=final").json()["labels"]
    assert [(label["reviewer"], label["reviewer_name"]) for label in labels] == [("house", "House^Gregory")]
    saved = _audit(config, event="label_saved")
    assert [(e.actor, e.detail["study"]) for e in saved] == [("house", sid)]
    assert json.dumps([e.as_dict() for e in _audit(config)]).count("House^Gregory") == 0  # user names, not people's names
