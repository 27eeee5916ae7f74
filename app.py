"""Flask + Microsoft Entra ID: sign in, sign out, and call Microsoft Graph /me.

Where things happen:
* sign-in starts in `login()` and completes in `auth_response()` (at REDIRECT_PATH);
* the access token is fetched in `call_downstream_api()` with `auth.get_token_for_user`;
* Graph is called there too, through `downstream.DownstreamApi.get_json`.

`create_app()` wires Flask to `identity` (through `entra_auth.EntraAuth`). Errors are in
`errors.py`, the request guard and headers in `security.py`, sessions in `sessions.py`.
`flask run` finds `create_app()` here; `gunicorn 'app:create_app()'` serves it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from flask import Flask, current_app, g, jsonify, redirect, render_template, request, session, url_for

import app_config
import b2c
import client_credentials
import conditional_access
import errors
import provider
from downstream import DownstreamApi, TokenRejected
from entra_auth import EntraAuth
from logging_setup import configure_logging
from security import begin_signed_in_session, init_security, safe_next_path
from sessions import SIGNED_IN_KEY, STORE_ERRORS, init_sessions
from sign_out_everywhere import frontchannel_logout
from templating import NOT_LOOKED_UP, init_templating

logger = logging.getLogger(__name__)

# MSAL recommends response_mode=form_post on every sign-in; identity completes sign-in from
# the query string (and the session cookie is SameSite=Lax, which a cross-site POST would
# not carry). The warning would only be noise in every log.
warnings.filterwarnings("ignore", message="response_mode='form_post' is recommended", category=UserWarning)

ALLOWED_PROMPTS = {"select_account", "consent", "login"}

FLASK_SETTINGS = {
    "SESSION_COOKIE_NAME": "session",
    "SESSION_COOKIE_HTTPONLY": True,
    "SESSION_COOKIE_SAMESITE": "Lax",
    "SESSION_COOKIE_SECURE": False,  # also Secure per request whenever it came over https
    # A page view that changed nothing writes nothing and sends no Set-Cookie.
    "SESSION_REFRESH_EACH_REQUEST": False,
    # The one form (sign-out) is a few hundred bytes: a bigger body is refused (413)
    # before Flask-WTF would parse it, files and all.
    "MAX_CONTENT_LENGTH": 16 * 1024,
    "WTF_CSRF_TIME_LIMIT": None,  # the token lives as long as the session it is bound to
    "WTF_CSRF_CHECK_DEFAULT": False,  # checked in security.guard_request
}


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    if test_config is None:
        app_config.load_dotenv_file()
        settings = app_config.load()
    else:  # tests are hermetic: the developer's environment and .env do not leak in
        settings = app_config.load({})
    app.config.from_mapping(settings, **FLASK_SETTINGS)
    app.config.from_mapping(test_config or {})
    app.config["SESSION_FILE_DIR"] = app.config["SESSION_FILE_DIR"] or str(Path(app.instance_path) / "sessions")
    app.config["PERMANENT_SESSION_LIFETIME"] = app.config["SESSION_LIFETIME_SECONDS"]
    configure_logging(app.config["LOG_LEVEL"])
    app.config["SECRET_KEY"] = app_config.secret_key_for(app.config, app.instance_path)
    # Read once, here: problems() names what is wrong with it, the configuration page shows
    # its thumbprints and expiry, and MSAL gets its key.
    app.config["CLIENT_CERTIFICATE"] = client_credentials.read_configured_certificate(app.config)

    problems = app.extensions["config_problems"] = app_config.problems(app.config)
    for problem in problems:  # also in the log: a server started with no browser looking
        logger.warning("Configuration: %s %s %s", problem.key, problem.message, problem.where)
    if any(p.key in ("SESSION_TYPE", "REDIS_URL") for p in problems):
        app.config["SESSION_TYPE"] = "filesystem"  # enough to show the configuration page
    init_sessions(app, on_write_failure=errors.session_write_failed)
    init_security(app)
    errors.register_error_handlers(app)
    init_templating(app)

    client_credential = client_credentials.client_credential(app.config)  # CLIENT_SECRET or the certificate

    def make_auth(authority: str | None, user_flow: str | None = None) -> EntraAuth:
        return EntraAuth(
            session=session,
            client_id=app.config["CLIENT_ID"],
            client_credential=client_credential,
            authority=authority or None,
            oidc_authority=app.config["OIDC_AUTHORITY"] or None,
            pool_size=app.config["DOWNSTREAM_POOL_SIZE"],
            client_capabilities=app.config["CLIENT_CAPABILITIES"],
            carried_across_sign_in=[conditional_access.TRAIL_KEY],
            user_flow=user_flow,
        )

    app.extensions["auth"] = make_auth(app.config["AUTHORITY"] or app_config.b2c_authority(app.config),
                                       None if app.config["AUTHORITY"] else app.config["B2C_SIGNUP_SIGNIN_USER_FLOW"])
    b2c.init_b2c(app, make_auth)  # Azure AD B2C's edit-profile and password-reset flows, if configured
    app.extensions["downstream_api"] = DownstreamApi(app.config["ENDPOINT"],
                                                     pool_size=app.config["DOWNSTREAM_POOL_SIZE"])

    app.add_url_rule("/", view_func=index)
    app.add_url_rule("/login", view_func=login)
    app.add_url_rule(app.config["REDIRECT_PATH"], view_func=auth_response)
    app.add_url_rule("/logout", view_func=logout_confirm, methods=["GET"])
    app.add_url_rule("/logout", view_func=logout, methods=["POST"])
    app.add_url_rule("/call_downstream_api", view_func=call_downstream_api)
    app.add_url_rule("/healthz", view_func=healthz)
    # Sign-out from anywhere: the identity provider's signed-out page calls this in an iframe.
    app.add_url_rule(app.config["FRONTCHANNEL_LOGOUT_PATH"], view_func=frontchannel_logout)
    return app


def auth() -> EntraAuth:
    return current_app.extensions["auth"]


def signed_in_user():
    """The signed-in user's id-token claims, or None. May refresh an expired id token."""
    user = g.get("user", NOT_LOOKED_UP)
    if user is NOT_LOOKED_UP:
        user = g.user = auth().get_user()
    return user


