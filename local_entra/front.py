"""The browser-facing pages: account picker (authorize), end-session, and /_test controls.

Plain http on loopback, so a browser shows no certificate warning. Every
page is server-rendered with no script, and styled by our own stylesheet.
"""

import uuid
from urllib.parse import urlencode, urlsplit

from flask import Flask, abort, jsonify, redirect, render_template, request, url_for

from .users import USERS, find_user

# The error page's heading and the status a browser gets when Entra would
# refuse to redirect (unknown app, unregistered reply URL).
_ERROR_TITLE = "Sorry, but we're having trouble signing you in."


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
        # The validated request stays on the server; the form carries only its
        # id, so the browser cannot alter the client, reply URL or challenge.
        request_id = standin.store.add_pending({
            "redirect_uri": redirect_uri,
            "response_mode": response_mode,
            "state": state,
            "scopes": scopes,
            "nonce": args.get("nonce"),
            "code_challenge": args["code_challenge"],
            "client_id": client_id,
        })
        # `prompt` is accepted but the picker always shows: there is no SSO
        # session to skip it with, and a visible choice keeps tests explicit.
        return render_template(
            "picker.html",
            title="Pick an account",
            users=USERS,
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
        answer = {"state": pending["state"]}
        if "cancel" in request.form:
            answer = {
                "error": "access_denied",
                "error_subcode": "cancel",
                "error_description": "AADSTS65004: User declined to consent to access the app.",
                **answer,
            }
        else:
            user = find_user(request.form.get("user_id"))
            if user is None:
                return error_page("AADSTS50034: The user account does not exist in this directory.")
            code = standin.store.add_code({
                "client_id": pending["client_id"],
                "redirect_uri": pending["redirect_uri"],
                "code_challenge": pending["code_challenge"],
                "nonce": pending["nonce"],
                "scopes": pending["scopes"],
                "user_id": user["id"],
            })
            answer = {"code": code, **answer, "session_state": str(uuid.uuid4())}
        return _back_to_client(pending["redirect_uri"], pending["response_mode"], answer)

    @app.get("/<tenant>/oauth2/v2.0/logout")
    def logout(tenant):
        standin.store.count("logout")
        if not standin.is_tenant(tenant):
            return error_page(f"AADSTS90002: Tenant '{tenant}' not found.")
        target = request.args.get("post_logout_redirect_uri")
        # Offer the way back only to an origin the app registered: otherwise
        # this page would be a link-laundering service for anyone.
        back = target if target and origin(target) in standin.registered_origins() else None
        return render_template("signed_out.html", title="You signed out of your account", back=back)

    @app.after_request
    def security_headers(response):
        # The pages run no script and embed nothing; say so to the browser.
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action *; frame-ancestors 'none'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.endpoint != "static":
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    _add_test_controls(app, standin)
    return app


def _initials(user):
    return (user["givenName"][:1] + user["surname"][:1]).upper()


def origin(url):
    parts = urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None
    return (parts.scheme.lower(), (parts.hostname or "").lower(), port)


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


def _pick(data, *names):
    """Only the named keys, so a stray key in the JSON cannot hit an unexpected argument."""
    return {name: data[name] for name in names if name in data}

