"""The app's CPU per page view beyond the limit's, in one process, with little noise.

    .venv/bin/python bench/in_process.py [rounds]

`make bench` measures what matters (throughput under gunicorn and wrk) but a change worth
0.01 ms per page view drowns in its noise. Here one user signs in against the local
stand-in, then Graph is answered from memory for both the app and the limit (the same
canned response at requests' adapter, so neither pays for TLS or the stand-in), and
`/call_downstream_api` is called straight through WSGI, alternating blocks of 1000 views
of the app and of the limit and timing each block's thread CPU. Prints the median CPU per
view of each and the gap: the cost of what the app does beyond the page's own work
(session, token look-up, hooks). Compare gaps before and after a change, in one sitting.
"""

from __future__ import annotations

import html
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urljoin

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import requests  # noqa: E402
from requests.structures import CaseInsensitiveDict  # noqa: E402
from werkzeug.test import EnvironBuilder  # noqa: E402

from live import FORM_ACTION_RE, REQUEST_ID_RE  # noqa: E402
from local_entra import USERS, StandIn  # noqa: E402

PAGE = "/call_downstream_api"
BLOCK = 1000


def signed_in_app(stand_in: StandIn):
    """The app with one user signed in through the real flow; returns (app, session cookie)."""
    from app import create_app

    config = {key: stand_in.settings[key] for key in ("CLIENT_ID", "CLIENT_SECRET", "AUTHORITY", "ENDPOINT")}
    config.update(SECRET_KEY="in-process-bench-" + "k" * 40, SESSION_FILE_DIR=tempfile.mkdtemp(),
                  LOG_LEVEL="WARNING")
    app = create_app(config)
    client = app.test_client()
    authorize = client.get("/login").headers["Location"]
    picker = requests.get(authorize, timeout=10).text
    action = urljoin(authorize, html.unescape(FORM_ACTION_RE.search(picker).group(1)))
    picked = requests.post(action, allow_redirects=False, timeout=10, data={
        "request_id": REQUEST_ID_RE.search(picker).group(1), "user_id": USERS[0]["id"]})
    callback = picked.headers["Location"].replace("http://localhost", "")
    assert client.get(callback).status_code == 302, "sign-in failed"
    assert client.get(PAGE).status_code == 200  # the token is now remembered, as in steady state
    return app, client.get_cookie("session").value


def answer_graph_from_memory(body: bytes) -> None:
    def send(adapter, request, **kwargs):
        response = requests.models.Response()
        response.status_code, response.reason, response._content = 200, "OK", body
        response.headers = CaseInsensitiveDict({"Content-Type": "application/json",
                                                "Content-Length": str(len(body))})
        response.encoding, response.url, response.request, response.connection = "utf-8", request.url, request, adapter
        return response

    requests.adapters.HTTPAdapter.send = send


def environ(cookie: str) -> dict:
    return EnvironBuilder(path=PAGE, base_url="http://localhost", headers={
        "Cookie": f"session={cookie}", "User-Agent": "in-process", "Accept": "*/*"}).get_environ()


def view(wsgi_app, env: dict) -> str:
    statuses = []
    body = wsgi_app({**env, "wsgi.input": io.BytesIO()}, lambda status, headers, exc=None: statuses.append(status))
    for _ in body:
        pass
    if hasattr(body, "close"):
        body.close()
    return statuses[0]


def cpu_ms_per_view(wsgi_app, env: dict) -> float:
    start = time.thread_time()
    for _ in range(BLOCK):
        view(wsgi_app, env)
    return (time.thread_time() - start) / BLOCK * 1000


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    with StandIn(testing=True, redirect_uris=["http://localhost/getAToken"]) as stand_in:
        os.environ["REQUESTS_CA_BUNDLE"] = stand_in.settings["REQUESTS_CA_BUNDLE"]
        app, cookie = signed_in_app(stand_in)
        token = stand_in.mint_access_token(USERS[0]["userPrincipalName"], lifetime=3600)
        graph_body = requests.get(stand_in.settings["ENDPOINT"], timeout=10,
                                  headers={"Authorization": f"Bearer {token}"}).content
        os.environ.update(ENDPOINT=stand_in.settings["ENDPOINT"], BENCH_ACCESS_TOKEN=token)
    from bench.limit_app import create_app as create_limit

    limit = create_limit()
    answer_graph_from_memory(graph_body)  # from here on, nothing leaves the process
    app_env, limit_env = environ(cookie), environ("none")
    assert view(app, app_env) == view(limit, limit_env) == "200 OK"
    for _ in range(300):  # warm-up
        view(app, app_env)
        view(limit, limit_env)
    app_ms, limit_ms = [], []
    for _ in range(rounds):
        app_ms.append(cpu_ms_per_view(app, app_env))
        limit_ms.append(cpu_ms_per_view(limit, limit_env))
    gaps = [a - b for a, b in zip(app_ms, limit_ms, strict=True)]
    print(f"CPU per view, median of {rounds} blocks of {BLOCK} (Graph answered from memory):")
    print(f"  app   {statistics.median(app_ms):.4f} ms")
    print(f"  limit {statistics.median(limit_ms):.4f} ms")
    print(f"  gap   {statistics.median(gaps):.4f} ms (blocks: {min(gaps):.4f} .. {max(gaps):.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
