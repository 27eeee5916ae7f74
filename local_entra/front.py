"""The browser-facing pages: account picker (authorize) and /_test controls.

Plain http on loopback, so a browser shows no certificate warning. Every
page is server-rendered with no script, and styled by our own stylesheet.
Signing out (end-session, front-channel logout) lives in ``signout``.
"""

import uuid
from urllib.parse import urlencode, urlsplit

from flask import Flask, abort, jsonify, make_response, redirect, render_template, request, url_for

from . import sso
from .signout import add_sign_out_routes
from .users import USERS, find_user
from .web import CONTENT_SECURITY_POLICY

# The error page's heading and the status a browser gets when Entra would
# refuse to redirect (unknown app, unregistered reply URL).
_ERROR_TITLE = "Sorry, but we're having trouble signing you in."

# Prompts that ask for the account question even when a hint names the user.
_ASK_ANYWAY_PROMPTS = {"login", "select_account"}


def create_front_app(standin):
    app = Flask("local_entra.front")  # serves templates/ and static/ of this package
    app.jinja_env.filters["initials"] = _initials

    def error_page(description, status=400):
        return render_template(
            "error.html",
            title=_ERROR_TITLE,
            description=description,
            correlation_id=str(uuid.uuid4()),
        ), status

    @app.get("/<tenant>/oauth2/v2.0/authorize")
    def authorize(tenant):
        standin.store.count("authorize")
        args = request.args
        standin.record_request("authorize", client_id=args.get("client_id"), prompt=args.get("prompt"),
                               login_hint=args.get("login_hint"), claims=args.get("claims"))
        if not standin.is_tenant(tenant):
            return error_page(f"AADSTS90002: Tenant '{tenant}' not found.")
        client_id = args.get("client_id")
        if not client_id:
            return error_page("AADSTS900144: The request body must contain the following"
                              " parameter: 'client_id'.")
        if client_id != standin.client_id:
            return error_page(f"AADSTS700016: Application with identifier '{client_id}' was not"
                              f" found in the directory '{standin.tenant_id}'.")
        redirect_uri = args.get("redirect_uri")
        if redirect_uri not in standin.redirect_uris:
            # Never redirect to an unregistered address: that is the open
            # redirect Entra's check exists to prevent.
            return error_page(f"AADSTS50011: The redirect URI '{redirect_uri or ''}' specified in"
                              f" the request does not match the redirect URIs configured for the"
                              f" application '{client_id}'.")
        state = args.get("state")
        response_mode = args.get("response_mode", "query")
        if response_mode not in ("query", "form_post"):
            response_mode = "query"

        def fail(description):
            return _back_to_client(redirect_uri, response_mode, {
                "error": "invalid_request", "error_description": description, "state": state,
            })

        if args.get("response_type") != "code":
            return fail(f"AADSTS700054: response_type '{args.get('response_type', '')}' is not"
                        " enabled for the application; only 'code' is supported.")
        scopes = args.get("scope", "").split()
        if "openid" not in scopes:
            return fail("AADSTS900144: The 'scope' parameter must include 'openid'.")
        if not args.get("code_challenge"):
            return fail("AADSTS9002325: Proof Key for Code Exchange is required:"
                        " send a code_challenge.")
        if args.get("code_challenge_method") != "S256":
            return fail("AADSTS501491: Invalid code_challenge_method: only 'S256' is accepted.")
        validated = {
            "redirect_uri": redirect_uri,
            "response_mode": response_mode,
            "state": state,
            "scopes": scopes,
            "nonce": args.get("nonce"),
            "code_challenge": args["code_challenge"],
            "client_id": client_id,
            "claims": args.get("claims"),
        }
        # A hint that names a user signs them in with no account question, as Entra
        # does for a hinted user it knows (there is no password to ask for here).
        hinted = sso.user_for_hint(args.get("login_hint"), standin.tenant_id)
        if hinted is not None and not set(args.get("prompt", "").split()) & _ASK_ANYWAY_PROMPTS:
            return _complete_sign_in(standin, validated, hinted)
        # The validated request stays on the server; the form carries only its
        # id, so the browser cannot alter the client, reply URL or challenge.
        request_id = standin.store.add_pending(validated)
        _, session = sso.current(standin)
        return render_template(
            "picker.html",
            title="Pick an account",
            users=USERS,
            signed_in_id=session and session["user_id"],
            request_id=request_id,
            client_id=client_id,
            action=url_for("pick", tenant=tenant),
        )

    @app.post("/<tenant>/oauth2/v2.0/authorize")
    def pick(tenant):
        if not standin.is_tenant(tenant):
            return error_page(f"AADSTS90002: Tenant '{tenant}' not found.")
        pending = standin.store.pop_pending(request.form.get("request_id"))
        if pending is None:
            return error_page("AADSTS90015: This sign-in request has expired or was already"
                              " used. Go back to the application and sign in again.")
        if "cancel" in request.form:
            return _back_to_client(pending["redirect_uri"], pending["response_mode"], {
                "error": "access_denied",
                "error_subcode": "cancel",
                "error_description": "AADSTS65004: User declined to consent to access the app.",
                "state": pending["state"],
            })
        user = find_user(request.form.get("user_id"))
        if user is None:
            return error_page("AADSTS50034: The user account does not exist in this directory.")
        return _complete_sign_in(standin, pending, user)

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


def _initials(user):
    return (user["givenName"][:1] + user["surname"][:1]).upper()


def _complete_sign_in(standin, pending, user):
    """Send ``user`` back to the app with a code, from this browser's session as them."""
    cookie, session = sso.session_for(standin, user)
    code = standin.store.add_code({
        "client_id": pending["client_id"],
        "redirect_uri": pending["redirect_uri"],
        "code_challenge": pending["code_challenge"],
        "nonce": pending["nonce"],
        "scopes": pending["scopes"],
        "claims": pending["claims"],
        "user_id": user["id"],
        "sid": session["sid"],
    })
    # Front-channel logout later tells the apps that got codes from this session.
    standin.store.note_sign_in(cookie, pending["redirect_uri"])
    answer = {"code": code, "state": pending["state"], "session_state": str(uuid.uuid4())}
    response = make_response(_back_to_client(pending["redirect_uri"], pending["response_mode"], answer))
    sso.remember(response, cookie)
    return response


def _back_to_client(redirect_uri, response_mode, params):
    params = {k: v for k, v in params.items() if v is not None}
    if response_mode == "form_post":
        # No script allowed, so the user presses the button that an auto-submit
        # script would otherwise press.
        return render_template(
            "form_post.html", title="Continue to the application",
            redirect_uri=redirect_uri, params=params,
        )
    separator = "&" if urlsplit(redirect_uri).query else "?"
    return redirect(redirect_uri + separator + urlencode(params), code=302)


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