# --- the views ---------------------------------------------------------------------------


def index():
    return render_template("index.html", user=signed_in_user())


def login():
    prompt = request.args.get("prompt")
    if prompt not in ALLOWED_PROMPTS or not provider.supports_prompt(current_app.config, prompt, auth().discovery):
        prompt = provider.sign_in_prompt(current_app.config, auth().discovery)  # the picker, where there is one
    flow = auth().log_in(
        scopes=current_app.config["SCOPE"],
        redirect_uri=url_for("auth_response", _external=True),
        prompt=prompt,
        next_link=safe_next_path(request.args.get("next")),
        # Signed in already (e.g. granting consent): the same account, no picker to fill in.
        login_hint=conditional_access.login_hint_of(session.get(SIGNED_IN_KEY)),
    )
    return redirect(flow["auth_uri"])


def auth_response():
    # First value of each parameter, as a browser sent it. Every failure is raised by
    # complete_sign_in and answered in errors.py.
    answer = request.args.to_dict()
    if b2c.answers_a_user_flow(answer):  # Azure AD B2C: edit profile, password reset
        return b2c.complete_user_flow(answer)
    next_link = auth().complete_sign_in(answer)
    begin_signed_in_session()  # a new session id, a new CSRF token
    return redirect(safe_next_path(next_link))


def logout_confirm():
    return render_template("logout.html", user=session.get(SIGNED_IN_KEY))


def logout():
    home = url_for("index", _external=True)
    signed_in_here = SIGNED_IN_KEY in session
    end_session_url = auth().log_out(home, id_token_hint=not provider.is_entra(current_app.config))
    if signed_in_here:
        session.clear()  # deletes the server-side session and the cookie
    # Otherwise the browser's cookie is left alone: a post from another site arrives
    # without it (SameSite=Lax), and clearing would send a deletion for the real one.
    if end_session_url is not None:
        return redirect(end_session_url, code=303)
    if auth().end_session_endpoint_missing():  # the provider offers none: nothing more to do
        return redirect(url_for("index"), code=303)
    return errors.error_page(
        503, "Signed out of this app only",
        f"You are signed out here, but {errors.provider_name()} can't be reached to end your session there. "
        "Close the browser to be fully signed out.",
        action_url=url_for("index"), action_label="Back to the home page")


def call_downstream_api():
    user = signed_in_user()
    if user is None:
        if SIGNED_IN_KEY in session:  # signed in, but the id token expired and could not be renewed
            return conditional_access.sign_in_again(reason="id_token_expired")
        return redirect(url_for("login", next=request.path))
    scope, api = current_app.config["SCOPE"], current_app.extensions["downstream_api"]
    token = auth().get_token_for_user(scope)
    if "error" in token:
        return conditional_access.answer_token_error(token)  # sign in again (step-up: with its claims), consent, or 502
    try:
        profile = api.get_json(token["access_token"])
    except TokenRejected as rejected:
        # Revoked (CAE: with a claims challenge) or expired early: one silent try with a new
        # token, asked for with the challenge's claims when there is one.
        claims = rejected.claims_challenge
        token = auth().get_token_for_user(scope, force_refresh=True, claims_challenge=claims)
        if "error" in token:
            return conditional_access.answer_token_error(token, claims=claims)
        try:
            profile = api.get_json(token["access_token"])
        except TokenRejected as again:  # a new token did not do: the user must sign in again
            return conditional_access.sign_in_again(reason="token_rejected", claims=again.claims_challenge)
    return render_template("display.html", user=user, profile=profile)


def healthz():
    # Anyone can ask, so the answer names the kind of failure only; the log has the details.
    body = {"status": "ok", "session_store": "ok"}
    if g.get("session_store_error") is not None:
        body.update(status="unavailable", session_store=type(g.session_store_error).__name__)
    else:
        try:
            current_app.session_interface.ping()
        except STORE_ERRORS as exc:
            logger.error("Health check: session store unavailable: %s", errors.describe(exc))
            body.update(status="unavailable", session_store=type(exc).__name__)
    if current_app.extensions["config_problems"]:
        body.update(status="unconfigured", configuration=[p.key for p in current_app.extensions["config_problems"]])
    return jsonify(body), (200 if body["status"] == "ok" else 503)
