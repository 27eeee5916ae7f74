"""Flask + Microsoft Entra ID: sign in, sign out, and call Microsoft Graph /me.

Where things happen:
* sign-in starts in `login()` and completes in `auth_response()` (at REDIRECT_PATH);
* the access token is fetched in `call_downstream_api()` with `auth.get_token_for_user`;
* Graph is called through `downstream.DownstreamApi.get_json`.

`flask run` finds `create_app()` here; `gunicorn 'app:create_app()'` serves it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import time
import uuid
import warnings
from pathlib import Path
from urllib.parse import quote, urlsplit

import flask
import redis
import requests
from flask import (
    Flask,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.globals import request_ctx
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf
from markupsafe import escape
from msal.exceptions import MsalServiceError
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.sansio.http import parse_cookie
from werkzeug.utils import cached_property

import app_config
from downstream import DownstreamApi, DownstreamError, PermissionMissing, Throttled, TokenRejected
from entra_auth import EntraAuth, IdentityProviderMisbehaved, IdentityProviderUnavailable, IdTokenRejected
from sessions import SIGNED_IN_KEY, init_sessions

logger = logging.getLogger(__name__)

# MSAL recommends response_mode=form_post on every sign-in; identity completes sign-in from
# the query string (and the session cookie is SameSite=Lax, which a cross-site POST would
# not carry). The warning would only be noise in every log.
warnings.filterwarnings("ignore", message="response_mode='form_post' is recommended", category=UserWarning)

# Token errors that a new interactive sign-in fixes.
SIGN_IN_AGAIN_ERRORS = {"interaction_required", "invalid_grant", "login_required", "no_account"}
# identity's own answer when the token lacks a scope that was asked for (error invalid_scope).
UNGRANTED_SCOPES = "Ungranted scope(s)"
ALLOWED_PROMPTS = {"select_account", "consent", "login"}
SIGNED_IN_AT_KEY = "signed_in_at"
# A downstream 401 this soon after signing in is not fixed by signing in again.
FRESH_SIGN_IN_SECONDS = 120
NOT_LOOKED_UP = object()  # g.user before anybody asked identity who is signed in

SECURITY_HEADERS = {
    # No inline script anywhere; the app never needs to be framed. form-action is left
    # out on purpose: sign-out posts to us and is then redirected to the identity
    # provider, which browsers check against form-action too.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # Never to another site (the auth code travels in the callback's query string), but to
    # this one: over https, Flask-WTF refuses a sign-out POST whose Referer is missing or
    # from another origin, and "no-referrer" made every browser send none.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class Request(flask.Request):
    @cached_property
    def cookies(self):
        # Performance (make bench): werkzeug finds the Cookie header by turning every key of
        # the WSGI environ into a header name (~0.01 ms on every page view). A WSGI server
        # hands the header over as the one HTTP_COOKIE entry, parsed here exactly as werkzeug
        # parses it (the sans-I/O parser: bytes that are not UTF-8 stay as they came).
        return parse_cookie(self.environ.get("HTTP_COOKIE"), cls=self.dict_storage_class)


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    app.request_class = Request
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)

    if test_config is None:
        app_config.load_dotenv_file()
        settings = app_config.load()
    else:  # tests are hermetic: the developer's environment and .env do not leak in
        settings = app_config.load({})
    app.config.from_mapping(
        settings,
        SESSION_COOKIE_NAME="session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=False,  # also Secure per request whenever it came over https
        # A page view that changed nothing writes nothing and sends no Set-Cookie.
        SESSION_REFRESH_EACH_REQUEST=False,
        # The one form (sign-out) is a few hundred bytes: a bigger body is refused (413)
        # before Flask-WTF would parse it, files and all.
        MAX_CONTENT_LENGTH=16 * 1024,
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session it is bound to
        WTF_CSRF_CHECK_DEFAULT=False,  # checked in our own before_request hook, see there
    )
    if test_config is not None:
        app.config.from_mapping(test_config)
    if not app.config.get("SESSION_FILE_DIR"):
        app.config["SESSION_FILE_DIR"] = str(Path(app.instance_path) / "sessions")
    _configure_logging(app.config.get("LOG_LEVEL", "INFO"))
    app.config["PERMANENT_SESSION_LIFETIME"] = app.config["SESSION_LIFETIME_SECONDS"]
    _set_secret_key(app)

    problems = app_config.problems(app.config)
    app.extensions["config_problems"] = problems
    if any(p.key in ("SESSION_TYPE", "REDIS_URL") for p in problems):
        app.config["SESSION_TYPE"] = "filesystem"  # enough to show the configuration page
    init_sessions(app, on_write_failure=_session_write_failed)
    # CSRFProtect's own hook is off (WTF_CSRF_CHECK_DEFAULT): our guard runs the check after
    # answering 503 for an unusable configuration or session store, which would otherwise
    # make every form look stale.
    csrf = CSRFProtect(app)
    _register_hooks(app, csrf)
    _quiet_query_strings_in_request_logs()

    if app.config.get("TRUSTED_HOSTS"):
        # A leading dot (any subdomain) is trusted without it, too.
        app.wsgi_app = _health_probes_from_any_host(app.wsgi_app, app.config["TRUSTED_HOSTS"][0].lstrip("."))
    if app.config["PROXY_COUNT"] > 0:
        n = app.config["PROXY_COUNT"]
        # Client, scheme and host (with its port) only: App Service and the README's nginx
        # set nothing else, so an X-Forwarded-Port or -Prefix could only come from the client.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=0, x_prefix=0)

    auth = EntraAuth(
        session=session,
        client_id=app.config["CLIENT_ID"],
        client_credential=app.config["CLIENT_SECRET"],
        authority=(app.config["AUTHORITY"] or app_config.b2c_authority(app.config)) or None,
        oidc_authority=app.config["OIDC_AUTHORITY"] or None,
        pool_size=app.config["DOWNSTREAM_POOL_SIZE"],
    )
    api = DownstreamApi(app.config["ENDPOINT"], pool_size=app.config["DOWNSTREAM_POOL_SIZE"])
    app.extensions["auth"] = auth
    app.extensions["downstream_api"] = api

    _register_template_filters(app)
    _register_error_handlers(app)
    _register_routes(app, auth, api)
    return app


# --- routes ----------------------------------------------------------------------------


def _register_routes(app: Flask, auth: EntraAuth, api: DownstreamApi) -> None:
    scope = app.config["SCOPE"]

    def signed_in_user():
        """The signed-in user's id-token claims, or None. May refresh an expired id token."""
        user = g.get("user", NOT_LOOKED_UP)
        if user is NOT_LOOKED_UP:
            user = g.user = auth.get_user()
        return user

    @app.get("/")
    def index():
        return render_template("index.html", user=signed_in_user())

    @app.get("/login")
    def login():
        prompt = request.args.get("prompt")
        flow = auth.log_in(
            scopes=scope,
            redirect_uri=url_for("auth_response", _external=True),
            prompt=prompt if prompt in ALLOWED_PROMPTS else "select_account",
            next_link=safe_next_path(request.args.get("next")),
        )
        return redirect(flow["auth_uri"])

    def auth_response():
        answer = request.args.to_dict()  # first value of each parameter, like a browser sent it
        if not answer:
            # identity reads an empty answer as the device-code flow, which this app never starts.
            return _sign_in_failed_page("The identity provider's answer is missing.")
        next_link = auth.pending_next_link()
        pending_state = auth.pending_state()
        answers_the_pending_sign_in = (
            pending_state is not None and bool(answer.get("code")) and answer.get("state") == pending_state)
        try:
            with auth.replacing_the_session(answer):
                result = auth.complete_log_in(answer)
        except RuntimeError:  # MSAL: the id token's nonce is not the one we sent (or it is malformed)
            auth.forget_pending_sign_in()
            logger.warning("Sign-in refused: id token nonce mismatch")
            return _sign_in_failed_page("The identity provider's answer did not match this sign-in.")
        if "error" in result:
            auth.forget_pending_sign_in()
            if _needs_consent(result):  # e.g. identity's "Ungranted scope(s)"
                return _consent_page(next_path=safe_next_path(next_link))
            status = 403 if result.get("error") == "access_denied" else 400
            if status == 400:  # repr: the text comes from the query string, newlines and all
                logger.warning("Sign-in failed: %r", str(result.get("error"))[:100])
            return _auth_error_page(result, status=status)
        if not result:
            if answers_the_pending_sign_in:
                # The code is for the sign-in in progress, yet nothing came of it: identity
                # turns MSAL's ValueError into {}, and with the state checked, what is left is
                # a token endpoint that answered something other than JSON.
                raise IdentityProviderMisbehaved("The token endpoint's answer is not JSON.")
            if SIGNED_IN_KEY in session:  # e.g. Back after signing in, or a second tab's sign-in
                return render_template(
                    "error.html", status=400, title="This sign-in link was already used",
                    message="You are already signed in, so there is nothing more to do here.",
                    action_url=url_for("index"), action_label="Continue to the home page"), 400
            return _sign_in_failed_page(
                "This sign-in link was already used, has expired, or was started in another browser.")
        # A new session id at sign-in: an id planted before sign-in is worth nothing after.
        current_app.session_interface.regenerate(session)
        session.pop("csrf_token", None)
        generate_csrf()  # stored now, so that later page views need no session write
        session[SIGNED_IN_AT_KEY] = int(time.time())
        return redirect(safe_next_path(result.get("next_link")))

    app.add_url_rule(app.config["REDIRECT_PATH"], "auth_response", auth_response, methods=["GET"])

    @app.get("/logout")
    def logout_confirm():
        return render_template("logout.html", user=session.get(SIGNED_IN_KEY))

    @app.post("/logout")
    def logout():
        home = url_for("index", _external=True)
        post_logout = quote(home, safe="")  # identity does not encode it
        signed_in_here = SIGNED_IN_KEY in session
        end_session_url = auth.log_out(post_logout)
        if signed_in_here:
            session.clear()  # deletes the server-side session and the cookie
        # Otherwise the browser's cookie is left alone: a post from another site arrives
        # without it (SameSite=Lax), and clearing would send a deletion for the real one.
        if end_session_url == post_logout:  # identity's fallback: no end-session endpoint
            if auth.end_session_endpoint_missing():  # the provider offers none: nothing more to do
                return redirect(url_for("index"), code=303)
            return render_template(
                "error.html", status=503, title="Signed out of this app only",
                message="You are signed out here, but Microsoft Entra ID can't be reached to end "
                        "your session there. Close the browser to be fully signed out.",
                action_url=url_for("index"), action_label="Back to the home page"), 503
        return redirect(end_session_url, code=303)

    @app.get("/call_downstream_api")
    def call_downstream_api():
        user = signed_in_user()
        if user is None:
            return redirect(url_for("login", next=request.path))
        token = auth.get_token_for_user(scope)
        if "error" in token:
            return _token_error_response(token)
        try:
            profile = api.get_json(token["access_token"])
        except TokenRejected:
            # Revoked or expired early: one more try with a freshly refreshed token.
            token = auth.get_token_for_user(scope, force_refresh=True)
            if "error" in token:
                return _token_error_response(token)
            try:
                profile = api.get_json(token["access_token"])
            except TokenRejected:
                if time.time() - session.get(SIGNED_IN_AT_KEY, 0) < FRESH_SIGN_IN_SECONDS:
                    # A sign-in just now did not help: sending the user back would loop
                    # (Entra ID signs them in silently). Say what is wrong instead.
                    raise
                return redirect(url_for("login", next=request.path))
        return render_template("display.html", user=user, profile=profile)

    @app.get("/healthz")
    def healthz():
        # Anyone can ask, so the answer names the kind of failure only; the log has the
        # details (host, port, path).
        store = current_app.session_interface
        body = {"status": "ok", "session_store": "ok"}
        if g.get("session_store_error") is not None:
            body.update(status="unavailable", session_store=type(g.session_store_error).__name__)
        else:
            try:
                store.ping()
            except Exception as exc:  # noqa: BLE001 (any failure of the store is the answer here)
                logger.error("Health check: session store unavailable: %s", _describe(exc))
                body.update(status="unavailable", session_store=type(exc).__name__)
        if current_app.extensions["config_problems"]:
            body.update(status="unconfigured",
                        configuration=[p.key for p in current_app.extensions["config_problems"]])
        return jsonify(body), (200 if body["status"] == "ok" else 503)


