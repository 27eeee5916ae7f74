"""`identity.web.Auth`, made safe to run in a server that must never hang or trust blindly.

`identity` 0.11 is used as it is for the protocol (PKCE, state, nonce, token cache in the
session). This subclass changes only what a production deployment cannot live with:

* MSAL is built without a timeout and `log_out()` fetches discovery with a bare
  `requests.get`: an identity provider that accepts connections and never answers would
  hold a worker forever. Every call here goes through one pooled session whose every
  request carries a connect and read timeout.
* MSAL checks the id token's nonce, but not its audience or issuer: the claims are
  checked here before anyone is signed in with them.
"""

from __future__ import annotations

import functools
import http.cookiejar
import logging
import threading

import identity.web
import msal
import requests
from requests.adapters import HTTPAdapter

logger = logging.getLogger(__name__)

# Seconds. Connect fails fast; a token request that takes longer than this is a hang.
IDP_CONNECT_TIMEOUT = 3.05
IDP_READ_TIMEOUT = 5


class IdentityProviderUnavailable(Exception):
    """Discovery failed or answered something that is not OIDC metadata."""


class IdTokenRejected(Exception):
    """An id token that is not meant for this app or not from the configured issuer."""


def pooled_session(*, pool_size: int, timeout: tuple[float, float], retries=0) -> requests.Session:
    """A `requests.Session` that is safe to share across threads and users.

    Cookies are refused: a shared session that stored one would send it on behalf of
    every user. Every request gets `timeout` unless the caller passes its own.
    """
    session = requests.Session()
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=retries)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.request = functools.partial(session.request, timeout=timeout)
    return session


class EntraAuth(identity.web.Auth):
    """One per process: it shares its HTTP pool and MSAL's discovery cache across requests."""

    def __init__(self, *, pool_size: int = 16, timeout=(IDP_CONNECT_TIMEOUT, IDP_READ_TIMEOUT), **kwargs):
        super().__init__(**kwargs)
        self._http = pooled_session(pool_size=pool_size, timeout=timeout)
        self._issuer: str | None = None
        self._oidc_config_lock = threading.Lock()
        self._oidc_config: dict | None = None

    # --- what identity builds -------------------------------------------------------

    def _build_msal_app(self, client_credential=None, cache=None):
        try:
            app = (msal.ConfidentialClientApplication if client_credential else msal.PublicClientApplication)(
                self._client_id,
                client_credential=client_credential,
                oidc_authority=self._oidc_authority,
                authority=self._authority,
                token_cache=cache,
                http_client=self._http,  # pooled, with timeouts (MSAL adds none of its own)
                http_cache=self._http_cache,  # discovery fetched once per process, not per request
                instance_discovery=False,
            )
        except ValueError as exc:  # MSAL's word for "discovery answered 4xx or not JSON"
            raise IdentityProviderUnavailable(str(exc)) from exc
        # The issuer that id tokens must carry; the same for every app this object builds.
        self._issuer = getattr(app.authority, "_issuer", None)
        return app

    def _get_oidc_config(self):
        # identity fetches this for log_out() with no timeout and caches it with lru_cache
        # on the instance; here it is bounded, and a failure is not remembered.
        with self._oidc_config_lock:
            if self._oidc_config is None:
                authority = self._oidc_authority or self._authority
                response = self._http.get(f"{authority}/.well-known/openid-configuration")
                response.raise_for_status()
                self._oidc_config = response.json()
            return self._oidc_config

    def _save_user_into_session(self, id_token_claims):
        # Called by identity with the claims of every id token it accepts: at sign-in and
        # whenever a refresh brings a new one. MSAL has checked the nonce; check the rest.
        self.check_id_token_claims(id_token_claims)
        super()._save_user_into_session(id_token_claims)

    # --- checks and small additions ---------------------------------------------------

    def check_id_token_claims(self, claims: dict) -> None:
        if claims.get("aud") != self._client_id:
            raise IdTokenRejected("The id token was issued to another application (aud).")
        expected = self._issuer
        if expected:
            tenant = claims.get("tid", "")
            # Multi-tenant authorities (common, organizations) publish a templated issuer.
            expected = expected.replace("{tenantid}", tenant)
            if (claims.get("iss") or "").rstrip("/") != expected.rstrip("/"):
                raise IdTokenRejected("The id token comes from another issuer than the configured authority.")
            if tenant and tenant not in expected:
                raise IdTokenRejected("The id token belongs to another tenant than the configured one.")

    def get_token_for_user(self, scopes, force_refresh: bool = False):
        """identity's call, plus a forced refresh for an access token the API refused."""
        return self._get_token_for_user(scopes, force_refresh=force_refresh or None)

    def forget_pending_sign_in(self) -> None:
        """Drop the sign-in flow so that its state and code can never be used again."""
        self._session.pop(self._AUTH_FLOW, None)
