"""Every page for something that went wrong, and the handler that picks it.

The README's table "What happens when things go wrong" maps to this module one to one:
each row is a handler (or page helper) here, with the status it answers.
"""

from __future__ import annotations

import logging
import uuid

import redis
import requests
from flask import Flask, current_app, g, redirect, render_template, request, session, url_for
from flask.globals import request_ctx
from flask_wtf.csrf import CSRFError
from markupsafe import escape
from msal.exceptions import MsalServiceError
from werkzeug.exceptions import HTTPException, InternalServerError

import provider
from downstream import DownstreamError, PermissionMissing, Throttled
from entra_auth import (
    IdentityProviderMisbehaved,
    IdentityProviderUnavailable,
    IdTokenRejected,
    SignInError,
    SignInFailed,
)
from sid_index import SessionStoreRefused

logger = logging.getLogger(__name__)

# Token endpoint errors about the app itself (its secret or certificate), not the user:
# signing in again cannot help (AADSTS7000215 wrong secret, AADSTS700027 unknown certificate).
APP_CREDENTIAL_ERRORS = {"invalid_client", "unauthorized_client"}
# Azure AD B2C ends its sign-up/sign-in flow with this when the user clicks "Forgot your password?".
B2C_USER_FORGOT = "AADB2C90118"

# identity's own answer when the token lacks a scope that was asked for (error invalid_scope).
UNGRANTED_SCOPES = "Ungranted scope(s)"


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(CSRFError, form_expired)
    for exc_class in (requests.RequestException, MsalServiceError, IdentityProviderUnavailable):
        app.register_error_handler(exc_class, identity_provider_unreachable)
    app.register_error_handler(IdentityProviderMisbehaved, identity_provider_misbehaved)
    app.register_error_handler(redis.RedisError, session_store_failed)
    app.register_error_handler(SessionStoreRefused, session_store_failed)
    app.register_error_handler(SignInFailed, sign_in_failed)
    app.register_error_handler(SignInError, sign_in_error)
    app.register_error_handler(IdTokenRejected, id_token_rejected)
    app.register_error_handler(DownstreamError, downstream_error)
    app.register_error_handler(InternalServerError, internal_error)


# --- handlers, one per row of the README's failure table ----------------------------


def http_error(exc: HTTPException):
    titles = {404: "Page not found", 405: "Method not allowed"}
    response = error_page(exc.code or 500, titles.get(exc.code, exc.name),
                          exc.description if exc.code != 404 else "There is nothing at this address.")
    if exc.code == 405 and exc.valid_methods:
        return (*response, {"Allow": ", ".join(exc.valid_methods)})
    return response


def form_expired(exc: CSRFError):
    return error_page(400, "This form has expired",
                      "For your safety the request was not carried out. Go back, reload the page and try again.",
                      action_url=url_for("index"), action_label="Back to the home page")


def identity_provider_unreachable(exc: Exception):
    # Graph errors never get here (DownstreamApi turns them into DownstreamError): a raw
    # requests exception comes from a call to the identity provider.
    logger.warning("Identity provider unreachable: %s", describe(exc))
    timed_out = isinstance(exc, requests.Timeout) and not isinstance(exc, requests.ConnectionError)
    status = 504 if timed_out else 503
    if request.endpoint == "auth_response":  # its query string is spent: start a new sign-in
        retry_url = url_for("login")
    else:
        retry_url = request.path if request.method == "GET" else url_for("index")
    page = error_page(status, f"{provider_name()} can't be reached",
                      "Signing in and getting tokens is not possible right now. Please try again in a minute.",
                      action_url=retry_url, action_label="Try again")
    return (*page, {"Retry-After": "30"})


def identity_provider_misbehaved(exc: IdentityProviderMisbehaved):
    logger.warning("Identity provider answered unexpectedly: %s", exc)
    return error_page(502, f"{provider_name()} answered something unexpected",
                      "Signing in or getting a token failed. Please try again in a minute.",
                      action_url=url_for("index"), action_label="Back to the home page")


def session_store_failed(exc: Exception):  # a store call outside open/save, e.g. at sign-in
    logger.error("Session store unavailable: %s", describe(exc))
    return sessions_unavailable_page()


def sign_in_failed(exc: SignInFailed):
    if exc.already_signed_in:
        return error_page(400, "This sign-in link was already used", exc.reason,
                          action_url=url_for("index"), action_label="Continue to the home page")
    return sign_in_failed_page(exc.reason)


def sign_in_error(exc: SignInError):
    if B2C_USER_FORGOT in str(exc.result.get("error_description") or "") and (
            "B2C_RESET_PASSWORD_USER_FLOW" in current_app.extensions.get("b2c_user_flows", {})):
        return redirect(url_for("reset_password", next=exc.next_link or "/"))  # B2C's "Forgot your password?"
    if needs_consent(exc.result):  # e.g. identity's "Ungranted scope(s)"; /login checks the next link
        return consent_page(next_path=exc.next_link or "/")
    error = exc.result.get("error")
    if error in APP_CREDENTIAL_ERRORS:  # from the token endpoint: the app's own credential was refused
        logger.error("The identity provider refused the app's credential: %s: %.300s", error,
                     exc.result.get("error_description"))
        return auth_error_page(exc.result, status=502, title="The app's credential was refused",
                               app_misconfigured=True)
    status = 403 if error == "access_denied" else 400
    if status == 400:  # repr: the text comes from the query string, newlines and all
        logger.warning("Sign-in failed: %r", str(error)[:100])
    return auth_error_page(exc.result, status=status)


