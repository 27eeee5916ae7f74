"""What every page's templates get: the filters for API answers and the layout's variables."""

from __future__ import annotations

import json

from flask import Flask, g, session

import app_config
import provider
from security import csrf_token_signed_once
from sessions import SIGNED_IN_KEY

NOT_LOOKED_UP = object()  # g.user before anybody asked identity who is signed in


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


def as_value(value) -> str:
    """Any JSON value as one line for a key/value list: nested values as compact JSON."""
    if isinstance(value, (dict, list)) and not (isinstance(value, list) and all(
            isinstance(v, (str, int, float)) for v in value)):
        try:
            return json.dumps(value, ensure_ascii=False)
        except RecursionError:
            return "(nested too deeply to show)"
    return as_text(value)


# The filters the templates use; bench/limit_app.py renders the same templates with them.
TEMPLATE_FILTERS = {"as_text": as_text, "as_value": as_value, "tojson_pretty": tojson_pretty,
                    "display_name": provider.user_display_name}
TEMPLATE_TESTS = {"graph_profile": provider.is_graph_profile}


def init_templating(app: Flask) -> None:
    app.jinja_env.filters.update(TEMPLATE_FILTERS)
    # Settings are read once: what the pages call the provider and the API, too.
    names = {
        "using_local_stand_in": app_config.uses_local_stand_in(app.config),
        "provider_name": provider.provider_name(app.config),
        "api_name": provider.api_name(app.config),
        # Azure AD B2C's user flows, when configured (b2c.py).
        "offers_edit_profile": bool(app.config.get("B2C_TENANT_NAME") and app.config.get("B2C_EDIT_PROFILE_USER_FLOW")),
        "offers_password_reset": bool(app.config.get("B2C_TENANT_NAME")
                                      and app.config.get("B2C_RESET_PASSWORD_USER_FLOW")),
        "csrf_token": csrf_token_signed_once(app),
    }
    app.jinja_env.tests.update(TEMPLATE_TESTS)

    @app.context_processor
    def layout_context():
        user = g.get("user", NOT_LOOKED_UP)
        if user is NOT_LOOKED_UP:  # a page that did not ask identity (error pages, sign-out)
            user = session.get(SIGNED_IN_KEY) if "session_store_error" not in g else None
        return {"current_user": user, **names}
