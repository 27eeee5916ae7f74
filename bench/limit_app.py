"""The "limit" of `/call_downstream_api`: what the page costs with nothing but its real work.

The same Graph call (`GET ENDPOINT` with a bearer token, through one pooled
`requests.Session` per process), the same JSON parsing and the same template
(`templates/display.html` and `base.html`, rendered for a signed-in user so the
sign-out form is rendered too). No session, no MSAL, no CSRF signing, no per-request
configuration look-ups: the token is fixed (minted by the stand-in for longer than the
run, passed in BENCH_ACCESS_TOKEN) and so is everything else.

Served by `gunicorn -c gunicorn.conf.py 'bench.limit_app:create_app()'`, with the same
workers and worker class as the app, so the app/limit ratio is the cost of everything the
app does beyond the work the page cannot avoid.
"""

from __future__ import annotations

import os
from pathlib import Path

import requests
from flask import Flask, render_template
from requests.adapters import HTTPAdapter

from security import SECURITY_HEADERS as APP_SECURITY_HEADERS
from templating import TEMPLATE_FILTERS, TEMPLATE_TESTS

ROOT = Path(__file__).resolve().parent.parent

# The same headers the app sends (a fixed dict, set once per response).
SECURITY_HEADERS = {**APP_SECURITY_HEADERS, "Cache-Control": "no-store"}

# The signed-in user shown in the header (the claims the app reads from its session).
USER = {"name": os.environ.get("BENCH_USER_NAME", "Priya Raman"),
        "preferred_username": os.environ.get("BENCH_USER_UPN", "priya.raman@contoso.example")}
# As long as Flask-WTF's signed token, so the page has the same size.
FIXED_CSRF_TOKEN = "I" * 91


def create_app() -> Flask:
    endpoint = os.environ["ENDPOINT"]
    token = os.environ["BENCH_ACCESS_TOKEN"]
    pool_size = int(os.environ.get("DOWNSTREAM_POOL_SIZE") or 16)

    app = Flask(__name__, root_path=str(ROOT), template_folder="templates", static_folder="static")
    app.config["ENDPOINT"] = endpoint

    http = requests.Session()
    # Read once here (the CA of the stand-in), not from the environment per request.
    http.trust_env = False
    http.verify = os.environ.get("REQUESTS_CA_BUNDLE") or True
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    http.mount("https://", adapter)
    http.mount("http://", adapter)
    graph_headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    app.jinja_env.filters.update(TEMPLATE_FILTERS)  # the app's own filters and tests, for the same pages
    app.jinja_env.tests.update(TEMPLATE_TESTS)

    context = {"current_user": USER, "using_local_stand_in": True, "csrf_token": lambda: FIXED_CSRF_TOKEN,
               "provider_name": "Microsoft Entra ID", "api_name": "Microsoft Graph"}

    @app.context_processor
    def layout_context():
        return context

    @app.get("/")
    def index():
        return "index"

    @app.get("/login")
    def login():
        return "login"

    @app.post("/logout")
    def logout():
        return "logout"

    @app.get("/call_downstream_api")
    def call_downstream_api():
        response = http.get(endpoint, headers=graph_headers, timeout=(3.05, 10))
        if response.status_code != 200:
            return f"Graph answered {response.status_code}", 502
        profile = response.json()
        return render_template("display.html", user=USER, profile=profile), 200, SECURITY_HEADERS

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app