def _needs_consent(result: dict) -> bool:
    """True when granting permission fixes it. Not for every invalid_scope: a misspelt SCOPE
    (AADSTS70011) is a configuration error that no consent can fix."""
    description = str(result.get("error_description") or "")
    return (result.get("error") == "consent_required" or result.get("suberror") == "consent_required"
            or "AADSTS65001" in description
            or (result.get("error") == "invalid_scope" and description.startswith(UNGRANTED_SCOPES)))


def _consent_page(next_path: str):
    return render_template(
        "consent.html", scopes=current_app.config["SCOPE"],
        consent_url=url_for("login", prompt="consent", next=next_path)), 403


def _token_error_response(result: dict):
    error = result.get("error", "")
    if _needs_consent(result):
        return _consent_page(next_path=request.path)
    if error in SIGN_IN_AGAIN_ERRORS:
        return redirect(url_for("login", next=request.path))
    logger.warning("Token request failed: %s", error)
    return _auth_error_page(result, status=502, title="Microsoft Entra ID did not issue a token")


def safe_next_path(value) -> str:
    """A same-origin path to go to after sign-in; anything else becomes '/'."""
    if not isinstance(value, str) or not value.startswith("/") or len(value) > 2048:
        return "/"
    if value.startswith("//") or "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    if parts.path in ("/login", "/logout", current_app.config["REDIRECT_PATH"]):
        return "/"  # would loop or sign out right after signing in
    return value


