"""Single sign-on for the review app: OpenID Connect (authorization code flow) through authlib.

``[review.oidc]`` names the hospital's provider by its issuer; the provider's endpoints and keys are
found by discovery (``<issuer>/.well-known/openid-configuration``) at the first sign-on, not at start,
so the app starts while the provider is down. A sign-on is two requests:

* ``GET /auth/oidc/login`` sends the browser to the provider with a fresh ``state``, ``nonce`` and PKCE
  verifier, which authlib keeps in a short-lived signed cookie of its own (:meth:`OidcSignOn.middleware`);
* ``GET /auth/oidc/callback`` is where the provider sends the browser back: authlib checks the state
  against that cookie, exchanges the code for tokens (authenticating with the client secret) and checks
  the ID token (signature against the provider's published keys, issuer, audience, expiry, nonce).

The identity comes from the ID token's claims: the user name, the full name and a role mapped from a
claim the provider fills with the user's groups or roles (:func:`role_from_claims`). Whoever mounts
the routes decides what a signed-in identity gets (a session of the app) and what a refusal shows.
"""
from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.base_client.errors import MismatchingStateError
from authlib.integrations.starlette_client import OAuth, OAuthError
from authlib.integrations.starlette_client.apps import StarletteOAuth2App
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from listener.config import OidcSettings

try:  # authlib 1.6+ checks ID tokens with joserfc; older releases with authlib.jose (an AuthlibBaseError)
    from joserfc.errors import JoseError as _JoseError
    _ID_TOKEN_ERRORS: tuple[type[Exception], ...] = (_JoseError, AuthlibBaseError)
except ImportError:  # pragma: no cover
    _ID_TOKEN_ERRORS = (AuthlibBaseError,)

log = logging.getLogger(__name__)

STATE_COOKIE = "mura_review_oidc"
STATE_MAX_AGE_S = 600                     # a sign-on started more than 10 minutes ago is refused (bad_state)
LOGIN_PATH = "/auth/oidc/login"
CALLBACK_PATH = "/auth/oidc/callback"
_CALLBACK_ROUTE = "oidc_callback"
_TIMEOUT_S = 10.0                         # each request to the provider (discovery, keys, token)
ROLES = ("admin", "reviewer", "viewer")   # highest first


@dataclass(frozen=True)
class OidcIdentity:
    name: str        # the user name (the username claim)
    full_name: str   # the name claim, "" when the provider sends none
    role: str        # viewer, reviewer or admin


def role_from_claims(claims: Mapping, settings: OidcSettings) -> str | None:
    """The highest role (admin > reviewer > viewer) that any value of the role claim maps to.

    The claim may be one string or a list of strings (values that are not strings are ignored);
    values are compared exactly, case included. None when the claim is absent or no value maps."""
    value = claims.get(settings.role_claim)
    values = [value] if isinstance(value, str) else value if isinstance(value, list | tuple) else []
    held = {v for v in values if isinstance(v, str)}
    for role, accepted in zip(ROLES, (settings.admin_values, settings.reviewer_values, settings.viewer_values)):
        if held & set(accepted):
            return role
    return None


