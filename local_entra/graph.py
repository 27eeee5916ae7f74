"""The Microsoft Graph stand-in: ``GET /v1.0/me`` for a bearer token the stand-in issued."""

import json
import time
import uuid

import jwt
from flask import Flask, Response, request

from . import claims as claims_request
from .errors import graph_error_body
from .tokens import GRAPH_AUDIENCES

# What Graph sends with JSON: clients that check the media type see the real one.
GRAPH_JSON = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
ME_FIELDS = (
    "businessPhones", "displayName", "givenName", "jobTitle", "mail", "mobilePhone",
    "officeLocation", "preferredLanguage", "surname", "userPrincipalName", "id",
)
# Graph's own status-code names, used for injected faults without a body.
_FAULT_CODES = {
    400: "BadRequest",
    401: "InvalidAuthenticationToken",
    403: "Authorization_RequestDenied",
    404: "Request_ResourceNotFound",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "serviceNotAvailable",
    504: "GatewayTimeout",
}
CAE_CHALLENGE_MESSAGE = (
    "Continuous access evaluation resulted in challenge with result: InteractionRequired"
    " and code: LocationConditionEvaluationSatisfied"
)


def create_graph_app(standin):
    app = Flask("local_entra.graph", static_folder=None)

    def respond(status, body, headers=None):
        client_request_id = request.headers.get("client-request-id") or str(uuid.uuid4())
        response = Response(
            json.dumps(body) if not isinstance(body, str) else body,
            status=status,
            content_type=GRAPH_JSON if not isinstance(body, str) else "text/plain; charset=utf-8",
        )
        response.headers["request-id"] = str(uuid.uuid4())
        response.headers["client-request-id"] = client_request_id
        response.headers["Cache-Control"] = "no-cache"
        for name, value in (headers or {}).items():
            response.headers[name] = str(value)
        return response

    def error(status, code, message, extra_headers=None):
        body = graph_error_body(code, message, request.headers.get("client-request-id"))
        return respond(status, body, extra_headers)

    def unauthorized(message):
        # Graph names the authority to go to in the challenge.
        challenge = (
            f'Bearer realm="", authorization_uri="{standin.authorization_endpoint}",'
            f' client_id="{GRAPH_AUDIENCES[0]}", error="invalid_token",'
            f' error_description="{message}"'
        )
        return error(401, "InvalidAuthenticationToken", message, {"WWW-Authenticate": challenge})

    def cae_challenge(revoked_at):
        # Graph's own spelling, order included; it names the global authority and
        # itself, whatever authority the app uses.
        challenge = (
            'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize",'
            f' client_id="{GRAPH_AUDIENCES[0]}", error_description="{CAE_CHALLENGE_MESSAGE}",'
            f' error="insufficient_claims", claims="{claims_request.cae_challenge_header_value(revoked_at)}"'
        )
        return error(401, "InvalidAuthenticationToken", CAE_CHALLENGE_MESSAGE, {"WWW-Authenticate": challenge})

    @app.before_request
    def count_and_inject():
        standin.store.count("graph")
        fault = standin.store.take_graph_fault()
        if fault is None:
            return None
        if fault.get("delay"):
            time.sleep(fault["delay"])
        status = fault.get("status")
        if status is None:  # only slow: answer normally after the delay
            return None
        body = fault.get("body")
        if body is None:
            body = graph_error_body(
                _FAULT_CODES.get(status, "UnknownError"),
                f"Injected fault: HTTP {status} from the local Graph stand-in.",
                request.headers.get("client-request-id"),
            )
        return respond(status, body, fault.get("headers"))

    @app.get("/v1.0/me")
    def me():
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return unauthorized("Access token is empty.")
        try:
            claims = standin.key.verify(token.strip(), GRAPH_AUDIENCES, standin.issuer)
        except jwt.ExpiredSignatureError:
            return unauthorized("Lifetime validation failed, the token is expired.")
        except jwt.InvalidAudienceError:
            return unauthorized("Access token validation failure. Invalid audience.")
        except jwt.InvalidSignatureError:
            return unauthorized("Access token validation failure. Invalid signature.")
        except jwt.InvalidTokenError:
            return unauthorized("IDX14100: JWT is not well formed or failed validation.")
        revoked_at = standin.store.cae_revoked_at
        if revoked_at is not None and _needs_cae_challenge(claims, revoked_at):
            return cae_challenge(revoked_at)
        scopes = {s.lower().removeprefix("https://graph.microsoft.com/") for s in claims.get("scp", "").split()}
        if not scopes & {"user.read", "user.readwrite", "user.read.all", "user.readwrite.all", "directory.read.all"}:
            return error(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
        user = standin.find_user(claims.get("oid"))
        if user is None:
            return error(404, "Request_ResourceNotFound",
                         f"Resource '{claims.get('oid')}' does not exist or one of its queried"
                         " reference-property objects are not present.")
        body = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users/$entity"}
        body.update({field: user[field] for field in ME_FIELDS})
        return respond(200, body)

    @app.errorhandler(404)
    def not_found(_exc):
        return error(400, "BadRequest", f"Resource not found for the segment '{request.path.strip('/')}'.")

    @app.errorhandler(405)
    def not_allowed(_exc):
        return error(405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target.")

    return app


def _needs_cae_challenge(claims, revoked_at):
    """After a CAE event Graph re-checks the tokens of clients that can take a challenge
    (cp1) and were issued before it or not in answer to it; other tokens live to expiry."""
    if claims_request.CLIENT_CAPABILITY_CAE not in claims.get("xms_cc", ()):
        return False
    return claims["iat"] < revoked_at or claims.get(claims_request.CAE_ANSWERED_CLAIM, -1) < revoked_at