# --- pages for things that went wrong -------------------------------------------------


def _auth_error_page(result: dict, *, status: int, title: str | None = None):
    error = str(result.get("error", "unknown_error"))
    return render_template(
        "auth_error.html",
        title=title or ("Sign-in was cancelled" if error == "access_denied" else "Sign-in failed"),
        error=error,
        description=str(result.get("error_description", "")),
    ), status


def _sign_in_failed_page(reason: str):
    return render_template(
        "error.html", status=400, title="Sign-in could not be completed", message=reason,
        action_url=url_for("login"), action_label="Try signing in again"), 400


def _error_page(status: int, title: str, message: str, **extra):
    if request_ctx.url_adapter is None:
        # The Host header was unusable (or not trusted), so no URL can be built and the
        # layout cannot render: a bare page, still escaped.
        page = (f"<!doctype html><html lang=\"en\"><title>{escape(title)}</title>"
                f"<h1>{escape(title)}</h1><p>{escape(message)}</p></html>")
        return page, status
    return render_template("error.html", status=status, title=title, message=message, **extra), status


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def _sessions_unavailable_page():
    return (*_error_page(503, "Sessions unavailable",
                         "The session store can't be reached right now, so nobody can sign in or stay "
                         "signed in. Please try again in a moment."), {"Retry-After": "5"})


