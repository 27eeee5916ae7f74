"""The https back channel: OIDC discovery, the token endpoint and the signing keys.

Entra ID serves them per tenant (``/<tenant>/...``); Azure AD B2C per user flow
(``/<tenant>.onmicrosoft.com/<flow>/...``), with tokens shaped by ``b2c``.
"""

import base64
import hmac
import secrets
import time
import uuid
from urllib.parse import unquote

from flask import Flask, jsonify, request

from . import b2c, claims
from .assertions import JWT_BEARER, AssertionRefused
from .errors import entra_error
from .sso import login_hint
from .tokens import GRAPH_APP_ID, bare_scope, client_info, pkce_s256, resource_scopes

# The endpoints whose hits are counted, by Flask endpoint name.
_COUNTED = {"discovery": "discovery", "discovery_v1": "discovery", "token": "token", "keys": "keys",
            "flow_discovery": "discovery", "flow_discovery_v1": "discovery", "flow_token": "token",
            "flow_keys": "keys"}


def create_idp_app(standin):
    app = Flask("local_entra.idp", static_folder=None)

    @app.before_request
    def count_and_maybe_hang():
        counter = _COUNTED.get(request.endpoint)
        if counter:
            standin.store.count(counter)
        # hang_idp(True): the connection was accepted and the request read,
        # but the answer never comes (until released): the failure mode that
        # needs client-side timeouts.
        standin.wait_while_idp_hangs()

    if standin.b2c:
        _add_user_flow_routes(app, standin)
    else:
        _add_tenant_routes(app, standin)
    return app


def _invalid_tenant(tenant):
    return entra_error(
        "invalid_tenant",
        f"AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the"
        " correct tenant ID and are signing into the correct cloud.",
    )


def _add_tenant_routes(app, standin):
    """Entra ID: one discovery document, key set and token endpoint for the tenant."""

    @app.route("/<tenant>/v2.0/.well-known/openid-configuration")
    def discovery(tenant):
        if not standin.is_tenant(tenant):
            return _invalid_tenant(tenant)
        return jsonify(standin.openid_configuration())

    # identity's log_out() reads {authority}/.well-known/openid-configuration.
    @app.route("/<tenant>/.well-known/openid-configuration")
    def discovery_v1(tenant):
        return discovery(tenant)

    @app.route("/<tenant>/discovery/v2.0/keys")
    def keys(tenant):
        if not standin.is_tenant(tenant):
            return _invalid_tenant(tenant)
        return jsonify(standin.key.jwks())

    @app.post("/<tenant>/oauth2/v2.0/token")
    def token(tenant):
        return _token_request(standin, tenant)


def _add_user_flow_routes(app, standin):
    """Azure AD B2C: the same endpoints once per user flow. MSAL reads a B2C authority's
    discovery at <authority>/v2.0/.well-known/openid-configuration (instance_discovery=False)."""

    def refused(tenant, flow):
        if not standin.is_tenant(tenant):
            return b2c.b2c_error("invalid_tenant", f"The tenant '{tenant}' was not found.", 404)
        if standin.user_flow(flow) is None:
            return _unknown_flow(standin, flow)
        return None

    @app.route("/<tenant>/<flow>/v2.0/.well-known/openid-configuration")
    def flow_discovery(tenant, flow):
        return refused(tenant, flow) or jsonify(standin.openid_configuration(standin.user_flow(flow)))

    # The app's sign-out looks for the end-session endpoint at {authority}/.well-known/openid-configuration.
    @app.route("/<tenant>/<flow>/.well-known/openid-configuration")
    def flow_discovery_v1(tenant, flow):
        return flow_discovery(tenant, flow)

    @app.route("/<tenant>/<flow>/discovery/v2.0/keys")
    def flow_keys(tenant, flow):
        return refused(tenant, flow) or jsonify(standin.key.jwks())

    @app.post("/<tenant>/<flow>/oauth2/v2.0/token")
    def flow_token(tenant, flow):
        return _token_request(standin, tenant, flow)


def _unknown_flow(standin, flow):
    return b2c.b2c_error("invalid_request", f"The user flow '{flow}' was not found in tenant"
                                            f" '{standin.b2c_tenant_name}'.", 404)


