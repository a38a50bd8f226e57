"""Single sign-on (listener/review/oidc.py) against a real local OpenID provider, over real HTTP.

A tiny Starlette app carries the sign-on's middleware and routes: ``signed_in`` answers the identity
as JSON, ``refused`` a 403 with the reason. It is served by uvicorn in a thread on a socket bound
before the thread starts (requests wait in the socket's backlog, so no polling for readiness); the
provider is oidc-provider-mock (tests/listener/review/oidc_provider.py). No Orthanc, no listener.
"""
from __future__ import annotations

import socket
import threading
from dataclasses import asdict
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from listener.config import OidcSettings
from listener.review.oidc import CALLBACK_PATH, STATE_COOKIE, OidcIdentity, OidcSignOn, role_from_claims
from tests.listener.orthanc import free_port
from tests.listener.review.oidc_provider import LOGIN_PATH, OidcProvider, authorize, sign_on, start_sign_on

# oidc-provider-mock's use of authlib's server side, not the code under test
pytestmark = pytest.mark.filterwarnings("ignore:get_jwt_config:DeprecationWarning")

CHROMIUM = "/usr/bin/chromium"
HOUSE = {"preferred_username": "dr.house", "name": "Gregory House", "roles": ["reviewer"]}


async def signed_in(request: Request, identity: OidcIdentity) -> JSONResponse:
    return JSONResponse(asdict(identity))


async def refused(request: Request, reason: str, username: str | None) -> JSONResponse:
    return JSONResponse({"reason": reason, "username": username}, status_code=403)


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


FOREIGN_DISCOVERIES: list[str] = []


async def foreign_discovery(request: Request) -> JSONResponse:
    """A discovery document that names another issuer than the one it is fetched from."""
    FOREIGN_DISCOVERIES.append(str(request.url))
    return JSONResponse({"issuer": "https://idp.elsewhere.example", "authorization_endpoint": "https://idp.elsewhere.example/a",
                         "token_endpoint": "https://idp.elsewhere.example/t", "jwks_uri": "https://idp.elsewhere.example/k"})


class SignOnApp:
    """The sign-on in a minimal app behind uvicorn, in a thread of the test process."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server: uvicorn.Server | None = None

    def start(self, settings: OidcSettings, public_url: str = "", https: bool = False) -> SignOnApp:
        sign_on = OidcSignOn(settings, public_url=public_url, https=https)
        app = Starlette(routes=[*sign_on.routes(signed_in, refused), Route("/health", health),
                                Route("/elsewhere/.well-known/openid-configuration", foreign_discovery)],
                        middleware=sign_on.middleware())
        self.server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, name="sign-on-app",
                                       daemon=True)
        self.thread.start()
        self.client = httpx.Client(base_url=self.url, timeout=30)   # the browser: keeps the app's cookies
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.client.close()
            self.server.should_exit = True
            self.thread.join(timeout=30)
        self.socket.close()


@pytest.fixture(scope="module")
def provider():
    with OidcProvider() as running:
        yield running


@pytest.fixture
def serve(provider):
    """``serve(public_url="", https=False, settings=None, **oidc)``: the app with a client newly registered at
    the provider (redirect URI: the app's callback) and ``[review.oidc]`` overrides ``oidc``, or ``settings``."""
    apps: list[SignOnApp] = []

    def start(public_url: str = "", https: bool = False, settings: OidcSettings | None = None, **oidc) -> SignOnApp:
        apps.append(SignOnApp())
        if settings is None:
            settings = provider.settings(apps[-1].url + CALLBACK_PATH, **oidc)
        return apps[-1].start(settings, public_url=public_url, https=https)

    yield start
    for app in apps:
        app.stop()


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    return urlunsplit(parts._replace(query=urlencode({**query, **changes})))


def state_cookie(response: httpx.Response) -> str:
    headers = [value for value in response.headers.get_list("set-cookie") if value.startswith(STATE_COOKIE + "=")]
    assert len(headers) == 1, response.headers.get_list("set-cookie")
    return headers[0]


# role_from_claims, alone

@pytest.mark.parametrize("claims, role", [
    ({"roles": ["reviewer"]}, "reviewer"),
    ({"roles": "reviewer"}, "reviewer"),
    ({"roles": ["viewer", "admin"]}, "admin"),
    ({"roles": ["viewer", "reviewer"]}, "reviewer"),
    ({"roles": ("viewer",)}, "viewer"),
    ({"roles": ["Reviewer", "nurse"]}, None),        # exact values: case counts
    ({"roles": [3, None, {"admin": 1}]}, None),       # values that are not strings map to nothing
    ({"roles": []}, None),
    ({"roles": None}, None),
    ({"groups": ["admin"]}, None),                   # another claim than role_claim
    ({}, None),
])
def test_role_from_claims(claims, role):
    assert role_from_claims(claims, OidcSettings()) == role


def test_role_from_claims_with_configured_values():
    settings = OidcSettings(role_claim="groups", admin_values=["pacs-admins"], reviewer_values=["radiology", "msk"],
                            viewer_values=["staff"])
    assert role_from_claims({"groups": ["staff", "msk"]}, settings) == "reviewer"
    assert role_from_claims({"groups": "pacs-admins"}, settings) == "admin"
    assert role_from_claims({"groups": ["staff"], "roles": ["admin"]}, settings) == "viewer"
    assert role_from_claims({"groups": ["reviewer", "admin"]}, settings) is None   # the default values no longer map


# the whole sign-on, through the provider

def test_reviewer_signs_in_with_the_providers_name_and_username(serve, provider):
    app = serve()
    provider.set_user("house-1", HOUSE)
    authorization_url = start_sign_on(app.client)
    assert authorization_url.startswith(provider.url + "/oauth2/authorize?")
    query = parse_qs(urlsplit(authorization_url).query)
    assert query["redirect_uri"] == [app.url + CALLBACK_PATH]       # request.url_for without public_url
    assert query["scope"] == ["openid profile email"]
    assert query["nonce"] and query["state"] and query["code_challenge_method"] == ["S256"]
    response = app.client.get(authorize(authorization_url, "house-1"))
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "dr.house", "full_name": "Gregory House", "role": "reviewer"}
    # the state cookie has served its purpose: emptied, so the same callback cannot be used twice
    assert "expires=thu, 01 jan 1970" in state_cookie(response).lower()