def _session_write_failed(response) -> None:
    """Turn a response whose session change was lost into the 503 page."""
    page, status, headers = _sessions_unavailable_page()
    response.set_data(page)
    response.status_code = status
    response.headers.pop("Location", None)
    response.headers.update(headers)


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        titles = {404: "Page not found", 405: "Method not allowed"}
        response = _error_page(exc.code or 500, titles.get(exc.code, exc.name),
                               exc.description if exc.code != 404 else "There is nothing at this address.")
        if exc.code == 405 and exc.valid_methods:
            return (*response, {"Allow": ", ".join(exc.valid_methods)})
        return response

    @app.errorhandler(CSRFError)
    def csrf_error(exc):
        return _error_page(400, "This form has expired",
                           "For your safety the request was not carried out. Go back, reload the page and try again.",
                           action_url=url_for("index"), action_label="Back to the home page")

    @app.errorhandler(requests.RequestException)
    @app.errorhandler(MsalServiceError)  # MSAL's word for a 5xx from discovery or the token endpoint
    @app.errorhandler(IdentityProviderUnavailable)
    def identity_provider_unreachable(exc):
        # Graph errors never get here (DownstreamApi turns them into DownstreamError):
        # a raw requests exception comes from a call to the identity provider.
        logger.warning("Identity provider unreachable: %s", _describe(exc))
        timed_out = isinstance(exc, requests.Timeout) and not isinstance(exc, requests.ConnectionError)
        status = 504 if timed_out else 503
        if request.endpoint == "auth_response":  # its query string is spent: start a new sign-in
            retry_url = url_for("login")
        else:
            retry_url = request.path if request.method == "GET" else url_for("index")
        page = _error_page(status, "Microsoft Entra ID can't be reached",
                           "Signing in and getting tokens is not possible right now. Please try again in a minute.",
                           action_url=retry_url, action_label="Try again")
        return (*page, {"Retry-After": "30"})

    @app.errorhandler(IdentityProviderMisbehaved)
    def identity_provider_misbehaved(exc):
        logger.warning("Identity provider answered unexpectedly: %s", exc)
        return _error_page(502, "Microsoft Entra ID answered something unexpected",
                           "Signing in or getting a token failed. Please try again in a minute.",
                           action_url=url_for("index"), action_label="Back to the home page")

    @app.errorhandler(redis.RedisError)  # a store call outside open/save, e.g. at sign-in
    def session_store_failed(exc):
        logger.error("Session store unavailable: %s", _describe(exc))
        return _sessions_unavailable_page()

    @app.errorhandler(IdTokenRejected)
    def id_token_rejected(exc):
        logger.warning("Sign-in refused: %s", exc)
        session.clear()
        return _error_page(400, "Sign-in refused", str(exc),
                           action_url=url_for("index"), action_label="Back to the home page")

    @app.errorhandler(DownstreamError)
    def downstream_error(exc: DownstreamError):
        logger.warning("Downstream API error %s: %s", exc.upstream_status, exc.message)
        headers = {}
        if isinstance(exc, PermissionMissing):
            message = (f"The API refused the request: the app needs the delegated permission "
                       f"{', '.join(current_app.config['SCOPE'])}, granted by you or an administrator.")
        elif isinstance(exc, Throttled):
            headers["Retry-After"] = str(exc.retry_after)
            message = f"Microsoft Graph is throttling requests; try again in {exc.retry_after} s."
        else:
            message = exc.message
        page = _error_page(exc.status, exc.title, message,
                           action_url=url_for("call_downstream_api"), action_label="Try again")
        return (*page, headers)

    @app.errorhandler(InternalServerError)
    def internal_error(exc: InternalServerError):
        request_id = uuid.uuid4().hex[:12]
        original = getattr(exc, "original_exception", None) or exc
        logger.error("Unhandled error, request id %s", request_id, exc_info=original)
        return _error_page(500, "Something went wrong",
                           "The error was logged. Quote this request id if you report it.",
                           request_id=request_id)


