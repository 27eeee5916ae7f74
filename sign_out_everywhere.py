"""Sign-out from anywhere: OpenID Connect Front-Channel Logout 1.0.

When a user signs out of another app of their tenant (or of the identity provider itself),
the provider's signed-out page loads every app's front-channel logout URL in a hidden
iframe, with the `sid` of that sign-in (Entra ID: `sid` alone; other providers add `iss`).
That request carries no cookie of ours (it comes from the provider's page: SameSite=Lax),
so the sessions to end are found server-side, through an index `sid -> session ids` kept
in the session store itself (`sid_index.py`): written whenever a signed-in session is
written, expiring with it, removed at sign-out.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

from flask import current_app, render_template, request

import errors
import provider
from sessions import STORE_ERRORS

logger = logging.getLogger(__name__)

# What a sid or an issuer may look like: Entra's sid is a GUID; other providers use opaque
# tokens. Anything else (control characters, huge values) is refused before any look-up.
SID_PATTERN = re.compile(r"[A-Za-z0-9._~:/+=@-]{1,256}")
MAX_ISSUER_LENGTH = 2048


def frontchannel_logout():
    """GET FRONTCHANNEL_LOGOUT_PATH?sid=<sid>[&iss=<issuer>]: end every session of this app
    that the provider session `sid` signed in. Unknown sid: nothing to do (200)."""
    sid, iss = request.args.get("sid"), request.args.get("iss")
    if sid is None:
        return _answer(400, "No session was named (sid is missing).")
    if len(request.args.getlist("sid")) > 1 or not SID_PATTERN.fullmatch(sid) or (
            iss is not None and not _is_issuer(iss)):
        return _answer(400, "The sign-out request is malformed.")
    try:
        ended = current_app.session_interface.end_sessions_of(
            sid, iss, on_session=current_app.extensions["auth"].forget_tokens_of)
    except STORE_ERRORS as exc:
        logger.error("Front-channel logout: session store unavailable: %s", errors.describe(exc))
        return errors.sessions_unavailable_page()
    logger.info("Front-channel logout: %d session(s) ended", ended)
    return _answer(200, "You are signed out of this app.")


def _is_issuer(value: str) -> bool:
    if len(value) > MAX_ISSUER_LENGTH or not value.isprintable() or " " in value:
        return False
    try:
        parts = urlsplit(value)
        return parts.scheme == "https" and bool(parts.hostname)
    except ValueError:  # e.g. "https://[": not a URL at all
        return False


def _answer(status: int, message: str):
    return render_template("frontchannel_logout.html", message=message), status


def frame_ancestors(config, discovery: dict | None) -> str:
    """The origins allowed to frame the front-channel route: the authority's, and the
    end-session endpoint's (where the provider's signed-out page lives, the same origin at
    Entra ID)."""
    authority = provider.authority_url(config)
    origins = []
    for url in (authority, (discovery or {}).get("end_session_endpoint")):
        parts = urlsplit(url or "")
        if isinstance(url, str) and parts.scheme in ("https", "http") and parts.netloc:
            origin = f"{parts.scheme}://{parts.netloc}"
            if origin not in origins:
                origins.append(origin)
    return " ".join(origins) or "'none'"