@pytest.mark.parametrize("roles, role", [
    (["viewer", "admin"], "admin"),     # admin wins over viewer
    (["reviewer", "viewer"], "reviewer"),
    (["viewer"], "viewer"),
    ("admin", "admin"),                  # a string, not a list
    ("viewer", "viewer"),
])
def test_role_claim_values(serve, provider, roles, role):
    app = serve()
    provider.set_user("user-roles", {"preferred_username": "someone", "roles": roles})
    response = sign_on(app.client, "user-roles")
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "someone", "full_name": "", "role": role}


def test_configured_claims_and_values(serve, provider):
    app = serve(role_claim="groups", reviewer_values=["radiology"], admin_values=["pacs-admins"],
                username_claim="email", name_claim="display_name")
    provider.set_user("wilson-1", {"email": "j.wilson@hospital.example", "display_name": "James Wilson",
                                   "groups": ["staff", "radiology"], "roles": ["admin"], "preferred_username": "wilson"})
    response = sign_on(app.client, "wilson-1")
    assert response.status_code == 200, response.text
    # the role from "groups" only ("roles" says admin, but is not the configured claim)
    assert response.json() == {"name": "j.wilson@hospital.example", "full_name": "James Wilson", "role": "reviewer"}


def test_no_role_is_refused_naming_the_user(serve, provider):
    app = serve()
    provider.set_user("joy-1", {"preferred_username": "nurse.joy", "name": "Joy", "roles": ["nurse", "Reviewer"]})
    response = sign_on(app.client, "joy-1")
    assert response.status_code == 403
    assert response.json() == {"reason": "no_role", "username": "nurse.joy"}


def test_no_role_claim_at_all_is_refused(serve, provider):
    app = serve()
    provider.set_user("plain-1", {"preferred_username": "plain"})
    response = sign_on(app.client, "plain-1")
    assert response.status_code == 403
    assert response.json() == {"reason": "no_role", "username": "plain"}


def test_missing_username_claim_is_refused(serve, provider):
    app = serve()
    provider.set_user("anon-1", {"name": "No Username", "roles": ["admin"]})
    response = sign_on(app.client, "anon-1")
    assert response.status_code == 403
    assert response.json() == {"reason": "no_username", "username": None}


def test_user_denies_at_the_provider(serve, provider):
    app = serve()
    callback = authorize(start_sign_on(app.client), None, deny=True)
    assert parse_qs(urlsplit(callback).query)["error"] == ["access_denied"]
    response = app.client.get(callback)
    assert response.status_code == 403
    assert response.json() == {"reason": "provider_error", "username": None}


def test_forged_state_is_refused(serve, provider):
    app = serve()
    provider.set_user("house-2", HOUSE)
    callback = authorize(start_sign_on(app.client), "house-2")
    response = app.client.get(with_query(callback, state="forged-state"))
    assert response.status_code == 403
    assert response.json() == {"reason": "bad_state", "username": None}


def test_callback_in_another_browser_is_refused(serve, provider):
    """Login CSRF: a callback URL started by someone else, opened by a browser with no sign-on under way."""
    app = serve()
    provider.set_user("house-3", HOUSE)
    callback = authorize(start_sign_on(app.client), "house-3")
    with httpx.Client(timeout=30) as other_browser:
        response = other_browser.get(callback)
    assert response.status_code == 403
    assert response.json() == {"reason": "bad_state", "username": None}
    assert app.client.get(callback).json()["name"] == "dr.house"   # the browser that started it still can


