"""Azure AD B2C's user flows beyond sign-in: edit profile and password reset.

Each user flow is an authority of its own (https://<B2C_DOMAIN>/<tenant>.onmicrosoft.com/<flow>),
so each gets its own `EntraAuth`, sharing the session with the sign-in one. All of them
come back to REDIRECT_PATH; the pending flow's state says which one an answer belongs to.

* Edit profile (`GET /profile/edit`): the signed-in user's claims are updated in place
  (same user only) and their tokens kept; cancelling leaves them as they were.
* Password reset (`GET /password/reset`, and B2C's "Forgot your password?", which ends the
  sign-up/sign-in flow with AADB2C90118): when it completes, the user is signed in.
"""

from __future__ import annotations

import logging

from flask import Flask, current_app, redirect, request, session, url_for

import app_config
from conditional_access import login_hint_of
from entra_auth import NoIdToken, SignInError, SignInFailed
from security import begin_signed_in_session, safe_next_path
from sessions import SIGNED_IN_KEY

logger = logging.getLogger(__name__)

EDIT_PROFILE, RESET_PASSWORD = "B2C_EDIT_PROFILE_USER_FLOW", "B2C_RESET_PASSWORD_USER_FLOW"
PENDING_FLOW_KEY = "_b2c_user_flow"  # {"state": ..., "flow": EDIT_PROFILE | RESET_PASSWORD}


def init_b2c(app: Flask, make_auth) -> None:
    """With B2C user flows configured: one `EntraAuth` per flow
    (`make_auth(authority, user_flow)`), and their routes."""
    flows = {key: make_auth(app_config.b2c_authority(app.config, key), app.config[key])
             for key in (EDIT_PROFILE, RESET_PASSWORD) if app.config.get("B2C_TENANT_NAME") and app.config.get(key)}
    app.extensions["b2c_user_flows"] = flows
    if EDIT_PROFILE in flows:
        app.add_url_rule("/profile/edit", view_func=edit_profile)
    if RESET_PASSWORD in flows:
        app.add_url_rule("/password/reset", view_func=reset_password)


def offers(flow: str) -> bool:
    return flow in current_app.extensions.get("b2c_user_flows", {})


def edit_profile():
    if session.get(SIGNED_IN_KEY) is None:
        return redirect(url_for("login", next=request.path))
    return _start(EDIT_PROFILE, scopes=[], login_hint=login_hint_of(session.get(SIGNED_IN_KEY)))


def reset_password():
    return _start(RESET_PASSWORD, scopes=current_app.config["SCOPE"])


def _start(flow: str, *, scopes, login_hint=None):
    auth = current_app.extensions["b2c_user_flows"][flow]
    started = auth.log_in(scopes=scopes, redirect_uri=url_for("auth_response", _external=True),
                          next_link=safe_next_path(request.args.get("next")), login_hint=login_hint)
    session[PENDING_FLOW_KEY] = {"state": auth.pending_state(), "flow": flow}
    return redirect(started["auth_uri"])


def answers_a_user_flow(answer: dict) -> bool:
    """Whether this callback answers an edit-profile or password-reset flow started here."""
    pending = session.get(PENDING_FLOW_KEY)
    return (isinstance(pending, dict) and offers(pending.get("flow"))
            and bool(answer.get("state")) and answer.get("state") == pending.get("state"))


def complete_user_flow(answer: dict):
    pending = session.pop(PENDING_FLOW_KEY)
    auth = current_app.extensions["b2c_user_flows"][pending["flow"]]
    try:
        if pending["flow"] == EDIT_PROFILE:
            next_link = auth.complete_sign_in(answer, same_user=True)
        else:
            next_link = auth.pending_next_link()
            try:
                next_link = auth.complete_sign_in(answer)  # a reset ends signed in, like a sign-in
            except NoIdToken:
                # A reset flow set up to issue no tokens: the password is reset, now sign in.
                logger.info("The password-reset flow ended without an id token: offering sign-in")
                return redirect(url_for("login", next=safe_next_path(next_link)))
            begin_signed_in_session()
    except SignInFailed:
        # A damaged or forged callback changed nothing: the genuine one can still complete
        # this flow (its code belongs to this flow's token endpoint, not the sign-in's).
        session[PENDING_FLOW_KEY] = pending
        raise
    except SignInError as refused:
        if pending["flow"] == EDIT_PROFILE and refused.result.get("error") == "access_denied":
            # Cancelled: nothing changed, they are signed in as before.
            return redirect(safe_next_path(refused.next_link))
        raise
    return redirect(safe_next_path(next_link))
