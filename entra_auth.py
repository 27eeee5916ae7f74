"""`identity.web.Auth`, made safe to run in a server that must never hang or trust blindly.

`identity` 0.11 is used as it is for the protocol (PKCE, state, nonce, the token cache in
the session). This subclass changes only what a production deployment cannot live with:

* Timeouts: MSAL is built without one and `log_out()` fetches discovery with a bare
  `requests.get`. Every identity-provider call here goes through one pooled client whose
  every request carries a connect and read timeout.
* The identity provider's answers are checked for the shape OAuth and OIDC promise before
  MSAL or identity read them (`IdentityProviderClient`).
* id tokens: MSAL checks the nonce only; the audience and issuer are checked here before
  anyone is signed in with them.
* MSAL's throttle record after a failed token request is kept per user, not shared by
  every sign-in of the worker (`HttpCacheWithoutSharedThrottle`).
* Completing a sign-in (`complete_sign_in`) decides every outcome in one place.

Every private name of identity or MSAL used here is listed in the README's section
"Where we depend on library internals", with the test that fails if it changes (identity's
own attributes `_session`, `_client_id`, `_authority`, ... included).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

import identity.web
import msal
import requests
from msal.oauth2cli.oidc import IdTokenError

from http_pool import pooled_session
from l1_token_cache import L1TokenCache

logger = logging.getLogger(__name__)

# Seconds. Connect fails fast; a token request that takes longer than this is a hang.
IDP_CONNECT_TIMEOUT = 3.05
IDP_READ_TIMEOUT = 5
# After a failed end-session lookup, sign-outs skip it for this many seconds.
DISCOVERY_RETRY_AFTER = 30

# identity's session key for where a sign-in should land (its name-mangled __NEXT_LINK).
NEXT_LINK_KEY = f"{identity.web.__name__}.next_link"
END_SESSION_ENDPOINT = "end_session_endpoint"  # OpenID Connect RP-Initiated Logout's discovery key
OIDC_SCOPES = {"openid", "profile", "offline_access", "email"}  # OpenID Connect's own, not an API's


class IdentityProviderUnavailable(Exception):
    """Discovery failed or answered something that is not OIDC metadata."""


class IdentityProviderMisbehaved(Exception):
    """The identity provider answered, but not with what OAuth promises."""


class NoIdToken(IdentityProviderMisbehaved):
    """A code was redeemed and the answer holds no id token: nobody can be signed in with it."""


class IdTokenRejected(Exception):
    """An id token that is not meant for this app or not from the configured issuer."""


class SignInFailed(Exception):
    """A callback that completes no sign-in: forged, damaged, replayed, expired, or from
    another browser. Nothing changed; the page offers to sign in again."""

    def __init__(self, reason: str, *, already_signed_in: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.already_signed_in = already_signed_in


class SignInError(Exception):
    """The identity provider answered the sign-in with an OAuth error (`result`)."""

    def __init__(self, result: dict, next_link: str | None):
        super().__init__(str(result.get("error")))
        self.result = result
        self.next_link = next_link


def _decodes_to_a_json_object(value: str) -> bool:
    """What Entra ID sends as client_info: base64url (padding optional) of a JSON object."""
    try:
        decoded = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (ValueError, binascii.Error):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False
    return isinstance(decoded, dict)


@dataclass
class _SignInOutcome:
    """What a sign-in's guard learnt while identity completed it."""

    answered_for_someone_else: bool = False  # a user flow of the signed-in user, answered for another


def _same_person(before: dict, after: dict) -> bool:
    for claim in ("oid", "sub"):
        if before.get(claim):
            return before.get(claim) == after.get(claim)
    return False


def _id_token_in(serialized_token_cache: str) -> str | None:
    """The newest id token in a serialized MSAL token cache (MSAL's public cache API)."""
    cache = msal.SerializableTokenCache()
    cache.deserialize(serialized_token_cache)
    tokens = [entry for entry in cache.search(msal.TokenCache.CredentialType.ID_TOKEN)
              if isinstance(entry.get("secret"), str)]
    return tokens[-1]["secret"] if tokens else None