def test_a_callback_works_once(serve, provider):
    app = serve()
    provider.set_user("house-4", HOUSE)
    callback = authorize(start_sign_on(app.client), "house-4")
    assert app.client.get(callback).status_code == 200
    response = app.client.get(callback)
    assert response.status_code == 403
    assert response.json() == {"reason": "bad_state", "username": None}


def test_forged_code_is_refused(serve, provider):
    app = serve()
    provider.set_user("house-5", HOUSE)
    callback = authorize(start_sign_on(app.client), "house-5")
    response = app.client.get(with_query(callback, code="not-a-code"))
    assert response.status_code == 403
    assert response.json() == {"reason": "token_error", "username": None}


def test_wrong_client_secret_is_refused(serve, provider):
    app = SignOnApp()
    client_id, _ = provider.register_client([app.url + CALLBACK_PATH])
    app.start(OidcSettings(issuer=provider.url, client_id=client_id, client_secret="not-the-secret"))
    try:
        provider.set_user("house-6", HOUSE)
        response = sign_on(app.client, "house-6")
        assert response.status_code == 403
        assert response.json() == {"reason": "token_error", "username": None}
    finally:
        app.stop()


def test_provider_down_at_login_then_up(serve):
    port = free_port()
    settings = OidcSettings(issuer=f"http://127.0.0.1:{port}", client_id="mura-review", client_secret="s3cret")
    app = serve(settings=settings)    # discovery is not tried at start: the app starts without the provider
    for _ in range(2):                # a failed discovery is not remembered
        response = app.client.get("/auth/oidc/login")
        assert response.status_code == 403
        assert response.json() == {"reason": "provider_unreachable", "username": None}
        assert app.client.get("/health").text == "ok"
    with OidcProvider(port, require_registration=False) as late:
        late.set_user("house-7", HOUSE)
        response = sign_on(app.client, "house-7")
        assert response.status_code == 200, response.text
        assert response.json()["role"] == "reviewer"


def test_discovery_naming_another_issuer_is_refused(serve):
    app = SignOnApp()
    app.start(OidcSettings(issuer=app.url + "/elsewhere", client_id="mura-review", client_secret="s3cret"))
    try:
        FOREIGN_DISCOVERIES.clear()
        for _ in range(2):
            response = app.client.get("/auth/oidc/login")
            assert response.status_code == 403
            assert response.json() == {"reason": "issuer_mismatch", "username": None}
        assert len(FOREIGN_DISCOVERIES) == 2     # a refused document is fetched again, in case it is fixed
    finally:
        app.stop()


def test_redirect_uri_from_public_url(serve, provider):
    app = SignOnApp()
    app.start(provider.settings(app.url + CALLBACK_PATH), public_url=app.url + "/")
    try:
        authorization_url = start_sign_on(app.client)
        assert parse_qs(urlsplit(authorization_url).query)["redirect_uri"] == [app.url + CALLBACK_PATH]
        provider.set_user("house-8", HOUSE)
        assert app.client.get(authorize(authorization_url, "house-8")).json()["name"] == "dr.house"
    finally:
        app.stop()
    proxied = serve(public_url="https://review.hospital.example/mura")
    authorization_url = start_sign_on(proxied.client)
    assert parse_qs(urlsplit(authorization_url).query)["redirect_uri"] == \
        ["https://review.hospital.example/mura" + CALLBACK_PATH]


@pytest.mark.parametrize("https", [False, True])
def test_state_cookie_attributes(serve, https):
    app = serve(https=https)
    cookie = SimpleCookie()
    header = state_cookie(app.client.get("/auth/oidc/login"))
    cookie.load(header)
    morsel = cookie[STATE_COOKIE]
    assert morsel["samesite"].lower() == "lax"    # the provider's redirect back is a cross-site navigation
    assert morsel["httponly"] is True
    assert morsel["max-age"] == "600"
    assert morsel["path"] == "/"
    assert bool(morsel["secure"]) is https


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="Debian's chromium is needed (make system-deps)")
def test_sign_on_in_a_browser_across_sites():
    """A real browser, the provider on another site (localhost) than the app (127.0.0.1): the provider's
    redirect back is a cross-site navigation, which the SameSite=Lax state cookie accompanies (a Strict one
    does not: the callback is refused bad_state)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with OidcProvider(hostname="localhost") as provider:
        app = SignOnApp()
        try:
            app.start(provider.settings(app.url + CALLBACK_PATH))
            provider.set_user("house-b", HOUSE)
            with sync_api.sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM)
                try:
                    page = browser.new_page()
                    page.goto(app.url + LOGIN_PATH)
                    assert page.url.startswith(provider.url + "/oauth2/authorize?")
                    page.fill('input[name="sub"]', "house-b")
                    page.click('button[type="submit"]:has-text("Authorize")')
                    page.wait_for_url(app.url + CALLBACK_PATH + "?*")
                    assert page.inner_text("body").strip() == \
                        '{"name":"dr.house","full_name":"Gregory House","role":"reviewer"}'
                finally:
                    browser.close()
        finally:
            app.stop()