def id_token_rejected(exc: IdTokenRejected):
    logger.warning("Sign-in refused: %s", exc)
    session.clear()
    return error_page(400, "Sign-in refused", str(exc),
                      action_url=url_for("index"), action_label="Back to the home page")


def downstream_error(exc: DownstreamError):
    logger.warning("Downstream API error %s: %s", exc.upstream_status, exc.message)
    headers = {}
    if isinstance(exc, PermissionMissing):
        message = (f"The API refused the request: the app needs the delegated permission "
                   f"{', '.join(current_app.config['SCOPE'])}, granted by you or an administrator.")
    elif isinstance(exc, Throttled):
        headers["Retry-After"] = str(exc.retry_after)
        message = f"{api_name()} is throttling requests; try again in {exc.retry_after} s."
    else:
        message = exc.message
    page = error_page(exc.status, exc.title.format(api=api_name()), message,
                      action_url=url_for("call_downstream_api"), action_label="Try again")
    return (*page, headers)


def internal_error(exc: InternalServerError):
    request_id = uuid.uuid4().hex[:12]
    original = getattr(exc, "original_exception", None) or exc
    logger.error("Unhandled error, request id %s", request_id, exc_info=original)
    return error_page(500, "Something went wrong",
                      "The error was logged. Quote this request id if you report it.",
                      request_id=request_id)


# --- pages that views answer with directly -------------------------------------------


def sign_in_loop_page(*, reason: str, policy: bool):
    """Signing in again already happened for this and did not help: say so instead of looping."""
    if policy:
        return error_page(
            403, "Your organisation's policy could not be satisfied",
            "You signed in again as your organisation's access policy asked (for example with "
            "multi-factor authentication or from a compliant device), but access is still refused. "
            "Check with your IT administrator that your device and location meet the policy, then try again.",
            action_url=url_for("index"), action_label="Back to the home page")
    if reason == "token_rejected":
        return error_page(
            502, f"{api_name()} did not accept the access token",
            "Even a token from a new sign-in was refused, so signing in again will not help. "
            "The app registration's API permissions or the ENDPOINT setting may not match.",
            action_url=url_for("index"), action_label="Back to the home page")
    return error_page(
        502, "Signing in did not give the app a token",
        "You were just signed in, but the identity provider still gives the app no token for the API. "
        "Signing in again will not help; the app registration may need a refresh token (offline_access) "
        "or the clocks of this server and the identity provider may disagree.",
        action_url=url_for("index"), action_label="Back to the home page")


def needs_consent(result: dict) -> bool:
    """True when granting permission fixes it. Not for every invalid_scope: a misspelt SCOPE
    (AADSTS70011) is a configuration error that no consent can fix."""
    description = str(result.get("error_description") or "")
    return (result.get("error") == "consent_required" or result.get("suberror") == "consent_required"
            or "AADSTS65001" in description
            or (result.get("error") == "invalid_scope" and description.startswith(UNGRANTED_SCOPES)))


def consent_page(next_path: str):
    return render_template(
        "consent.html", scopes=current_app.config["SCOPE"],
        consent_url=url_for("login", prompt="consent", next=next_path)), 403


def auth_error_page(result: dict, *, status: int, title: str | None = None, app_misconfigured: bool = False):
    error = str(result.get("error", "unknown_error"))
    return render_template(
        "auth_error.html",
        title=title or ("Sign-in was cancelled" if error == "access_denied" else "Sign-in failed"),
        error=error,
        description=str(result.get("error_description", "")),
        app_misconfigured=app_misconfigured,
    ), status


def sign_in_failed_page(reason: str):
    return render_template(
        "error.html", status=400, title="Sign-in could not be completed", message=reason,
        action_url=url_for("login"), action_label="Try signing in again"), 400


def error_page(status: int, title: str, message: str, **extra):
    if request_ctx.url_adapter is None:
        # The Host header was unusable (or not trusted), so no URL can be built and the
        # layout cannot render: a bare page, still escaped.
        page = (f"<!doctype html><html lang=\"en\"><title>{escape(title)}</title>"
                f"<h1>{escape(title)}</h1><p>{escape(message)}</p></html>")
        return page, status
    return render_template("error.html", status=status, title=title, message=message, **extra), status


def sessions_unavailable_page():
    return (*error_page(503, "Sessions unavailable",
                        "The session store can't be reached right now, so nobody can sign in or stay "
                        "signed in. Please try again in a moment."), {"Retry-After": "5"})


def session_write_failed(response) -> None:
    """Turn a response whose session change was lost into the 503 page."""
    page, status, headers = sessions_unavailable_page()
    response.set_data(page)
    response.status_code = status
    response.headers.pop("Location", None)
    response.headers.update(headers)


def session_store_failed_this_request() -> bool:
    return g.get("session_store_error") is not None


def provider_name() -> str:
    """What pages call the identity provider ("Microsoft Entra ID", or its host name)."""
    return provider.provider_name(current_app.config)


def api_name() -> str:
    """What pages call the API, at the start of a sentence ("Microsoft Graph", "The API")."""
    name = provider.api_name(current_app.config)
    return name[:1].upper() + name[1:]


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]
