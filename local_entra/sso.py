"""The browser's sign-in session at the stand-in, and the hints that name its user.

Entra ID remembers who signed in on its own origin (a cookie): its ``sid`` goes
into the id tokens, and the end-session endpoint knows whom to sign out and
which apps to tell (front-channel logout). The stand-in keeps one such session
per browser. A ``login_hint`` (the id token claim, handed back by the app) names
the user, so neither sign-in nor sign-out needs to ask which account.
"""

import json

from flask import request

from .tokens import b64url
from .users import USERS

SESSION_COOKIE = "local_entra_session"


def login_hint(user_id, tenant_id):
    """The ``login_hint`` claim: opaque to apps, which only hand it back (as login_hint or logout_hint)."""
    return b64url(json.dumps({"oid": user_id, "tid": tenant_id}, separators=(",", ":")).encode())


def user_for_hint(hint, tenant_id):
    """The user a ``login_hint`` names: the stand-in's own hint value, or a UPN; else None."""
    if not hint:
        return None
    for user in USERS:
        if hint == login_hint(user["id"], tenant_id) or hint.lower() == user["userPrincipalName"].lower():
            return user
    return None


def current(standin):
    """(cookie, session) of this browser, or (cookie, None) when it has no live session."""
    cookie = request.cookies.get(SESSION_COOKIE)
    return cookie, standin.store.browser_session(cookie)


def session_for(standin, user):
    """(cookie, session) signed in as ``user``: the browser's own, or a new one.

    One account per browser here: signing in as someone else replaces the
    session (Entra would keep both and ask which one to use).
    """
    cookie, session = current(standin)
    if session is not None and session["user_id"] == user["id"]:
        return cookie, session
    if session is not None:
        standin.store.end_browser_session(cookie)
    return standin.store.start_browser_session(user["id"])


def remember(response, cookie):
    # Lax: sent on the top-level navigations that bring a browser here (authorize,
    # end-session), withheld from cross-site form posts that would end the session.
    response.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="Lax", path="/")


def forget(response):
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="Lax", path="/")