def _token_request(standin, tenant, flow=None):
    """A token request at the tenant's token endpoint, or (B2C) at a user flow's."""
    standin.record_request("token", grant_type=request.form.get("grant_type"),
                           claims=request.form.get("claims"),
                           client_assertion_type=request.form.get("client_assertion_type"),
                           client_secret_sent="client_secret" in request.form
                           or request.headers.get("Authorization", "").lower().startswith("basic "))
    fault = standin.store.take_token_fault()
    if fault is not None:
        return entra_error(fault["error"], fault["description"], fault["status"])
    if not standin.is_tenant(tenant):
        return _invalid_tenant(tenant)
    if standin.b2c:
        canonical = standin.user_flow(flow)
        if canonical is None:
            return _unknown_flow(standin, flow)
        flow = canonical
    problem = _authenticate_client(standin, standin.token_endpoint_of(flow))
    if problem is not None:
        return problem
    grant_type = request.form.get("grant_type")
    if grant_type == "authorization_code":
        standin.store.count("token_auth_code")
        return _redeem_code(standin, flow)
    if grant_type == "refresh_token":
        standin.store.count("token_refresh")
        return _refresh(standin, flow)
    return entra_error(
        "unsupported_grant_type",
        f"AADSTS70003: The app requested an unsupported grant type '{grant_type}'.",
    )


def _authenticate_client(standin, token_endpoint):
    """Check client_secret_post, client_secret_basic or private_key_jwt (a client assertion
    signed with a registered certificate); return an error response or None."""
    client_id = request.form.get("client_id")
    secret = request.form.get("client_secret")
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(auth[6:], validate=True).decode("utf-8")
            basic_id, _, basic_secret = decoded.partition(":")
        except (ValueError, UnicodeDecodeError):
            return entra_error("invalid_client", "AADSTS7000216: Malformed Basic credentials.", 401)
        # RFC 6749 2.3.1: both halves are form-urlencoded before joining.
        client_id, secret = unquote(basic_id.replace("+", " ")), unquote(basic_secret.replace("+", " "))
    if not client_id:
        return entra_error(
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
        )
    if client_id != standin.client_id:
        return entra_error(
            "unauthorized_client",
            f"AADSTS700016: Application with identifier '{client_id}' was not found in the"
            f" directory '{standin.tenant_id}'.",
        )
    assertion_type, assertion = request.form.get("client_assertion_type"), request.form.get("client_assertion")
    if assertion_type or assertion:
        if secret:  # RFC 6749 2.3: one authentication method per request
            return entra_error("invalid_request", "Send one client credential: 'client_assertion' or"
                                                  " 'client_secret', not both.")
        return _check_client_assertion(standin, client_id, assertion_type, assertion, token_endpoint)
    if not secret:
        return entra_error(
            "invalid_client",
            "AADSTS7000218: The request body must contain the following parameter:"
            " 'client_assertion' or 'client_secret'.",
            401,
        )
    # Constant-time compare: cheap, and it is what a real server must do.
    if not hmac.compare_digest(secret.encode(), standin.client_secret.encode()):
        return entra_error(
            "invalid_client",
            f"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in"
            f" the request is the client secret value, not the client secret ID, for a secret"
            f" added to app '{client_id}'.",
            401,
        )
    return None


def _check_client_assertion(standin, client_id, assertion_type, assertion, token_endpoint):
    if assertion_type != JWT_BEARER:
        return entra_error("invalid_request", "AADSTS90011: Unexpected client assertion type.")
    if not assertion:
        return entra_error(
            "invalid_client",
            "AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or"
            " 'client_secret'.",
            401,
        )
    try:
        standin.certificates.verify(assertion, client_id=client_id, audience=token_endpoint)
    except AssertionRefused as refused:
        return entra_error(refused.error, refused.description, refused.status)
    return None


def _invalid_grant(description):
    return entra_error("invalid_grant", description)


