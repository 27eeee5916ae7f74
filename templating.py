"""What every page's templates get: the filters for API answers and the layout's variables."""

from __future__ import annotations

import json

from flask import Flask, g, session

import app_config
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


# The filters the templates use; bench/limit_app.py renders the same templates with them.
TEMPLATE_FILTERS = {"as_text": as_text, "tojson_pretty": tojson_pretty}


def init_templating(app: Flask) -> None:
    app.jinja_env.filters.update(TEMPLATE_FILTERS)
    using_local_stand_in = app_config.uses_local_stand_in(app.config)  # settings are read once
    csrf_token = csrf_token_signed_once(app)

    @app.context_processor
    def layout_context():
        user = g.get("user", NOT_LOOKED_UP)
        if user is NOT_LOOKED_UP:  # a page that did not ask identity (error pages, sign-out)
            user = session.get(SIGNED_IN_KEY) if "session_store_error" not in g else None
        return {"current_user": user, "using_local_stand_in": using_local_stand_in, "csrf_token": csrf_token}
