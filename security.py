"""What every request passes through: the request guard (configuration and session-store
503s, body size, CSRF), the security headers, the proxy and host settings, and the check
that keeps `next` links on this site."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import requests
from flask import Flask, current_app, render_template, request, session
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf, validate_csrf
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix
from wtforms import ValidationError

import errors
from sessions import SIGNED_IN_AT_KEY, SIGNED_IN_KEY
from sign_out_everywhere import frame_ancestors

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
HSTS = ("Strict-Transport-Security", "max-age=31536000")
# A longer `next` (in UTF-8 bytes) becomes "/": it travels in the pending sign-in's cookie
# (4 KB at most for the whole cookie).
MAX_NEXT_LENGTH = 1024
# Remembered signed CSRF tokens per process (see csrf_token_signed_once).
CSRF_CACHE_SIZE = 4096


def init_security(app: Flask) -> None:
    # CSRFProtect's own hook is off (WTF_CSRF_CHECK_DEFAULT): guard_request runs the check
    # after answering 503 for an unusable configuration or session store, which would
    # otherwise make every form look stale.
    csrf = CSRFProtect(app)
    problems = app.extensions["config_problems"]

    @app.before_request
    def guard_request():
        if request.endpoint in (None, "static", "healthz"):
            return None  # None: no such route, so the 404/405 page follows
        if problems:
            return render_template("config_error.html", problems=problems), 503
        if errors.session_store_failed_this_request():
            return errors.sessions_unavailable_page()
        if request.method in app.config["WTF_CSRF_METHODS"]:
            if request.content_length is None and len(request.get_data(cache=True)) >= app.config["MAX_CONTENT_LENGTH"]:
                # A chunked body: werkzeug stops reading it at MAX_CONTENT_LENGTH without
                # a word, and the form would be parsed from its first 16 KB.
                raise RequestEntityTooLarge()
            if not _signing_out_a_browser_not_signed_in():
                _check_csrf(csrf)
        return None

    # Pages are never stored by caches; static files keep the caching Flask gives them.
    page_headers = [*SECURITY_HEADERS.items(), ("Cache-Control", "no-store")]
    static_headers = list(SECURITY_HEADERS.items())

    @app.after_request
    def security_headers(response):
        # No view or handler sets these headers, so they are appended in one go: werkzeug's
        # setdefault scans the headers once per name (about 4 % of a page view for six
        # headers, make bench).
        if request.endpoint == "frontchannel_logout":
            response.headers.extend(_framable_by_the_identity_provider(app))
        else:
            response.headers.extend(static_headers if request.endpoint == "static" else page_headers)
        if request.is_secure:
            response.headers.add(*HSTS)
        return response

    if app.config.get("TRUSTED_HOSTS"):
        # A leading dot (any subdomain) is trusted without it, too.
        app.wsgi_app = _health_probes_from_any_host(app.wsgi_app, app.config["TRUSTED_HOSTS"][0].lstrip("."))
    if app.config["PROXY_COUNT"] > 0:
        n = app.config["PROXY_COUNT"]
        # Client, scheme and host (with its port) only: App Service and the README's nginx
        # set nothing else, so an X-Forwarded-Port or -Prefix could only come from the client.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=0, x_prefix=0)


def _framable_by_the_identity_provider(app: Flask) -> list[tuple[str, str]]:
    """The front-channel logout route's headers: it is loaded in an iframe of the identity
    provider's signed-out page, so that origin (and only it) may frame it. No X-Frame-Options:
    DENY would forbid that, and ALLOW-FROM is obsolete."""
    try:
        discovery = app.extensions["auth"].discovery()
    except requests.RequestException:  # the authority's own origin still applies
        discovery = None
    policy = SECURITY_HEADERS["Content-Security-Policy"].replace(
        "frame-ancestors 'none'", f"frame-ancestors {frame_ancestors(app.config, discovery)}")
    headers = {**SECURITY_HEADERS, "Content-Security-Policy": policy}
    del headers["X-Frame-Options"]
    return [*headers.items(), ("Cache-Control", "no-store")]


def _check_csrf(csrf: CSRFProtect) -> None:
    """Flask-WTF's check, where a token signed with a key of SECRET_KEY_FALLBACKS (a page
    rendered before a key rotation) passes too: Flask-WTF itself knows only SECRET_KEY."""
    try:
        _check_csrf_with_fallback_keys(csrf)
    except ValueError as exc:  # a Referer that is no URL ("https://["): urlparse raises
        raise CSRFError("The referrer header is malformed.") from exc


def _check_csrf_with_fallback_keys(csrf: CSRFProtect) -> None:
    try:
        csrf.protect()
    except CSRFError:
        token = request.form.get(current_app.config["WTF_CSRF_FIELD_NAME"])
        if not any(_csrf_token_signed_with(token, key) for key in current_app.config["SECRET_KEY_FALLBACKS"]):
            raise
        # The rest of Flask-WTF's check: over https the form must come from this origin.
        if request.is_secure and current_app.config["WTF_CSRF_SSL_STRICT"] and not _same_origin_referrer():
            raise


def _same_origin_referrer() -> bool:
    referrer = urlsplit(request.referrer or "")
    return (referrer.scheme, referrer.netloc) == ("https", request.host)


def _csrf_token_signed_with(token, key: str) -> bool:
    try:
        validate_csrf(token, secret_key=key)
    except ValidationError:
        return False
    return True


def _signing_out_a_browser_not_signed_in() -> bool:
    """Sign-out needs no CSRF token when nobody is signed in here: nothing local changes
    (logout() leaves the cookie alone then), and the rest is a redirect to the identity
    provider's sign-out, which any site can already send a browser to. A second tab's Sign
    out, or one after the session expired, then ends the provider's session too instead of
    answering "this form has expired". A browser that says the post comes from another
    site (Sec-Fetch-Site) gets the CSRF check all the same."""
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


def csrf_token_signed_once(app: Flask):
    """The templates' `csrf_token()`: the session's CSRF token, signed once per process.

    Performance (make bench): Flask-WTF signs the session's token anew on every page with
    the sign-out form (~0.04 ms: key derivation, HMAC, base64; ~4 % of a page view). The
    signature carries a time stamp only for WTF_CSRF_TIME_LIMIT; while that is None (our
    setting: a token lives as long as its session) every signature of the same token is
    as valid as the next, so the first one is shown again. With a time limit set, every
    page signs anew, as Flask-WTF does.
    """
    signed: dict[str, str] = {}  # the session's raw token -> its signed form

    def csrf_token() -> str:
        raw = session.get(app.config["WTF_CSRF_FIELD_NAME"])
        if not isinstance(raw, str) or app.config["WTF_CSRF_TIME_LIMIT"] is not None:
            return generate_csrf()
        token = signed.get(raw)
        if token is None:
            token = generate_csrf()
            if len(signed) >= CSRF_CACHE_SIZE:
                signed.clear()  # a few thousand sessions per process: start again, rarely
            signed[raw] = token
        return token

    return csrf_token


def begin_signed_in_session() -> None:
    """Right after a sign-in: a new session id (an id planted before sign-in is worth
    nothing after), and a new CSRF token, stored now so that later page views need no
    session write."""
    current_app.session_interface.regenerate(session)
    session.pop(current_app.config["WTF_CSRF_FIELD_NAME"], None)
    generate_csrf()
    session[SIGNED_IN_AT_KEY] = time.time()


def safe_next_path(value) -> str:
    """A same-origin path to go to after sign-in; anything else becomes '/'."""
    if not isinstance(value, str) or not value.startswith("/") or len(value.encode()) > MAX_NEXT_LENGTH:
        return "/"
    if value.startswith("//") or "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    if parts.path in ("/login", "/logout", current_app.config["REDIRECT_PATH"],
                      current_app.config["FRONTCHANNEL_LOGOUT_PATH"]):
        return "/"  # would loop or sign out right after signing in
    return value
