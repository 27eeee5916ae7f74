"""`identity.web.Auth`, made safe to run in a server that must never hang or trust blindly.

`identity` 0.11 is used as it is for the protocol (PKCE, state, nonce, token cache in the
session). This subclass changes only what a production deployment cannot live with:

* MSAL is built without a timeout and `log_out()` fetches discovery with a bare
  `requests.get`: an identity provider that accepts connections and never answers would
  hold a worker forever. Every call here goes through one pooled session whose every
  request carries a connect and read timeout.
* MSAL checks the id token's nonce, but not its audience or issuer: the claims are
  checked here before anyone is signed in with them.
* identity builds a new MSAL application for every token look-up; here each thread keeps
  one, and MSAL's cached-token answer is remembered until MSAL itself would refresh it, so
  that a page view costs close to what its Graph call costs (see `make bench`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.cookiejar
import logging
import os
import threading
import time
import urllib.request
from collections import OrderedDict

import identity.web
import msal
import requests
from requests.adapters import HTTPAdapter

logger = logging.getLogger(__name__)

# Seconds. Connect fails fast; a token request that takes longer than this is a hang.
IDP_CONNECT_TIMEOUT = 3.05
IDP_READ_TIMEOUT = 5
# After a failed end-session lookup, sign-outs skip it for this many seconds.
DISCOVERY_RETRY_AFTER = 30

# MSAL stops using a cached access token this many seconds before it expires.
MSAL_EXPIRY_MARGIN = 300
# Remembered token look-ups per process (see get_token_for_user); each holds one user's cache.
TOKEN_MEMO_SIZE = 1024


class IdentityProviderUnavailable(Exception):
    """Discovery failed or answered something that is not OIDC metadata."""


class IdentityProviderMisbehaved(Exception):
    """The identity provider answered, but not with what OAuth promises."""


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
    # Performance (make bench): with trust_env on, requests walks the whole environment for
    # proxy settings and looks for ~/.netrc on every request (~0.1 ms of CPU per Graph call,
    # about 7 % of a page view). Without proxy settings all it finds is the CA bundle: read
    # that once here. With a proxy configured, requests' own per-request handling (NO_PROXY)
    # is kept. ~/.netrc is never wanted: its Basic credentials would replace the bearer token.
    if not any(scheme != "no" for scheme in urllib.request.getproxies_environment()):
        session.trust_env = False
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    return session


class _HttpCacheWithoutSharedThrottle(dict):
    """MSAL's http_cache (discovery answers and throttle records), minus one kind of record.

    After a 429 or 5xx from the token endpoint MSAL refuses, for 5 s or for the Retry-After
    (up to an hour), to send the same request again. Its key names the "account": the
    request's refresh token, else its code. But MSAL 1.39 reads the form with dict.get(),
    whose None for a missing refresh_token hides the code, so every user's sign-in (an
    auth-code redemption) shares one key, and one failed redemption refused everybody's
    sign-in on the worker. Records under that shared key are not kept; those per refresh
    token (one user's refreshes) still are.
    """

    _SHARED_KEY_END = f"hash={hashlib.sha256(repr(None).encode()).hexdigest()} 429/5xx/Retry-After"

    def __setitem__(self, key, value):
        if isinstance(key, str) and key.endswith(self._SHARED_KEY_END):
            return
        super().__setitem__(key, value)


class _CurrentUserTokenCache:
    """The token cache of a reused MSAL app: forwards every call to `current`, the cache that
    identity has just loaded from this user's session.

    MSAL keeps bound methods of its cache (add via a lambda, remove_rt, update_rt) from when
    the app was built, so those forward at call time; everything else goes through __getattr__.
    """

    def __init__(self):
        self.current = None

    def __getattr__(self, name):
        return getattr(self.current, name)

    def add(self, *args, **kwargs):
        return self.current.add(*args, **kwargs)

    def remove_rt(self, *args, **kwargs):
        return self.current.remove_rt(*args, **kwargs)

    def update_rt(self, *args, **kwargs):
        return self.current.update_rt(*args, **kwargs)


class EntraAuth(identity.web.Auth):
    """One per process: it shares its HTTP pool and MSAL's discovery cache across requests."""

    def __init__(self, *, pool_size: int = 16, timeout=(IDP_CONNECT_TIMEOUT, IDP_READ_TIMEOUT), **kwargs):
        super().__init__(http_cache=_HttpCacheWithoutSharedThrottle(), **kwargs)
        self._http = pooled_session(pool_size=pool_size, timeout=timeout)
        self._issuer: str | None = None
        self._oidc_config: dict | None = None
        self._oidc_config_retry_at = 0.0
        self._per_thread = threading.local()
        self._token_memo: OrderedDict = OrderedDict()
        self._token_memo_lock = threading.Lock()

    # --- what identity builds -------------------------------------------------------

    def _build_msal_app(self, client_credential=None, cache=None):
        # Performance (make bench): identity builds a new MSAL app for every token look-up
        # (~0.08-0.12 ms of CPU: authority, clients and a failed `import msal_extensions`).
        # An MSAL app is meant to be long-lived and to serve many accounts through its token
        # cache; so each thread keeps one confidential app and points its cache at the
        # cache identity loaded from this user's session. One per thread: a call never
        # sees another request's cache.
        if client_credential and cache is not None:
            app = getattr(self._per_thread, "app", None)
            if app is None:
                app = self._new_msal_app(client_credential, _CurrentUserTokenCache())
                self._per_thread.app = app
            app.token_cache.current = cache
            return app
        return self._new_msal_app(client_credential, cache)

    def _new_msal_app(self, client_credential, cache):
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
        # on the instance. Here the fetch is bounded and holds no lock (sign-outs must not
        # queue behind a hanging one), and a failure is remembered briefly so that a burst
        # of sign-outs during an outage does not wait out one timeout each.
        if self._oidc_config is not None:
            return self._oidc_config
        if time.monotonic() < self._oidc_config_retry_at:
            raise requests.ConnectionError("OIDC discovery failed moments ago")
        authority = self._oidc_authority or self._authority
        try:
            response = self._http.get(f"{authority}/.well-known/openid-configuration")
            response.raise_for_status()
            config = response.json()
            if not isinstance(config, dict):
                raise requests.exceptions.InvalidJSONError("OIDC discovery is not a JSON object")
        except requests.RequestException:
            self._oidc_config_retry_at = time.monotonic() + DISCOVERY_RETRY_AFTER
            raise
        self._oidc_config = config
        return config

    def end_session_endpoint_missing(self) -> bool:
        """True when discovery answered and names no end-session endpoint (not an outage)."""
        return self._oidc_config is not None and not self._oidc_config.get(self._END_SESSION_ENDPOINT)

    def _save_user_into_session(self, id_token_claims):
        # Called by identity with the claims of every id token it accepts: at sign-in and
        # whenever a refresh brings a new one. MSAL has checked the nonce; check the rest.
        self.check_id_token_claims(id_token_claims)
        super()._save_user_into_session(id_token_claims)

    # --- checks and small additions ---------------------------------------------------

    def check_id_token_claims(self, claims: dict) -> None:
        if claims.get("aud") != self._client_id:
            raise IdTokenRejected("The id token was issued to another application (aud).")
        if not all(isinstance(claims.get(name), (int, float)) for name in ("iat", "exp")) or not (
                claims.get("sub") or claims.get("oid")):
            raise IdTokenRejected("The id token lacks the claims every id token carries (iat, exp, sub).")
        if not self._issuer:
            raise IdTokenRejected("The identity provider's discovery document names no issuer.")
        tenant = claims.get("tid") or ""
        # Multi-tenant authorities (common, organizations) publish a templated issuer.
        expected = self._issuer.replace("{tenantid}", tenant)
        if (claims.get("iss") or "").rstrip("/") != expected.rstrip("/"):
            raise IdTokenRejected("The id token comes from another issuer than the configured authority.")
        if tenant and tenant not in expected.split("/"):
            raise IdTokenRejected("The id token belongs to another tenant than the configured one.")

    def get_token_for_user(self, scopes, force_refresh: bool = False):
        """identity's call, plus a forced refresh for an access token the API refused."""
        # Performance (make bench): on every page view identity parses the session's whole
        # token cache and MSAL searches it (~0.06 ms of CPU), to find the access token it
        # found last time. MSAL's answer for this exact token cache and these scopes is
        # remembered until MSAL itself would stop using that token (5 minutes before it
        # expires, or at its refresh_on). A refresh changes the cache, hence the key; a
        # forced refresh never looks here.
        serialized, key = (None, None) if force_refresh else self._token_memo_key(scopes)
        if key is not None:
            hit = self._token_memo.get(key)
            if hit is not None and hit[0] > time.time() and hit[3] == serialized:
                return dict(hit[1], expires_in=int(hit[2] - time.time()))
        result = self._get_token_for_user(scopes, force_refresh=force_refresh or None)
        if key is not None and result.get("token_source") == "cache" and "access_token" in result:
            now = time.time()
            expires_on = now + int(result.get("expires_in") or 0)
            use_until = expires_on - MSAL_EXPIRY_MARGIN
            if result.get("refresh_on"):
                use_until = min(use_until, int(result["refresh_on"]))
            if use_until > now:
                with self._token_memo_lock:
                    self._token_memo[key] = (use_until, dict(result), expires_on, serialized)
                    while len(self._token_memo) > TOKEN_MEMO_SIZE:
                        self._token_memo.popitem(last=False)
        return result

    def _token_memo_key(self, scopes):
        """(the session's serialized token cache, the memo key for it), or (None, None)."""
        session = self._current_session()
        serialized = session.get(self._TOKEN_CACHE)
        user = session.get(self._USER)
        if not serialized or not user:
            return None, None
        # Python's own string hash (keyed per process, so nobody can aim for a collision)
        # finds the entry; a hit also needs the whole token cache to be equal.
        return serialized, (hash(serialized), tuple(scopes or ()), user.get("preferred_username"))

    def _current_session(self):
        """The session itself rather than Flask's `session` proxy, which resolves the
        request context again on every use."""
        resolve = getattr(self._session, "_get_current_object", None)
        return resolve() if resolve is not None else self._session

    def log_out(self, post_logout_redirect_uri: str) -> str:
        """identity's call; the signed-out session's remembered token answer goes too, so
        that its token cache (refresh token included) does not outlive the sign-out here."""
        serialized = self._current_session().get(self._TOKEN_CACHE)
        if serialized:
            with self._token_memo_lock:
                for key in [k for k, hit in self._token_memo.items() if hit[3] == serialized]:
                    del self._token_memo[key]
        return super().log_out(post_logout_redirect_uri)

    def complete_log_in(self, auth_response=None):
        """identity's call; an answer from the identity provider that is not OAuth-shaped
        (a token response that is not an object, one without an id token) is an outage of
        sorts, not a reason for a 500."""
        try:
            return super().complete_log_in(auth_response)
        except (KeyError, TypeError, AttributeError) as exc:
            raise IdentityProviderMisbehaved(f"Unexpected answer at sign-in: {type(exc).__name__}") from exc

    def _get_token_for_user(self, scopes, force_refresh=None):
        try:
            return super()._get_token_for_user(scopes, force_refresh=force_refresh)
        except (KeyError, TypeError, AttributeError) as exc:
            raise IdentityProviderMisbehaved(f"Unexpected token answer: {type(exc).__name__}") from exc

    @contextlib.contextmanager
    def replacing_the_session(self, auth_response: dict):
        """Complete a sign-in inside this block so that the new user starts with a clean
        session: whoever was signed in before in this browser leaves no tokens behind.

        Only a callback that carries a code for the sign-in this browser started clears
        anything, and if the sign-in then does not happen (an error, an outage, a refused
        token) the previous session is put back: a failed or forged callback loses nothing.
        """
        flow = self._session.get(self._AUTH_FLOW)
        if not (flow and auth_response.get("code") and auth_response.get("state") == flow.get("state")):
            yield
            return
        previous = dict(self._session)
        self._session.clear()
        self._session[self._AUTH_FLOW] = flow
        try:
            yield
        finally:
            if self._USER not in self._session:
                self._session.clear()
                self._session.update(previous)
                self._session.pop(self._AUTH_FLOW, None)  # the code was spent either way

    def pending_state(self) -> str | None:
        """The OAuth state of the sign-in in progress, if any."""
        return (self._session.get(self._AUTH_FLOW) or {}).get("state")

    def pending_next_link(self) -> str | None:
        """Where the sign-in in progress should end up (identity keeps it in the flow)."""
        return (self._session.get(self._AUTH_FLOW) or {}).get(f"{identity.web.__name__}.next_link")

    def forget_pending_sign_in(self) -> None:
        """Drop the sign-in flow so that its state and code can never be used again."""
        self._session.pop(self._AUTH_FLOW, None)