def as_text(value) -> str:
    """Graph values are strings, numbers or lists of them (businessPhones)."""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def tojson_pretty(value) -> str:
    # A plain string, so that Jinja's autoescaping applies (Flask's tojson is for scripts).
    try:
        return json.dumps(value, indent=2, ensure_ascii=False)
    except RecursionError:  # an answer nested hundreds deep: parsed fine, too deep to indent
        return "(nested too deeply to show)"


# The filters the templates use; bench/limit_app.py renders the same templates with them.
TEMPLATE_FILTERS = {"as_text": as_text, "tojson_pretty": tojson_pretty}


def _register_template_filters(app: Flask) -> None:
    app.jinja_env.filters.update(TEMPLATE_FILTERS)


# --- every request --------------------------------------------------------------------


def _register_hooks(app: Flask, csrf: CSRFProtect) -> None:
    using_local_stand_in = app_config.uses_local_stand_in(app.config)  # settings are read once
    csrf_token = _csrf_token_signed_once(app)

    @app.context_processor
    def layout_context():
        user = g.get("user", NOT_LOOKED_UP)
        if user is NOT_LOOKED_UP:  # a page that did not ask identity (error pages, sign-out)
            user = session.get(SIGNED_IN_KEY) if "session_store_error" not in g else None
        return {"current_user": user, "using_local_stand_in": using_local_stand_in, "csrf_token": csrf_token}

    problems = app.extensions["config_problems"]
    csrf_methods = app.config["WTF_CSRF_METHODS"]
    max_body = app.config["MAX_CONTENT_LENGTH"]

    @app.before_request
    def guard_request():
        req = request._get_current_object()  # one context look-up, not one per use
        if req.endpoint in (None, "static", "healthz"):
            return None  # None: no such route, so the 404/405 page follows
        if problems:
            return render_template("config_error.html", problems=problems), 503
        if g.get("session_store_error") is not None:
            return _sessions_unavailable_page()
        # The CSRF check, here rather than in Flask-WTF's own hook (WTF_CSRF_CHECK_DEFAULT is
        # off): after the 503s above, and only for the methods that can change state.
        if req.method in csrf_methods:
            if req.content_length is None and len(req.get_data(cache=True)) >= max_body:
                # A chunked body: werkzeug stops reading it at MAX_CONTENT_LENGTH without
                # a word, and the form would be parsed from its first 16 KB.
                raise RequestEntityTooLarge()
            if not _signing_out_a_browser_not_signed_in():
                csrf.protect()
        return None

    # Pages are never stored by caches; static files keep the caching Flask gives them.
    page_headers = [*SECURITY_HEADERS.items(), ("Cache-Control", "no-store")]
    static_headers = list(SECURITY_HEADERS.items())
    hsts = ("Strict-Transport-Security", "max-age=31536000")

    @app.after_request
    def security_headers(response):
        # No view or handler sets these headers, so they are appended in one go: werkzeug's
        # setdefault scans the headers and raises a KeyError for every absent name, which
        # cost about 4 % of a page view for six headers (make bench).
        req = request._get_current_object()  # one context look-up, not one per use
        response.headers.extend(static_headers if req.endpoint == "static" else page_headers)
        if req.is_secure:
            response.headers.add(*hsts)
        return response