def _redeem_code(standin, flow=None):
    """``flow``: B2C's user flow whose token endpoint was called (None at Entra's)."""
    form = request.form
    grant, problem = standin.store.redeem_code(form.get("code"))
    if problem == "unknown":
        return _invalid_grant(
            "AADSTS9002313: Invalid request. Request is malformed or invalid."
            " The provided value for the 'code' parameter is not valid."
        )
    if problem == "used":
        return _invalid_grant("AADSTS54005: OAuth2 Authorization code was already redeemed,"
                              " please retry with a new valid code or use an existing refresh token.")
    if problem == "expired":
        return _invalid_grant("AADSTS70008: The provided authorization code or refresh token has"
                              " expired due to inactivity. Send a new interactive authorization request"
                              " for this user and resource.")
    if grant["client_id"] != form.get("client_id", standin.client_id):
        return _invalid_grant("AADSTS70000: The provided value for the 'code' parameter is not"
                              " valid. The code was issued to a different client.")
    if grant["redirect_uri"] != form.get("redirect_uri"):
        return _invalid_grant("AADSTS500112: The reply address does not match the reply address"
                              " provided when requesting the authorization code.")
    if standin.b2c and grant.get("flow") != flow:
        return b2c.wrong_flow(flow, grant.get("flow"))
    verifier = form.get("code_verifier")
    if not verifier:
        return _invalid_grant("AADSTS50148: The code_verifier is required for this authorization"
                              " code, which was requested with a code_challenge.")
    if not hmac.compare_digest(pkce_s256(verifier), grant["code_challenge"]):
        return _invalid_grant("AADSTS501481: The Code_Verifier does not match the code_challenge"
                              " supplied in the authorization request.")
    # MSAL sends the scopes again on redemption; honour them when present, as
    # Entra v2 does, so every scope the client asked for shows as granted.
    scopes = form.get("scope", "").split() or grant["scopes"]
    # The sign-in's own claims count with the redemption's: MSAL sends a claims
    # challenge on both, and a policy (step-up) is satisfied by the sign-in.
    sent = (grant.get("claims"), form.get("claims"))
    lineage = {
        "sid": grant["sid"],
        "stepped_up": claims.STEP_UP_POLICY_ID in claims.policy_ids(grant.get("claims")),
        "cae_nbf": _answered_nbf(None, sent),
    }
    if standin.b2c:  # B2C's tokens name their flow, and say when the user signed in
        lineage.update(flow=flow, auth_time=int(time.time()))
    return _token_response(standin, grant["user_id"], scopes, grant.get("nonce"), lineage, sent)


def _refresh(standin, flow=None):
    refused = _step_up_refusal(standin, request.form.get("refresh_token"))
    if refused is not None:
        return refused
    if standin.b2c:
        # Refused before the token is used up: B2C keeps it valid at its own flow's endpoint.
        issued = standin.store.peek_refresh_token(request.form.get("refresh_token"))
        if issued is not None and issued.get("flow") != flow:
            return b2c.wrong_flow(flow, issued.get("flow"))
    grant, problem = standin.store.use_refresh_token(request.form.get("refresh_token"))
    if problem == "unknown":
        return _invalid_grant("AADSTS9002313: Invalid request. Request is malformed or invalid."
                              " The provided refresh token is not valid.")
    if problem == "revoked":
        return _invalid_grant("AADSTS70000: The provided grant has been revoked. The user"
                              " might have changed or reset their password, or an administrator"
                              " revoked their sessions. Sign in again.")
    if problem == "expired":
        return _invalid_grant("AADSTS700082: The refresh token has expired due to inactivity.")
    if grant["client_id"] != request.form.get("client_id", standin.client_id):
        return _invalid_grant("AADSTS700005: Provided Authorization Code is intended to use"
                              " against other client.")
    scopes = request.form.get("scope", "").split() or grant["scopes"]
    sent = (request.form.get("claims"),)
    # A refresh token carries its sign-in's session and what that sign-in satisfied.
    lineage = {
        "sid": grant["sid"],
        "stepped_up": grant["stepped_up"],
        "cae_nbf": _answered_nbf(grant["cae_nbf"], sent),
    }
    if standin.b2c:
        lineage.update(flow=grant["flow"], auth_time=grant["auth_time"])
    # A refreshed id token carries no nonce: no authorize request preceded it.
    return _token_response(standin, grant["user_id"], scopes, None, lineage, sent)


def _answered_nbf(inherited, sent):
    """The latest CAE challenge answered so far: by the grant's lineage or in this request."""
    answered = [value for value in (inherited, *map(claims.answered_nbf, sent)) if value is not None]
    return max(answered, default=None)


