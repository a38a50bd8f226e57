"""A local OpenID Connect provider for the sign-on tests: oidc-provider-mock (a small Flask app) in a thread.

The provider listens on 127.0.0.1 on a free port, over plain HTTP (authlib's provider side accepts http
only for loopback addresses, which this is). It publishes discovery at
``<url>/.well-known/openid-configuration``, signs ID tokens with RS256 and a key it makes at start, and
names itself by the Host of the request: use ``OidcProvider.url`` as the issuer, so discovery, the token
and the browser all see one issuer (the app and the browser must reach it by the same name).

Clients: with ``require_registration`` (the default) a client must be registered
(:meth:`OidcProvider.register_client`, the provider's dynamic registration: it chooses the id and the
secret), and then the provider checks the redirect URI and the secret as a hospital's would. Without it
any client id and secret are accepted.

Users: the provider's page asks only for the subject (``sub``); the claims a subject gets in its ID
token are set beforehand with :meth:`OidcProvider.set_user` (``PUT /users/<sub>``), or given at start
(``users``: those also appear on the page as one-click buttons). A subject never set gets
``{"email": sub}``. Standard claims are filtered by scope (``preferred_username`` and ``name`` need
``profile``, ``email`` needs ``email``); other claims (``roles``, ``groups``) are always included.

Driving a sign-on the way a browser does, without a browser::

    authorization_url = start_sign_on(app_client)           # GET /auth/oidc/login -> 302 to the provider
    callback_url = authorize(authorization_url, "dr.house")  # the provider's form, submitted
    response = app_client.get(callback_url)                  # back to the app, with its state cookie

The same from Playwright (``page`` of a browser context that opened the app)::

    provider.set_user("dr.house", {"preferred_username": "dr.house", "name": "Gregory House", "roles": ["reviewer"]})
    page.goto(app_url + "/auth/oidc/login")                  # or click the sign-on button of the app
    page.fill('input[name="sub"]', "dr.house")               # the provider's form: one text field, "sub"
    page.click('button[type="submit"]:has-text("Authorize")')
    # to deny instead: page.click('button[name="action"][value="deny"]')   (the "Deny" button)
    # a predefined user (users=...): page.click('button[name="sub"][value="dr.house"]')
    page.wait_for_url(app_url + "/**")                       # the provider redirects back to the callback
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from urllib.parse import quote

import httpx
import werkzeug.serving
from oidc_provider_mock import User, app

from listener.config import OidcSettings
from tests.listener.orthanc import free_port

LOGIN_PATH = "/auth/oidc/login"


class OidcProvider:
    """oidc-provider-mock served by werkzeug in a thread; ``stop()`` (or ``with``) ends it."""

    def __init__(self, port: int | None = None, *, require_registration: bool = True, users: Sequence[User] = (),
                 hostname: str = "127.0.0.1") -> None:
        """``hostname``: the name in ``url`` (the issuer); "localhost" puts the provider on another site than an
        app at 127.0.0.1, so a browser treats the redirects between them as cross-site (SameSite applies)."""
        self.port = port or free_port()
        self.hostname = hostname
        # bound and listening once make_server returns: requests wait in the backlog until the thread serves
        self.server = werkzeug.serving.make_server(
            "127.0.0.1", self.port, app(require_client_registration=require_registration, require_nonce=True,
                                        user_claims=list(users)), threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="oidc-provider", daemon=True)
        self.thread.start()
        self.http = httpx.Client(base_url=self.url, timeout=30)

    @property
    def url(self) -> str:
        return f"http://{self.hostname}:{self.port}"

    def register_client(self, redirect_uris: list[str]) -> tuple[str, str]:
        """A new client allowed to send browsers back to ``redirect_uris``: its (id, secret)."""
        response = self.http.post("/oauth2/clients", json={"redirect_uris": redirect_uris,
                                                            "token_endpoint_auth_method": "client_secret_basic"})
        assert response.status_code == 201, response.text
        body = response.json()
        return body["client_id"], body["client_secret"]

    def settings(self, redirect_uri: str, **overrides) -> OidcSettings:
        """``[review.oidc]`` for a newly registered client of this provider."""
        client_id, client_secret = self.register_client([redirect_uri])
        return OidcSettings(**{"issuer": self.url, "client_id": client_id, "client_secret": client_secret, **overrides})

    def set_user(self, sub: str, claims: dict) -> None:
        """The claims (besides ``sub``) of the ID tokens issued to ``sub`` from now on."""
        response = self.http.put(f"/users/{quote(sub, safe='')}", json=claims)
        assert response.status_code == 204, response.text

    def stop(self) -> None:
        self.http.close()
        self.server.shutdown()
        self.thread.join(timeout=30)
        self.server.server_close()

    def __enter__(self) -> OidcProvider:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_sign_on(app_client: httpx.Client, login_path: str = LOGIN_PATH) -> str:
    """GET the app's login (``app_client`` keeps the app's cookies, as a browser would); the provider's
    authorization URL it redirects to."""
    response = app_client.get(login_path, follow_redirects=False)
    assert response.status_code == 302, (response.status_code, response.text)
    return response.headers["location"]


def authorize(authorization_url: str, sub: str | None, *, deny: bool = False) -> str:
    """What a person does on the provider's page: open it, then submit ``sub`` (Authorize) or Deny.

    Returns the URL the provider sends the browser back to (the app's callback with ``code`` and
    ``state``, or with ``error=access_denied``). The form posts back to the page's own URL."""
    with httpx.Client(timeout=30) as browser:
        page = browser.get(authorization_url)
        assert page.status_code == 200 and 'name="sub"' in page.text, (page.status_code, page.text[:500])
        answer = browser.post(authorization_url, data={"action": "deny"} if deny else {"sub": sub})
    assert answer.status_code == 302, (answer.status_code, answer.text[:500])
    return answer.headers["location"]


def sign_on(app_client: httpx.Client, sub: str, login_path: str = LOGIN_PATH) -> httpx.Response:
    """A whole sign-on as ``sub`` (whose claims were set with ``set_user``): the app's answer to the callback."""
    return app_client.get(authorize(start_sign_on(app_client, login_path), sub), follow_redirects=False)