class _Refused(Exception):
    def __init__(self, reason: str, username: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.username = username


def _username(claims: Mapping, claim: str) -> str | None:
    value = claims.get(claim)
    if not isinstance(value, str) or not value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return None
    return value.strip()


class OidcSignOn:
    """The sign-on's middleware and routes for one provider (``[review.oidc]``).

    ``public_url``: the address users open (``[review] public_url``); the provider sends the browser back
    to ``public_url + /auth/oidc/callback``, which must be registered with the provider as the client's
    redirect URI. Empty: the address of the request (right unless a proxy rewrites it).
    ``https``: the app is served over HTTPS, so the state cookie is marked Secure."""

    def __init__(self, settings: OidcSettings, public_url: str = "", https: bool = False) -> None:
        self.settings = settings
        self.public_url = public_url.rstrip("/")
        self.https = https
        self.issuer = settings.issuer.rstrip("/")
        oauth = OAuth()
        oauth.register(
            "oidc", client_id=settings.client_id, client_secret=settings.client_secret,
            server_metadata_url=self.issuer + "/.well-known/openid-configuration",
            client_kwargs={"scope": settings.scope, "code_challenge_method": "S256", "timeout": _TIMEOUT_S})
        client = oauth.create_client("oidc")
        assert isinstance(client, StarletteOAuth2App)
        self.client = client

    def middleware(self) -> list[Middleware]:
        """The cookie that carries authlib's state, nonce and PKCE verifier from the login to the callback.

        Its own name (it is not the app's session) and its own secret, new with each process: a restart
        only refuses the sign-ons under way. SameSite=Lax, not Strict: the provider's redirect back is a
        cross-site navigation, which a Strict cookie would not accompany."""
        return [Middleware(SessionMiddleware, secret_key=secrets.token_urlsafe(32), session_cookie=STATE_COOKIE,
                           max_age=STATE_MAX_AGE_S, same_site="lax", https_only=self.https)]

    def routes(self, signed_in: Callable[[Request, OidcIdentity], Awaitable[Response]],
               refused: Callable[[Request, str, str | None], Awaitable[Response]]) -> list[Route]:
        """``GET /auth/oidc/login`` and ``GET /auth/oidc/callback``.

        ``signed_in(request, identity)`` answers a successful sign-on; ``refused(request, reason, username)``
        any failure, with a short reason: provider_unreachable, provider_misconfigured, issuer_mismatch
        (login); provider_error (the provider said no, e.g. the user denied), bad_state (no sign-on under
        way in this browser, or not this one), token_error, no_id_token, bad_id_token, no_username,
        no_role, error (callback). ``username`` is the user name when the provider vouched for one."""

        async def login(request: Request) -> Response:
            try:
                await self._discover()
                if self.public_url:
                    redirect_uri = self.public_url + CALLBACK_PATH
                else:
                    redirect_uri = str(request.url_for(_CALLBACK_ROUTE))
                response = await self.client.authorize_redirect(request, redirect_uri)
            except _Refused as refusal:
                return await refused(request, refusal.reason, None)
            except Exception:
                log.exception("single sign-on: could not send the browser to %s", self.issuer)
                return await refused(request, "error", None)
            response.headers["Cache-Control"] = "no-store"
            return response

        async def callback(request: Request) -> Response:
            try:
                identity = await self._identity(request)
            except _Refused as refusal:
                log.warning("single sign-on refused: %s%s", refusal.reason,
                            f" ({refusal.username})" if refusal.username else "")
                return await refused(request, refusal.reason, refusal.username)
            log.info("single sign-on: %s as %s", identity.name, identity.role)
            return await signed_in(request, identity)

        return [Route(LOGIN_PATH, login, methods=["GET"], name="oidc_login"),
                Route(CALLBACK_PATH, callback, methods=["GET"], name=_CALLBACK_ROUTE)]

    async def _discover(self) -> dict[str, Any]:
        """The provider's metadata (authlib keeps it once fetched; a failure is tried again next time)."""
        try:
            metadata = await self.client.load_server_metadata()
        except (httpx.HTTPError, ValueError) as error:
            log.warning("single sign-on: discovery at %s failed: %s", self.issuer, error)
            raise _Refused("provider_unreachable") from error
        if not isinstance(metadata.get("authorization_endpoint"), str) or \
                not isinstance(metadata.get("token_endpoint"), str) or not isinstance(metadata.get("jwks_uri"), str):
            log.warning("single sign-on: %s's discovery document lacks endpoints", self.issuer)
            metadata.pop("_loaded_at", None)      # fetched again at the next sign-on, once the provider is fixed
            raise _Refused("provider_misconfigured")
        # OpenID Connect Discovery 1.0, 4.3: the document must name the issuer it was fetched for
        if str(metadata.get("issuer", "")).rstrip("/") != self.issuer:
            log.warning("single sign-on: %s's discovery document names issuer %r", self.issuer, metadata.get("issuer"))
            metadata.pop("_loaded_at", None)
            raise _Refused("issuer_mismatch")
        return metadata

    async def _identity(self, request: Request) -> OidcIdentity:
        if request.query_params.get("error"):
            log.warning("single sign-on: the provider answered %s: %s", request.query_params.get("error"),
                        request.query_params.get("error_description", ""))
            raise _Refused("provider_error")
        try:
            await self._discover()
            token = await self.client.authorize_access_token(request)
        except _Refused:
            raise
        except MismatchingStateError as error:
            raise _Refused("bad_state") from error
        except OAuthError as error:       # the token endpoint's answer: e.g. invalid_grant
            log.warning("single sign-on: token request refused: %s %s", error.error, error.description or "")
            raise _Refused("token_error") from error
        except _ID_TOKEN_ERRORS as error:    # the ID token's signature or claims
            log.warning("single sign-on: ID token rejected: %s", error)
            raise _Refused("bad_id_token") from error
        except (httpx.HTTPError, ValueError) as error:
            log.warning("single sign-on: token request to %s failed: %s", self.issuer, error)
            raise _Refused("provider_unreachable") from error
        except Exception as error:
            log.exception("single sign-on: callback failed")
            raise _Refused("error") from error
        claims = token.get("userinfo")    # the verified ID token's claims (authlib's parse_id_token)
        if not isinstance(claims, Mapping):
            raise _Refused("no_id_token")
        username = _username(claims, self.settings.username_claim)
        if username is None:
            raise _Refused("no_username")
        role = role_from_claims(claims, self.settings)
        if role is None:
            raise _Refused("no_role", username)
        full_name = claims.get(self.settings.name_claim)
        return OidcIdentity(name=username, full_name=full_name.strip() if isinstance(full_name, str) else "", role=role)
