"""Azure AD B2C mode: the tenant's user flows, and tokens in B2C's shape.

In B2C every user flow is an authority of its own,
``https://<host>/<tenant>.onmicrosoft.com/<flow>``, with its own discovery document, authorize,
token, keys and end-session endpoints. Its tokens differ from Entra ID's v2.0 tokens:

* id tokens are version 1.0: ``sub`` is the user's object id (no pairwise subject), the
  addresses are in ``emails`` (a list), ``tfp`` names the user flow, and there is no
  ``preferred_username``, ``tid``, ``sid`` or ``login_hint``;
* one issuer for every flow of the tenant, ``https://<host>/<tenant id>/v2.0/`` (trailing
  slash included), so ``iss`` alone does not tell the flows apart: ``tfp`` does;
* an access token only when a resource scope is asked for: a request for nothing but
  ``openid`` / ``offline_access`` (what MSAL sends for ``scopes=[]``) gets an id token and a
  refresh token, and no ``access_token``;
* ``client_info``'s ``uid`` is ``<object id>-<flow, lower case>``;
* a code or refresh token is honoured only by the token endpoint of the flow that issued it
  (``AADB2C90088``).

One liberty: B2C cannot issue Microsoft Graph tokens, but here the access tokens are the
stand-in Graph's (audience and ``scp`` as before), so that the app's downstream call works
the same against both modes.
"""

import time
import uuid
from datetime import UTC, datetime

from flask import jsonify

from .state import REFRESH_TOKEN_TTL
from .tokens import bare_scope, client_info, resource_scopes

# Fixed demo values, like the Entra tenant's: a checked-in .env keeps working across runs.
TENANT_NAME = "contosob2c"
TENANT_ID = "4f2b8c1d-6e3a-4b5f-9c7d-2a1e8b3f6d05"

# MSAL recognises a B2C authority on a host other than *.b2clogin.com (here 127.0.0.1:<port>)
# only by a flow name that starts with "B2C_1", so every name here does.
SIGN_UP_SIGN_IN, EDIT_PROFILE, RESET_PASSWORD = "signup_signin", "edit_profile", "reset_password"
USER_FLOWS = {
    SIGN_UP_SIGN_IN: "B2C_1_signupsignin1",
    EDIT_PROFILE: "B2C_1_profileediting1",
    RESET_PASSWORD: "B2C_1_passwordreset1",
}
# The settings an app reads each flow's name from.
FLOW_SETTINGS = {
    SIGN_UP_SIGN_IN: "B2C_SIGNUP_SIGNIN_USER_FLOW",
    EDIT_PROFILE: "B2C_EDIT_PROFILE_USER_FLOW",
    RESET_PASSWORD: "B2C_RESET_PASSWORD_USER_FLOW",
}

# How B2C ends a flow the person left: "Forgot your password?" on the sign-in page, and
# Cancel on a self-asserted page (edit profile, password reset).
FORGOTTEN = "AADB2C90118: The user has forgotten their password."
CANCELLED = "AADB2C90091: The user has cancelled entering self-asserted information."


def requested(environ):
    """LOCAL_ENTRA_B2C=1 (or true/yes/on): serve Azure AD B2C. For launchers that pass no
    flags: `LOCAL_ENTRA_B2C=1 make run`, and python -m local_entra's default for --b2c."""
    return (environ.get("LOCAL_ENTRA_B2C") or "").strip().lower() in ("1", "true", "yes", "on")


def b2c_error(error, description, status=400):
    """An error response as B2C's token endpoint sends it: ``error`` and a description that
    ends with the correlation id and timestamp, lines ending in CRLF. Nothing else."""
    timestamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    response = jsonify({
        "error": error,
        "error_description": f"{description}\r\nCorrelation ID: {uuid.uuid4()}\r\nTimestamp: {timestamp}\r\n",
    })
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def wrong_flow(endpoint_flow, issuing_flow):
    """B2C's answer to a code or refresh token presented at another flow's token endpoint."""
    return b2c_error("invalid_grant", "AADB2C90088: The provided grant has not been issued for this endpoint."
                                      f" Actual Value : {endpoint_flow} and Expected Value : {issuing_flow}")


def openid_configuration(standin, flow):
    """One user flow's discovery document, shaped like B2C's: its endpoints name the flow in
    lower case (as B2C writes them), and the issuer is the tenant's."""
    path = f"{standin.tenant_segment}/{flow.lower()}"
    back, front = f"{standin.idp_url}/{path}", f"{standin.front_url}/{path}"
    return {
        "issuer": standin.issuer,
        "authorization_endpoint": f"{front}/oauth2/v2.0/authorize",
        "token_endpoint": f"{back}/oauth2/v2.0/token",
        "end_session_endpoint": f"{front}/oauth2/v2.0/logout",
        "jwks_uri": f"{back}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "form_post"],
        "response_types_supported": ["code"],
        "scopes_supported": ["openid"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "claims_supported": ["name", "emails", "oid", "sub", "tfp", "iss", "iat", "exp", "aud", "nbf",
                             "nonce", "auth_time", "ver"],
    }


def token_response(standin, user, scopes, nonce, lineage):
    """Tokens for ``user`` from the user flow ``lineage["flow"]``, in B2C's shape.
    ``lineage`` is what a new refresh token inherits."""
    flow = lineage["flow"]
    now = int(time.time())
    api_scopes = resource_scopes(scopes)
    id_claims = {
        "iss": standin.issuer,
        "exp": now + standin.id_token_lifetime,
        "nbf": now,
        "aud": standin.client_id,
        "oid": user["id"],
        "sub": user["id"],
        "name": user["displayName"],
        "emails": [user["mail"]],
        "tfp": flow,
        "ver": "1.0",
        "iat": now,
        "auth_time": lineage["auth_time"],
    }
    if nonce:
        id_claims["nonce"] = nonce
    body = {
        "id_token": standin.key.sign(id_claims),
        "token_type": "Bearer",
        "not_before": now,
        "id_token_expires_in": standin.id_token_lifetime,
        # Echo the scopes as requested (minus offline_access), as the Entra mode does: MSAL
        # caches tokens under this string and looks them up with the requested scopes.
        "scope": " ".join(s for s in scopes if s.lower() != "offline_access") or "openid",
        "client_info": client_info(f"{user['id']}-{flow.lower()}", standin.tenant_id),
    }
    if api_scopes:
        access_claims = {
            "iss": standin.issuer,
            "exp": now + standin.access_token_lifetime,
            "nbf": now,
            "aud": standin.graph_audience,
            "oid": user["id"],
            "sub": user["id"],
            "name": user["displayName"],
            "emails": [user["mail"]],
            "tfp": flow,
            "scp": " ".join(bare_scope(s) for s in api_scopes),
            "azp": standin.client_id,
            "ver": "1.0",
            "iat": now,
        }
        body.update({
            "access_token": standin.key.sign(access_claims),
            "expires_in": standin.access_token_lifetime,
            "expires_on": now + standin.access_token_lifetime,
        })
    if any(s.lower() == "offline_access" for s in scopes):
        body["refresh_token"] = standin.store.add_refresh_token(
            {"user_id": user["id"], "client_id": standin.client_id, "scopes": scopes, **lineage})
        body["refresh_token_expires_in"] = REFRESH_TOKEN_TTL  # B2C announces it; this is the stand-in's
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response