def _step_up_refusal(standin, refresh_token):
    """While MFA step-up is required, a refresh token from a sign-in without it is refused.

    The token is only looked at, not used up: Entra keeps it valid, and the
    client may use it once the user has signed in again with the policy's claims.
    """
    error = standin.store.step_up_error
    grant = standin.store.peek_refresh_token(refresh_token) if error else None
    if grant is None or grant["stepped_up"]:
        return None
    return entra_error(
        error,
        "AADSTS50076: Due to a configuration change made by your administrator, or because you moved"
        f" to a new location, you must use multi-factor authentication to access '{GRAPH_APP_ID}'.",
        suberror="basic_action",
        claims=claims.step_up_challenge(),
        error_uri="https://login.microsoftonline.com/error?code=50076",
    )


def _token_response(standin, user_id, scopes, nonce, lineage, sent):
    """Tokens for ``user_id``; ``lineage`` is what the new refresh token inherits
    (sid, stepped_up, cae_nbf); ``sent`` the raw claims of the sign-in and this request."""
    user = standin.find_user(user_id)
    if user is None:  # cannot happen unless USERS was edited while running
        return _invalid_grant("AADSTS50020: User account does not exist in tenant.")
    if standin.b2c:
        return b2c.token_response(standin, user, scopes, nonce, lineage)
    # Tokens without resource scopes default to Graph's User.Read, as Entra does.
    scp = " ".join(bare_scope(s) for s in resource_scopes(scopes)) or "User.Read"
    now = int(time.time())
    access_claims = {
        "aud": standin.graph_audience,
        "iss": standin.issuer,
        "iat": now,
        "nbf": now,
        "exp": now + standin.access_token_lifetime,
        "aio": secrets.token_urlsafe(16),
        "app_displayname": "Local stand-in client",
        "appid": standin.client_id,
        "azp": standin.client_id,
        "idtyp": "user",
        "name": user["displayName"],
        "given_name": user["givenName"],
        "family_name": user["surname"],
        "oid": user["id"],
        "preferred_username": user["userPrincipalName"],
        "scp": scp,
        "sub": standin.pairwise_sub(user, standin.graph_audience),
        "tid": standin.tenant_id,
        "upn": user["userPrincipalName"],
        "unique_name": user["userPrincipalName"],
        "uti": secrets.token_urlsafe(16),
        "ver": "2.0",
    }
    if any(map(claims.declares_cae, sent)):
        access_claims["xms_cc"] = [claims.CLIENT_CAPABILITY_CAE]
    if lineage["cae_nbf"] is not None:
        access_claims[claims.CAE_ANSWERED_CLAIM] = lineage["cae_nbf"]
    hint = login_hint(user["id"], standin.tenant_id)
    id_claims = {
        "aud": standin.client_id,
        "iss": standin.issuer,
        "iat": now,
        "nbf": now,
        "exp": now + standin.id_token_lifetime,
        "aio": secrets.token_urlsafe(16),
        "name": user["displayName"],
        "oid": user["id"],
        "preferred_username": user["userPrincipalName"],
        "login_hint": hint,
        "rh": secrets.token_urlsafe(16),
        "sid": lineage["sid"],
        "sub": standin.pairwise_sub(user, standin.client_id),
        "tid": standin.tenant_id,
        "uti": secrets.token_urlsafe(16),
        "ver": "2.0",
    }
    if nonce:
        id_claims["nonce"] = nonce
    refresh_token = standin.store.add_refresh_token(
        {"user_id": user["id"], "client_id": standin.client_id, "scopes": scopes, **lineage}
    )
    response = jsonify({
        "token_type": "Bearer",
        # Echo the scopes as requested (minus offline_access, which Entra
        # never lists): MSAL caches the token under this string and looks it up
        # with the requested scopes, so a different spelling would miss.
        "scope": " ".join(s for s in scopes if s.lower() != "offline_access") or scp,
        "expires_in": standin.access_token_lifetime,
        "ext_expires_in": standin.access_token_lifetime,
        "access_token": standin.key.sign(access_claims),
        "refresh_token": refresh_token,
        "id_token": standin.key.sign(id_claims),
        "client_info": client_info(user["id"], standin.tenant_id),
    })
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    response.headers["client-request-id"] = request.headers.get("client-request-id", str(uuid.uuid4()))
    return response