def _signing_out_a_browser_not_signed_in() -> bool:
    """Sign-out needs no CSRF token when nobody is signed in here: nothing local changes
    (logout() leaves the cookie alone then), and the rest is a redirect to Entra ID's
    sign-out, which any site can already send a browser to. A second tab's Sign out, or one
    after the session expired, then ends the Entra ID session too instead of answering
    "this form has expired". A browser that says the post comes from another site
    (Sec-Fetch-Site) gets the CSRF check all the same."""
    return (request.endpoint == "logout" and SIGNED_IN_KEY not in session
            and request.headers.get("Sec-Fetch-Site", "same-origin") == "same-origin")


def _health_probes_from_any_host(wsgi_app, trusted_host: str):
    """Let /healthz answer whatever Host the probe sends (an instance's IP, localhost, the
    platform's own host name), which TRUSTED_HOSTS would refuse with a 400 and so mark
    every instance unhealthy. Its answer builds no URL and repeats no host."""

    def any_host_for_healthz(environ, start_response):
        if environ.get("PATH_INFO") == "/healthz":
            environ = {**environ, "HTTP_HOST": trusted_host}
        return wsgi_app(environ, start_response)

    return any_host_for_healthz


def _csrf_token_signed_once(app: Flask):
    """The templates' `csrf_token()`.

    Performance (make bench): Flask-WTF signs the session's CSRF token anew on every page
    with the sign-out form (~0.04 ms: key derivation, HMAC, base64; ~4 % of a page view).
    With WTF_CSRF_TIME_LIMIT=None every signature of the same token is as valid as the next,
    so each process signs a session's token once and shows that on every page.
    """
    signed: dict[str, str] = {}  # the session's raw token -> its signed form
    limit = 4096

    def csrf_token() -> str:
        raw = session.get(app.config["WTF_CSRF_FIELD_NAME"])
        if not isinstance(raw, str) or app.config["WTF_CSRF_TIME_LIMIT"] is not None:
            return generate_csrf()
        token = signed.get(raw)
        if token is None:
            token = generate_csrf()
            if len(signed) >= limit:
                signed.clear()  # a few thousand sessions per process: start again, rarely
            signed[raw] = token
        return token

    return csrf_token


