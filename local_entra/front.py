"""The browser-facing pages: account picker (authorize) and /_test controls.

In Azure AD B2C mode the authorize endpoints are the user flows' pages (``b2c_pages``).

Plain http on loopback, so a browser shows no certificate warning. Every
page is server-rendered with no script, and styled by our own stylesheet.
Signing out (end-session, front-channel logout) lives in ``signout``.
"""

import uuid

from flask import Flask, abort, jsonify, render_template, request

from . import authorize, sso
from .b2c_pages import add_user_flow_pages
from .signout import add_sign_out_routes
from .web import CONTENT_SECURITY_POLICY

# The error page's heading and the status a browser gets when Entra would
# refuse to redirect (unknown app, unregistered reply URL).
_ERROR_TITLE = "Sorry, but we're having trouble signing you in."

EXPIRED_REQUEST = ("AADSTS90015: This sign-in request has expired or was already used. Go back to the"
                   " application and sign in again.")
UNKNOWN_USER = "AADSTS50034: The user account does not exist in this directory."

# Prompts that ask for the account question even when a hint names the user.
_ASK_ANYWAY_PROMPTS = {"login", "select_account"}


def create_front_app(standin):
    app = Flask("local_entra.front")  # serves templates/ and static/ of this package
    app.jinja_env.filters["initials"] = _initials

    @app.context_processor
    def served_as():
        # Every page names what it stands in for, so nobody mistakes it for the real thing.
        return {"product": "Azure AD B2C" if standin.b2c else "Microsoft Entra ID",
                "brand": "Azure AD B2C" if standin.b2c else "Entra ID"}

    def error_page(description, status=400):
        return render_template(
            "error.html",
            title=_ERROR_TITLE,
            description=description,
            correlation_id=str(uuid.uuid4()),
        ), status

    if standin.b2c:
        add_user_flow_pages(app, standin, error_page)
    else:
        _add_authorize_routes(app, standin, error_page)

    add_sign_out_routes(app, standin, error_page)

    @app.after_request
    def security_headers(response):
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.endpoint != "static":
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    _add_test_controls(app, standin)
    return app


def _add_authorize_routes(app, standin, error_page):
    """Entra ID's authorize endpoint: the account picker."""

    @app.get("/<tenant>/oauth2/v2.0/authorize")
    def authorize_request(tenant):
        standin.store.count("authorize")
        args = request.args
        standin.record_request("authorize", client_id=args.get("client_id"), prompt=args.get("prompt"),
                               login_hint=args.get("login_hint"), claims=args.get("claims"))
        if not standin.is_tenant(tenant):
            return error_page(f"AADSTS90002: Tenant '{tenant}' not found.")
        validated, refused = authorize.validate(standin, args, error_page)
        if refused is not None:
            return refused
        # A hint that names a user signs them in with no account question, as Entra
        # does for a hinted user it knows (there is no password to ask for here).
        hinted = sso.user_for_hint(args.get("login_hint"), standin.tenant_id)
        if hinted is not None and not set(args.get("prompt", "").split()) & _ASK_ANYWAY_PROMPTS:
            return authorize.complete_sign_in(standin, validated, hinted)
        return authorize.picker_page(standin, validated, "pick", tenant=tenant)

    @app.post("/<tenant>/oauth2/v2.0/authorize")
    def pick(tenant):
        if not standin.is_tenant(tenant):
            return error_page(f"AADSTS90002: Tenant '{tenant}' not found.")
        pending = standin.store.pop_pending(request.form.get("request_id"))
        if pending is None:
            return error_page(EXPIRED_REQUEST)
        if "cancel" in request.form:
            return authorize.back_to_client(pending["redirect_uri"], pending["response_mode"], {
                "error": "access_denied",
                "error_subcode": "cancel",
                "error_description": "AADSTS65004: User declined to consent to access the app.",
                "state": pending["state"],
            })
        user = standin.find_user(request.form.get("user_id"))
        if user is None:
            return error_page(UNKNOWN_USER)
        return authorize.complete_sign_in(standin, pending, user)


def _initials(user):
    return (user["givenName"][:1] + user["surname"][:1]).upper()


def _add_test_controls(app, standin):
    """HTTP twins of the StandIn testing methods, for a separate process (the benchmark).

    They exist only when testing=True. Requiring a JSON body on POSTs means a
    cross-site form cannot drive them (a JSON POST needs a CORS preflight
    that this server never approves).
    """

    def body():
        if not standin.testing:
            abort(404)
        if request.method == "POST" and request.content_length and not request.is_json:
            abort(415)
        return request.get_json(silent=True) or {}

    @app.post("/_test/fail_next_token")
    def test_fail_next_token():
        data = body()
        standin.fail_next_token(**_pick(data, "error", "description", "status", "count"))
        return jsonify(ok=True)

    @app.post("/_test/graph_fault")
    def test_graph_fault():
        data = body()
        standin.graph_fault(**_pick(data, "status", "body", "headers", "delay", "count"))
        return jsonify(ok=True)

    @app.post("/_test/revoke")
    def test_revoke():
        standin.revoke_refresh_tokens(body().get("username"))
        return jsonify(ok=True)

    @app.post("/_test/clear")
    def test_clear():
        body()
        standin.clear_faults()
        return jsonify(ok=True)

    @app.post("/_test/hang_idp")
    def test_hang_idp():
        standin.hang_idp(bool(body().get("hang", True)))
        return jsonify(ok=True)

    @app.post("/_test/stop_idp")
    def test_stop_idp():
        body()
        standin.stop_idp()
        return jsonify(ok=True)

    @app.post("/_test/start_idp")
    def test_start_idp():
        body()
        standin.start_idp()
        return jsonify(ok=True)

    @app.get("/_test/counters")
    def test_counters():
        body()
        return jsonify(standin.counters)

    @app.post("/_test/reset_counters")
    def test_reset_counters():
        body()
        standin.reset_counters()
        return jsonify(ok=True)

    @app.get("/_test/requests")
    def test_requests():
        body()
        return jsonify(standin.recorded_requests)

    @app.post("/_test/cae_revoke")
    def test_cae_revoke():
        revoked_at = standin.cae_revoke(**_pick(body(), "at"))
        return jsonify(ok=True, revoked_at=revoked_at)

    @app.post("/_test/cae_clear")
    def test_cae_clear():
        body()
        standin.cae_clear()
        return jsonify(ok=True)

    @app.post("/_test/step_up")
    def test_step_up():
        standin.require_step_up(**_pick(body(), "error"))
        return jsonify(ok=True)


def _pick(data, *names):
    """Only the named keys, so a stray key in the JSON cannot hit an unexpected argument."""
    return {name: data[name] for name in names if name in data}

