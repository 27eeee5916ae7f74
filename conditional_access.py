"""Conditional Access, Continuous Access Evaluation (CAE), and the guard against sign-in loops.

A real tenant's policies reach the app in two shapes:

* Graph (for a client that declared the `cp1` capability) revokes access in near real
  time and answers 401 with a claims challenge in `WWW-Authenticate` (CAE);
* a token refresh answers `interaction_required` with `claims` (a policy now wants MFA or
  a compliant device: step-up).

Either way the app first asks for a token silently with the challenge (MSAL sends it,
merged with the capabilities, in the refresh request's `claims`), and if that needs the
user, sends them to sign in again with the claims and their login hint (no account
picker), back to the page that needed it.

Every "sign in again" goes through `sign_in_again`, which keeps a short trail of them in
the session: a browser is sent to sign in at most twice in `LOOP_WINDOW_SECONDS` for the
same page, and never again for the same reason right after a sign-in that carried it.
After that it gets a page that says what is wrong, instead of a redirect loop.
"""

from __future__ import annotations

import hashlib
import logging
import time

from flask import current_app, redirect, request, session, url_for

import errors
from sessions import SIGNED_IN_AT_KEY, SIGNED_IN_KEY

logger = logging.getLogger(__name__)

# Token errors that a new interactive sign-in fixes.
SIGN_IN_AGAIN_ERRORS = {"interaction_required", "invalid_grant", "login_required", "no_account"}
TRAIL_KEY = "_sign_in_trail"  # in the session; carried across the sign-in it leads to
LOOP_WINDOW_SECONDS = 300
MAX_SIGN_INS_PER_PAGE = 2


def login_hint_of(user: dict | None) -> str | None:
    """What to tell the identity provider about who is signing in again: the id token's
    `login_hint` claim (Entra's optional claim, opaque), else `preferred_username`, else an
    email address (Azure AD B2C's `emails`)."""
    user = user or {}
    emails = user.get("emails") if isinstance(user.get("emails"), list) else []
    for value in (user.get("login_hint"), user.get("preferred_username"), user.get("email"), *emails[:1]):
        if isinstance(value, str) and value:
            return value
    return None


def answer_token_error(result: dict, *, claims: str | None = None):
    """The answer to `get_token_for_user` returning an error instead of a token. `claims`:
    the challenge that token was asked for with, if any."""
    error = result.get("error", "")
    if errors.needs_consent(result):
        return errors.consent_page(next_path=request.path)
    if error in SIGN_IN_AGAIN_ERRORS:
        # Conditional Access step-up names the claims the new sign-in must carry.
        step_up = result.get("claims") if isinstance(result.get("claims"), str) else None
        return sign_in_again(reason="claims" if (step_up or claims) else error, claims=step_up or claims)
    logger.warning("Token request failed: %s", error)
    return errors.auth_error_page(result, status=502, title=f"{errors.provider_name()} did not issue a token")


# --- sending the browser to sign in again, at most so often ---------------------------


def sign_in_again(*, reason: str, claims: str | None = None):
    """Send the browser to sign in again for the current page, with `claims` (a challenge)
    and the signed-in user's login hint; or, if that would be a loop, the page saying why.

    `reason` names what needs the sign-in ("token_rejected", "interaction_required",
    "claims"), for the log and the page. A page gets at most MAX_SIGN_INS_PER_PAGE sign-ins
    in LOOP_WINDOW_SECONDS; a claims challenge that comes back right after a sign-in that
    carried it is a policy the user cannot satisfy by signing in again.
    """
    path = request.path
    now = time.time()
    challenge = _fingerprint(claims) if claims else None
    trail = [entry for entry in session.get(TRAIL_KEY) or []
             if isinstance(entry, list) and len(entry) == 3 and now - entry[0] < LOOP_WINDOW_SECONDS]
    # Only sign-ins that were completed count: a browser sent to sign in that came back
    # without doing so (Back, a closed tab) has not tried anything yet.
    signed_in_at = session.get(SIGNED_IN_AT_KEY, 0)
    for_this_page = [entry for entry in trail if entry[1] == path and signed_in_at >= entry[0]]
    same_challenge_again = challenge is not None and any(entry[2] == challenge for entry in for_this_page)
    if same_challenge_again or len(for_this_page) >= MAX_SIGN_INS_PER_PAGE:
        logger.warning("Sign-in loop stopped for %s: %s, although signing in again just happened", path, reason)
        session[TRAIL_KEY] = trail
        return errors.sign_in_loop_page(reason=reason, policy=claims is not None)
    session[TRAIL_KEY] = [*trail, [now, path, challenge]]
    auth = current_app.extensions["auth"]
    flow = auth.log_in(
        scopes=current_app.config["SCOPE"],
        redirect_uri=url_for("auth_response", _external=True),
        next_link=path,
        login_hint=login_hint_of(session.get(SIGNED_IN_KEY)),  # also when its id token expired
        claims_challenge=claims,
    )
    return redirect(flow["auth_uri"])


def _fingerprint(claims: str) -> str:
    # A digest, not the claims: the session keeps no more of a challenge than it needs.
    return hashlib.sha256(claims.encode()).hexdigest()[:16]