def _set_secret_key(app: Flask) -> None:
    key = app.config.get("SECRET_KEY") or ""
    problem = app_config.secret_key_problem(key)
    if problem is None:
        return
    if not app_config.is_local_development(app.config):
        raise RuntimeError(f"Refusing to start: {problem} {app_config.SIGNING_KEY_ADVICE}")
    # Local development: one random key kept in the instance folder, so that every
    # worker process and every restart agree on it. Written whole, then linked into place:
    # a worker never reads a half-written key, and the first worker's key wins.
    key_file = Path(app.instance_path) / "dev_secret_key"
    if not key_file.exists():
        draft = key_file.with_name(f".dev_secret_key.{os.getpid()}")
        draft.write_text(secrets.token_hex(32), encoding="ascii")
        draft.chmod(0o600)
        with contextlib.suppress(FileExistsError):
            os.link(draft, key_file)
        draft.unlink()
    app.config["SECRET_KEY"] = key_file.read_text(encoding="ascii").strip()


class _StripQueryString(logging.Filter):
    """The dev server logs request lines; the auth code travels in a query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and isinstance(record.args, tuple) and isinstance(record.args[0], str):
            line = record.args[0]
            if "?" in line:
                method_path, _, rest = line.partition("?")
                protocol = rest.rsplit(" ", 1)[-1] if " " in rest else ""
                record.args = (f"{method_path}?[redacted] {protocol}".rstrip(), *record.args[1:])
        return True


class _RedactSecrets(logging.Filter):
    """Last line of defence: no token, code or secret leaves the process in a log line."""

    patterns = (
        (re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*"), "[redacted-jwt]"),
        (re.compile(r'("(?:code|code_verifier|refresh_token|access_token|id_token|client_secret|'
                    r'client_assertion)"\s*:\s*")[^"]*'), r"\1[redacted]"),
        (re.compile(r"\b((?:code|refresh_token|access_token|id_token|client_secret)=)[^&\s\"']+"), r"\1[redacted]"),
    )

    def redact(self, text: str) -> str:
        for pattern, replacement in self.patterns:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 (a library's call whose arguments do not fit its format)
            # logging would print the raw message and arguments to stderr, unredacted.
            message = record.msg = f"{record.msg!r} with arguments {record.args!r}"
            record.args = None
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        return True


def _configure_logging(level: str) -> None:
    """Our warnings (failed sign-ins, unreachable services) reach stderr under any server."""
    root = logging.getLogger()
    if not root.handlers:  # nobody configured logging (gunicorn, flask run): we do
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")
    for handler in root.handlers:
        if not any(isinstance(f, _RedactSecrets) for f in handler.filters):
            handler.addFilter(_RedactSecrets())
    # MSAL logs each token request's body (with the auth code and PKCE verifier) at DEBUG.
    logging.getLogger("msal.token_cache").setLevel(logging.INFO)
    # identity logs a full traceback for every forged or stale callback, which anyone can
    # send; the app logs one line for each instead.
    logging.getLogger("identity.web").setLevel(logging.CRITICAL)


def _quiet_query_strings_in_request_logs() -> None:
    werkzeug_logger = logging.getLogger("werkzeug")
    if not any(isinstance(f, _StripQueryString) for f in werkzeug_logger.filters):
        werkzeug_logger.addFilter(_StripQueryString())