def _json_object(response) -> dict | None:
    try:
        body = response.json()
    except (ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


class IdentityProviderClient:
    """The `http_client` MSAL is given (its documented interface: get, post, close).

    Pooled and bounded (see `http_pool`), and it checks the shape of what comes back, so
    that MSAL and identity never read a token answer that is not what OAuth promises:
    a token response is a JSON object with `access_token` and `token_type` (and an
    `id_token` for an authorization code), an error response a JSON object with `error`.
    5xx answers are left to MSAL, which raises them as HTTP errors (an outage: 503).
    It also counts token requests per thread: `complete_sign_in` needs to know whether one
    was made.
    """

    def __init__(self, session: requests.Session):
        self._session = session
        self._per_thread = threading.local()

    @property
    def token_requests(self) -> int:
        return getattr(self._per_thread, "token_requests", 0)

    @token_requests.setter
    def token_requests(self, value: int) -> None:
        self._per_thread.token_requests = value

    def get(self, url, **kwargs):
        response = self._session.get(url, **kwargs)
        if url.endswith("/.well-known/openid-configuration") and response.ok and _json_object(response) is None:
            raise IdentityProviderUnavailable("OIDC discovery did not answer with a JSON object.")
        return response

    def post(self, url, **kwargs):
        self.token_requests += 1
        response = self._session.post(url, **kwargs)
        if response.status_code == 429:  # throttled: an outage for now (503), whatever the body says
            response.raise_for_status()
        if response.status_code >= 500:
            return response
        body = _json_object(response)
        if body is None:
            raise IdentityProviderMisbehaved(f"The token endpoint's answer (HTTP {response.status_code}) "
                                             "is not a JSON object.")
        if response.ok:
            data = kwargs.get("data") if isinstance(kwargs.get("data"), dict) else {}
            # An access token is what OAuth promises, but only for a request that asked for
            # an API's scope: one for OpenID Connect's own scopes alone (B2C's edit-profile
            # flow, renewing an id token) gets an id token and no access token at B2C.
            asked = set(str(data.get("scope") or "").split()) - OIDC_SCOPES
            wanted = ["access_token", "token_type"] if asked or "access_token" in body else []
            if data.get("grant_type") == "authorization_code":
                wanted.append("id_token")
            missing = [name for name in wanted if not isinstance(body.get(name), str)]
            if missing == ["id_token"]:
                raise NoIdToken("The token response to a sign-in lacks an id token.")
            if missing:
                raise IdentityProviderMisbehaved(f"The token response lacks {', '.join(missing)}.")
        elif not isinstance(body.get("error"), str):
            raise IdentityProviderMisbehaved(f"The token endpoint's error (HTTP {response.status_code}) "
                                             "names no error.")
        return response

    def close(self):
        self._session.close()


class HttpCacheWithoutSharedThrottle(dict):
    """MSAL's http_cache (discovery answers and throttle records), minus one kind of record.

    After a 429 or 5xx from the token endpoint MSAL refuses, for 5 s or for the Retry-After
    (up to an hour), to send the same request again. Its key names the "account": the
    request's refresh token, else its code. But MSAL 1.39 reads the form with dict.get(),
    whose None for a missing refresh_token hides the code, so every user's sign-in (an
    auth-code redemption) shares one key, and one failed redemption refused everybody's
    sign-in on the worker. Records under that shared key are not kept; those per refresh
    token (one user's refreshes) still are.
    """

    SHARED_KEY_END = f"hash={hashlib.sha256(repr(None).encode()).hexdigest()} 429/5xx/Retry-After"

    def __setitem__(self, key, value):
        if isinstance(key, str) and key.endswith(self.SHARED_KEY_END):
            return
        super().__setitem__(key, value)


class EntraAuth(identity.web.Auth):
    """One per process and authority (Azure AD B2C: one per user flow): it shares its HTTP
    pool, MSAL's discovery cache and the L1 token cache across requests."""

    def __init__(self, *, pool_size: int = 16, timeout=(IDP_CONNECT_TIMEOUT, IDP_READ_TIMEOUT),
                 client_capabilities=(), carried_across_sign_in=(), user_flow: str | None = None, **kwargs):
        super().__init__(http_cache=HttpCacheWithoutSharedThrottle(), **kwargs)
        # "cp1": this app handles claims challenges (CAE). MSAL merges it into the claims of
        # every authorize and token request.
        self.client_capabilities = list(client_capabilities)
        # Session keys of the app's own that survive a sign-in (see _replacing_the_session).
        self.carried_across_sign_in = tuple(carried_across_sign_in)
        # Azure AD B2C: the user flow this authority is. Every flow of a tenant has the same
        # issuer, so an id token says which flow issued it in `tfp` (`acr` for custom policies).
        self.user_flow = user_flow
        self._http = pooled_session(pool_size=pool_size, timeout=timeout)
        self.http_client = IdentityProviderClient(self._http)
        self.l1_token_cache = L1TokenCache()
        self._issuer: str | None = None
        self._oidc_config: dict | None = None
        self._oidc_config_retry_at = 0.0

    # --- what identity builds -------------------------------------------------------

    def _build_msal_app(self, client_credential=None, cache=None):
        # identity's own, plus our HTTP client (pooled, with timeouts: MSAL adds none).
        try:
            app = (msal.ConfidentialClientApplication if client_credential else msal.PublicClientApplication)(
                self._client_id,
                client_credential=client_credential,
                oidc_authority=self._oidc_authority,
                authority=self._authority,
                token_cache=cache,
                http_client=self.http_client,
                http_cache=self._http_cache,  # discovery fetched once per process, not per request
                instance_discovery=False,
                client_capabilities=self.client_capabilities or None,
            )
        except ValueError as exc:  # MSAL's word for "discovery answered 4xx or not JSON"
            raise IdentityProviderUnavailable(str(exc)) from exc
        # The issuer that id tokens must carry (from the discovery document MSAL read).
        self._issuer = app.authority._issuer
        return app

    def discovery(self) -> dict:
        """The discovery document at `<authority>/.well-known/openid-configuration` (for
        sign-out, the prompt values a provider supports, front-channel framing; MSAL fetches
        its own, for Entra authorities at `<authority>/v2.0/...`). Fetched once, bounded, holding no
        lock (sign-outs must not queue behind a hanging one); a failure is remembered briefly
        so that a burst of sign-outs during an outage does not wait out one timeout each."""
        if self._oidc_config is not None:
            return self._oidc_config
        if time.monotonic() < self._oidc_config_retry_at:
            raise requests.ConnectionError("OIDC discovery failed moments ago")
        authority = self._oidc_authority or self._authority
        try:
            response = self._http.get(f"{authority}/.well-known/openid-configuration")
            response.raise_for_status()
            config = _json_object(response)
            if config is None:
                raise requests.exceptions.InvalidJSONError("OIDC discovery is not a JSON object")
        except requests.RequestException:
            self._oidc_config_retry_at = time.monotonic() + DISCOVERY_RETRY_AFTER
            raise
        self._oidc_config = config
        return config

    def end_session_endpoint_missing(self) -> bool:
        """True when discovery answered and names no end-session endpoint (not an outage)."""
        return self._oidc_config is not None and not isinstance(self._oidc_config.get(END_SESSION_ENDPOINT), str)

    def _save_user_into_session(self, id_token_claims):
        # Called by identity with the claims of every id token it accepts: at sign-in and
        # whenever a refresh brings a new one. MSAL has checked the nonce; check the rest.
        self.check_id_token_claims(id_token_claims)
        super()._save_user_into_session(id_token_claims)

    # --- id tokens --------------------------------------------------------------------

    def check_id_token_claims(self, claims: dict) -> None:
        # OpenID Connect Core 3.1.3.7: `aud` is one value or a list; with several, `azp` says
        # which party the token is for.
        audiences = claims.get("aud") if isinstance(claims.get("aud"), list) else [claims.get("aud")]
        if self._client_id not in audiences or (len(audiences) > 1 and claims.get("azp") != self._client_id):
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
        flow = claims.get("tfp") or claims.get("acr")
        if self.user_flow and isinstance(flow, str) and flow.lower() != self.user_flow.lower():
            raise IdTokenRejected("The id token comes from another user flow than the one this sign-in started.")

    # --- tokens -----------------------------------------------------------------------

    def log_in(self, *, scopes=None, redirect_uri=None, state=None, prompt=None, next_link=None,
               login_hint: str | None = None, claims_challenge: str | None = None) -> dict:
        """identity's call, plus what identity 0.11 does not pass on to MSAL: `login_hint`
        (no account picker when signing the same user in again) and `claims_challenge`
        (what a Conditional Access or CAE challenge asks for). Built as identity builds it:
        the flow in the session, with identity's own keys for the scopes and next link."""
        if not (login_hint or claims_challenge):
            return super().log_in(scopes=scopes, redirect_uri=redirect_uri, state=state, prompt=prompt,
                                  next_link=next_link)
        scopes = scopes or []
        flow = self._build_msal_app().initiate_auth_code_flow(
            scopes, redirect_uri=redirect_uri, state=state, prompt=prompt,
            login_hint=login_hint, claims_challenge=claims_challenge)
        flow[self._EXPLICITLY_REQUESTED_SCOPES] = scopes  # identity checks what was granted
        flow[NEXT_LINK_KEY] = next_link
        self._session[self._AUTH_FLOW] = flow
        return {"auth_uri": flow["auth_uri"]}

    def get_token_for_user(self, scopes, force_refresh: bool = False, claims_challenge: str | None = None):
        """identity's call, answered from the L1 token cache when it can be; plus a forced
        refresh for an access token the API refused, and a refresh that carries a claims
        challenge (which identity 0.11 cannot send; MSAL then skips its cached token)."""
        serialized = self._session.get(self._TOKEN_CACHE)
        signed_in = self._USER in self._session
        if serialized and signed_in and not (force_refresh or claims_challenge):
            remembered = self.l1_token_cache.get(serialized, scopes)
            if remembered is not None:
                return remembered
        if claims_challenge:
            result = self._get_token_with_claims(scopes, claims_challenge)
        else:
            result = self._get_token_for_user(scopes, force_refresh=force_refresh or None)
        after = self._session.get(self._TOKEN_CACHE)  # a refresh wrote a new one
        if after and signed_in and "access_token" in result:
            self.l1_token_cache.put(after, scopes, result)
        return result

    def _get_token_with_claims(self, scopes, claims_challenge: str) -> dict:
        """identity's _get_token_for_user, with MSAL's claims_challenge passed on."""
        user = self._session.get(self._USER)
        if not user:
            return {"error": "interaction_required", "error_description": "Log in required"}
        cache = self._load_cache()
        app = self._build_msal_app(client_credential=self._client_credential, cache=cache)
        accounts = app.get_accounts(username=user.get("preferred_username"))
        result = app.acquire_token_silent_with_error(
            scopes, account=accounts[0], claims_challenge=claims_challenge) if accounts else None
        self._save_cache(cache)
        if result and result.get("id_token_claims"):
            self._save_user_into_session(result["id_token_claims"])
        return result or {"error": "interaction_required", "error_description": "No refresh token"}

    def log_out(self, post_logout_redirect_uri: str, *, id_token_hint: bool = False) -> str | None:
        """Forget the signed-in user and their tokens here (the session and the L1 token
        cache), and return the identity provider's end-session URL, or None when the
        provider can't be asked or offers none (`end_session_endpoint_missing` tells which).

        identity's own `log_out` concatenates the URL without encoding the return address;
        here it is built with the URL tools, with `client_id` (RP-Initiated Logout 1.0: a
        provider may ignore the return address without it) and, when the id token carries
        one, Entra ID's `logout_hint`, so that Entra signs that account out without asking.
        With `id_token_hint` (other providers), the id token itself, which RP-Initiated Logout
        names as the way to say who is signing out.
        """
        user = self._session.pop(self._USER, None) or {}
        serialized = self._session.pop(self._TOKEN_CACHE, None)
        raw_id_token = _id_token_in(serialized) if id_token_hint and serialized else None
        if serialized:
            self.l1_token_cache.forget(serialized)
        try:
            endpoint = self.discovery().get(END_SESSION_ENDPOINT)
        except requests.RequestException as exc:
            logger.warning("Sign-out: the end-session endpoint could not be looked up: %s", type(exc).__name__)
            return None
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            return None
        query = {"post_logout_redirect_uri": post_logout_redirect_uri, "client_id": self._client_id}
        if isinstance(user.get("login_hint"), str):
            query["logout_hint"] = user["login_hint"]
        if raw_id_token:
            query["id_token_hint"] = raw_id_token
        parts = urlsplit(endpoint)
        return urlunsplit(parts._replace(query="&".join(filter(None, (parts.query, urlencode(query))))))

    def forget_tokens_of(self, session_data: dict) -> None:
        """Drop a session's L1 answers (its session is being deleted elsewhere)."""
        serialized = session_data.get(self._TOKEN_CACHE)
        if isinstance(serialized, str):
            self.l1_token_cache.forget(serialized)

    # --- completing a sign-in ---------------------------------------------------------

    def complete_sign_in(self, answer: dict, *, same_user: bool = False) -> str | None:
        """Finish the sign-in this browser started with the identity provider's `answer`
        (the callback's query parameters); return the path it should land on.

        `same_user`: a user flow of the signed-in user (Azure AD B2C's edit profile): their
        claims are updated in place and their tokens kept; an answer for anybody else is
        refused (SignInFailed) and changes nothing.

        Every other outcome is raised: `SignInError` (the provider said no),
        `SignInFailed` (the callback completes no sign-in here: nothing is lost),
        `IdentityProviderMisbehaved` (a token request was made and its answer was unusable),
        `IdTokenRejected`, or a requests/MSAL error for an outage.
        """
        if not answer:
            # identity reads an empty answer as the device-code flow, which this app never starts.
            raise SignInFailed("The identity provider's answer is missing.")
        if "client_info" in answer and not _decodes_to_a_json_object(answer["client_info"]):
            # MSAL would decode it before anything else and fail with a ValueError (which
            # identity turns into {}) or, for JSON that is not an object, a TypeError.
            logger.warning("Sign-in callback refused: its client_info parameter is damaged")
            raise SignInFailed("The identity provider's answer was damaged on its way here.")
        flow = self._session.get(self._AUTH_FLOW) or {}
        next_link = flow.get(NEXT_LINK_KEY)
        self.http_client.token_requests = 0
        guard = self._keeping_the_user() if same_user else self._replacing_the_session(answer, flow)
        try:
            with guard as outcome:
                result = self.complete_log_in(answer)
        except RuntimeError as exc:
            # MSAL's word for "the id token's nonce is not the one we sent" (a bare RuntimeError
            # naming the nonce; IdTokenError for the other id-token checks). Anything else that
            # is a RuntimeError is a bug, and stays one.
            if not (isinstance(exc, IdTokenError) or "nonce" in str(exc)):
                raise
            self.forget_pending_sign_in()
            logger.warning("Sign-in refused: the id token does not match this sign-in (%s)", type(exc).__name__)
            raise SignInFailed("The identity provider's answer did not match this sign-in.") from None
        if "error" in result:
            self.forget_pending_sign_in()
            raise SignInError(result, next_link)
        if result and outcome.answered_for_someone_else:
            logger.warning("User flow refused: it answered for another user than the one signed in")
            raise SignInFailed("That answer is for another account than the one signed in here.")
        if result:
            return result.get("next_link")
        # identity's {}: no sign-in in progress, a state mismatch, a replay, or a parameter
        # MSAL could not decode (client_info) - or a token answer it could not use.
        if self.http_client.token_requests:
            raise IdentityProviderMisbehaved("The token endpoint's answer could not be used.")
        logger.warning("Sign-in callback refused: it answers no sign-in in progress here, or a parameter is damaged")
        if self._USER in self._session:  # e.g. Back after signing in, or a second tab's sign-in
            raise SignInFailed("You are already signed in, so there is nothing more to do here.",
                               already_signed_in=True)
        raise SignInFailed("This sign-in link was already used, has expired, or was started in another browser.")

    @contextlib.contextmanager
    def _replacing_the_session(self, answer: dict, flow: dict):
        """Complete a sign-in inside this block so that the new user starts with a clean
        session: whoever was signed in before in this browser leaves no tokens behind.

        Only a callback that carries a code for the sign-in this browser started clears
        anything, and if the sign-in then does not happen (an error, an outage, a refused
        token) the previous session is put back: a failed or forged callback loses nothing.
        The pending sign-in is kept too unless its code was sent to the token endpoint.
        """
        if not (flow and answer.get("code") and answer.get("state") == flow.get("state")):
            yield _SignInOutcome()
            return
        previous = dict(self._session)
        self._session.clear()
        self._session[self._AUTH_FLOW] = flow
        try:
            yield _SignInOutcome()
        finally:
            if self._USER not in self._session:
                self._session.clear()
                self._session.update(previous)
                if self.http_client.token_requests:
                    self._session.pop(self._AUTH_FLOW, None)  # the code was spent
            else:
                self._session.update({k: previous[k] for k in self.carried_across_sign_in if k in previous})

    @contextlib.contextmanager
    def _keeping_the_user(self):
        """Complete a user flow of the signed-in user inside this block: their new claims
        replace the old only if they are the same person (`oid`, else `sub`), and the
        tokens they had are kept (the flow's own are not what the app asked for). Yields a
        _SignInOutcome that says afterwards whether the flow answered for somebody else."""
        before_user, before_cache = self._session.get(self._USER), self._session.get(self._TOKEN_CACHE)
        if before_user is None:
            raise SignInFailed("Nobody is signed in here, so there is no profile to edit.")
        outcome = _SignInOutcome()
        try:
            yield outcome
        finally:
            after = self._session.get(self._USER)
            if after is not before_user and not _same_person(before_user, after or {}):
                self._session[self._USER] = before_user
                outcome.answered_for_someone_else = True
            if before_cache is not None:
                self._session[self._TOKEN_CACHE] = before_cache

    def pending_state(self) -> str | None:
        """The OAuth state of the sign-in in progress, if any."""
        return (self._session.get(self._AUTH_FLOW) or {}).get("state")

    def pending_next_link(self) -> str | None:
        """Where the sign-in in progress should land (identity keeps it in the flow)."""
        return (self._session.get(self._AUTH_FLOW) or {}).get(NEXT_LINK_KEY)

    def forget_pending_sign_in(self) -> None:
        """Drop the sign-in flow so that its state and code can never be used again."""
        self._session.pop(self._AUTH_FLOW, None)
