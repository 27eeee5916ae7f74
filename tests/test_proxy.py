"""The recommended deployment against slow clients (issue 15): nginx in front of gunicorn.

gunicorn's gthread worker waits a bounded time for a request's first byte, then reads the
headers with no time limit: connections that never end their headers hold its threads, and
even `/healthz` stops answering. The README's defence is a buffering nginx in front. These
tests run the README's own server block (only its addresses and certificate paths changed)
with Debian's nginx on free loopback ports, in front of gunicorn with this repo's
gunicorn.conf.py; and they check the bind that gunicorn.conf.py chooses.

Without nginx the nginx tests skip with a reason on a laptop and fail under CI=true.
"""

from __future__ import annotations

import contextlib
import os
import re
import runpy
import select
import shutil
import signal
import socket
import ssl
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest
import requests
from gunicorn.config import Config

from live import IN_CI, ROOT, AppServer, TlsFiles, start_on_a_free_port, wait_for

# Debian installs nginx in /usr/sbin, which is not on a non-root PATH.
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")

SLOW_CLIENTS = 64
PROBES = 5
# What a health probe (a load balancer's, App Service's) typically allows before it calls
# the instance down; every probe must answer well inside it.
PROBE_BUDGET = 1.0
DRIP_INTERVAL = 1.0
BODY_LIMIT = 16 * 1024  # the app's MAX_CONTENT_LENGTH


def unavailable(reason: str):
    """A missing nginx is a skip on a laptop, but a failure in CI, where it must be there."""
    if IN_CI:
        pytest.fail(f"{reason} (required under CI)", pytrace=False)
    pytest.skip(reason)


# --- the README's server block, made runnable on loopback --------------------------------


def readme_server_block() -> str:
    blocks = re.findall(r"```nginx\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert len(blocks) == 1, "README.md should hold exactly one ```nginx server block (Deploying)"
    return textwrap.dedent(blocks[0])


def runnable_server_block(*, port: int, upstream_port: int, tls: TlsFiles) -> str:
    """The README's block with only its addresses and certificate paths changed.

    Each pattern must match exactly once: a README edit that moves them makes this test
    fail loudly rather than quietly test a different block.
    """
    block = readme_server_block()
    for pattern, replacement in (
        (r"listen\s+443\s+ssl\s*;", f"listen 127.0.0.1:{port} ssl;"),
        (r"ssl_certificate\s+\S+\s*;", f"ssl_certificate {tls.cert};"),
        (r"ssl_certificate_key\s+\S+\s*;", f"ssl_certificate_key {tls.key};"),
        (r"proxy_pass\s+http://127\.0\.0\.1:8000\s*;", f"proxy_pass http://127.0.0.1:{upstream_port};"),
    ):
        block, count = re.subn(pattern, lambda _m, r=replacement: r, block)
        assert count == 1, f"the README's nginx block should match {pattern!r} once, not {count} times"
    return block


def directive_seconds(name: str) -> int:
    match = re.search(rf"^\s*{name}\s+(\d+)s\s*;", readme_server_block(), re.MULTILINE)
    assert match, f"the README's nginx block should set {name} in seconds"
    return int(match.group(1))


def nginx_conf(prefix: Path, server_block: str) -> str:
    """A whole nginx.conf around the server block that runs as a plain foreground process:
    no service, every file it writes inside `prefix`."""
    # As root nginx switches its workers to an unprivileged user, who could not open the
    # temporary directories under pytest's (root-only) tmp_path.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp_paths = "".join(f"    {kind}_temp_path {prefix / kind};\n"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (
        f"{user}daemon off;\n"
        "worker_processes 1;\n"  # one worker is enough to hold every slow client
        f"pid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} info;\n"
        "events { worker_connections 768; }\n"  # Debian's default nginx.conf
        "http {\n"
        f"    access_log {prefix / 'access.log'};\n"
        f"{temp_paths}"
        f"{textwrap.indent(server_block, '    ')}"
        "}\n"
    )


class Nginx:
    def __init__(self, workdir: Path, upstream_port: int, tls: TlsFiles):
        self.prefix = Path(workdir)
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.upstream_port, self.tls = upstream_port, tls
        self.conf = self.prefix / "nginx.conf"
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    def command(self) -> list[str]:
        # -e: nginx opens its compiled-in error log before it reads the config.
        return [NGINX, "-p", str(self.prefix), "-c", str(self.conf), "-e", str(self.prefix / "error.log")]

    def write_conf(self, port: int) -> None:
        block = runnable_server_block(port=port, upstream_port=self.upstream_port, tls=self.tls)
        self.conf.write_text(nginx_conf(self.prefix, block))

    def start(self) -> Nginx:
        # A config mistake shows as itself here, not as "could not bind a port" below
        # (`nginx -t` binds nothing, so any port number does).
        self.write_conf(1)
        checked = subprocess.run([*self.command(), "-t"], check=False, capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, f"nginx -t refused the README's block:\n{checked.stderr}"

        def start(port):
            self.write_conf(port)
            log = open(self.prefix / "nginx.out", "ab")  # noqa: SIM115 (kept open for the process's life)
            try:
                return subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            finally:
                log.close()

        def answers(port):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return True
            except OSError:
                return False

        self.process, self.port = start_on_a_free_port(start, answers, what="nginx")
        return self

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: nginx's fast shutdown, workers included
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture(scope="module")
def front(stand_in, tmp_path_factory):
    """gunicorn (this repo's gunicorn.conf.py, one gthread worker of 4 threads, PROXY_COUNT=1)
    behind nginx running the README's server block over TLS."""
    if NGINX is None:
        unavailable("nginx not found: apt-get install nginx")
    workdir = tmp_path_factory.mktemp("proxy")
    tls = TlsFiles.for_loopback(workdir)
    app = AppServer(stand_in, workdir / "app", name="behind-nginx", workers=1, threads=4,
                    env={"PROXY_COUNT": "1"}).start()
    nginx = Nginx(workdir / "nginx", app.port, tls)
    try:
        nginx.start()
        yield nginx
    finally:
        nginx.stop()
        app.stop()


@pytest.fixture(scope="module")
def bare_gunicorn(stand_in, tmp_path_factory):
    """The same gunicorn as behind nginx, with nothing in front of it."""
    with AppServer(stand_in, tmp_path_factory.mktemp("bare-gunicorn"), name="bare", workers=1,
                   threads=4) as app:
        yield app


# --- slow clients ---------------------------------------------------------------------------


class SlowClients:
    """Connections that send a request line and a Host header, then one more header line
    every `interval` seconds from a background thread, and never end their headers."""

    def __init__(self, port: int, count: int, *, ssl_context: ssl.SSLContext | None = None,
                 interval: float = DRIP_INTERVAL, max_rounds: int = 60):
        self.port, self.count, self.ssl_context = port, count, ssl_context
        self.interval, self.max_rounds = interval, max_rounds
        self.sockets: list[socket.socket] = []
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drip, name="slow-clients", daemon=True)

    def __enter__(self) -> SlowClients:
        try:
            for _ in range(self.count):
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                self.sockets.append(sock)
                if self.ssl_context is not None:
                    sock = self.ssl_context.wrap_socket(sock, server_hostname="127.0.0.1")
                    self.sockets[-1] = sock
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            self._thread.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _drip(self):
        while self.rounds < self.max_rounds and not self._stop.wait(self.interval):
            for n, sock in enumerate(self.sockets):
                with contextlib.suppress(OSError):  # dropped by the server: nothing more to send
                    sock.sendall(f"X-Slow-{n}: {self.rounds}\r\n".encode())
            self.rounds += 1

    def wait_rounds(self, rounds: int) -> None:
        wait_for(lambda: self.rounds >= rounds, timeout=rounds * self.interval + 5, what=f"{rounds} drip rounds")

    def still_waiting(self) -> int:
        """How many the server still holds open without a word: not answered, not closed."""
        # Readable means an answer or an end of stream: either way no longer waiting.
        readable, _, _ = select.select(self.sockets, [], [], 0)
        return len(self.sockets) - len(readable)

    def close(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


def probe(url: str, verify) -> float:
    """GET /healthz on a new connection; the seconds it took. Fails the test on no answer."""
    started = time.perf_counter()
    try:
        response = requests.get(f"{url}/healthz", timeout=PROBE_BUDGET, verify=verify)
    except requests.RequestException as exc:
        pytest.fail(f"/healthz did not answer within {PROBE_BUDGET} s: {exc!r}")
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text[:300]
    return elapsed


def tls_client_context(tls: TlsFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls.ca))


# --- the defence ----------------------------------------------------------------------------


@pytest.mark.real
@pytest.mark.slow
def test_slow_header_clients_do_not_starve_the_app_behind_nginx(front):
    with SlowClients(front.port, SLOW_CLIENTS, ssl_context=tls_client_context(front.tls)) as clients:
        clients.wait_rounds(1)  # every client is past its first bytes, as in the finding
        latencies = []
        for n in range(PROBES):
            latencies.append(probe(front.url, verify=str(front.tls.ca)))
            clients.wait_rounds(2 + n)  # one probe per header line: spread over the whole hang
        held = clients.still_waiting()
    print(f"\n/healthz through nginx under {SLOW_CLIENTS} slow-header clients: "
          + ", ".join(f"{1000 * s:.1f} ms" for s in latencies))
    assert max(latencies) < PROBE_BUDGET
    # They were held open, not refused: the probes answered *while* they hung on.
    assert held == SLOW_CLIENTS, f"only {held} of {SLOW_CLIENTS} slow clients were still connected"


@pytest.mark.real
@pytest.mark.slow
def test_nginx_drops_clients_that_never_finish_their_headers(front):
    header_timeout = directive_seconds("client_header_timeout")
    assert header_timeout <= 60, "a client may hold a connection for at most a minute"
    started = time.monotonic()
    with SlowClients(front.port, 8, ssl_context=tls_client_context(front.tls),
                     max_rounds=header_timeout + 10) as clients:
        wait_for(lambda: clients.still_waiting() == 0, timeout=header_timeout + 10, interval=0.2,
                 what="nginx to drop the slow clients")
        dropped_after = time.monotonic() - started
    print(f"\nnginx dropped slow-header clients after {dropped_after:.1f} s "
          f"(client_header_timeout {header_timeout}s)")
    # Dropped for taking too long, though each kept sending: not for something else.
    assert dropped_after >= header_timeout - 1
    probe(front.url, verify=str(front.tls.ca))


@pytest.mark.real
@pytest.mark.slow
def test_without_a_proxy_sixteen_slow_header_clients_starve_gunicorn(bare_gunicorn):
    """Why the proxy is there: the same clients straight at gunicorn hold all of its threads."""
    with SlowClients(bare_gunicorn.port, 16) as clients:
        clients.wait_rounds(1)
        with pytest.raises(requests.Timeout):
            requests.get(f"{bare_gunicorn.url}/healthz", timeout=PROBE_BUDGET)
    # Their threads come back when they go away.
    def answers():
        try:
            return requests.get(f"{bare_gunicorn.url}/healthz", timeout=PROBE_BUDGET).status_code == 200
        except requests.RequestException:
            return False

    wait_for(answers, timeout=10, what="gunicorn to answer again")


# --- the rest of the README's block -----------------------------------------------------------


@pytest.mark.real
def test_readme_nginx_block_passes_the_scheme_and_host_that_proxy_count_1_trusts(front):
    response = requests.get(f"{front.url}/login", allow_redirects=False, timeout=10,
                            verify=str(front.tls.ca))
    assert response.status_code == 302
    # The redirect URI is built from X-Forwarded-Proto and X-Forwarded-Host (port kept).
    assert f"redirect_uri=https%3A%2F%2F127.0.0.1%3A{front.port}%2FgetAToken" in response.headers["Location"]
    assert "Secure" in response.headers["Set-Cookie"]


@pytest.mark.real
def test_nginx_refuses_bodies_over_the_apps_limit_and_passes_one_at_it(front):
    def post(size: int) -> requests.Response:
        return requests.post(f"{front.url}/logout", data=b"x" * size, timeout=10, verify=str(front.tls.ca),
                             headers={"Content-Type": "application/x-www-form-urlencoded"},
                             allow_redirects=False)

    # The app puts a Content-Security-Policy on every answer; nginx's own pages have none.
    too_big = post(BODY_LIMIT + 1)
    assert too_big.status_code == 413 and "Content-Security-Policy" not in too_big.headers  # nginx said no
    at_limit = post(BODY_LIMIT)
    assert "Content-Security-Policy" in at_limit.headers, at_limit.text[:300]  # it reached the app...
    assert at_limit.status_code != 413  # ...which takes as much as nginx lets through


# --- gunicorn.conf.py's bind ---------------------------------------------------------------


@pytest.mark.parametrize(("env", "expected"), [
    ({}, ["127.0.0.1:8000"]),
    ({"PORT": "8181"}, ["0.0.0.0:8181"]),  # Azure App Service
    ({"PORT": "8181", "BIND": "127.0.0.1:9000"}, ["127.0.0.1:9000"]),
    ({"PORT": "8181", "BIND": "127.0.0.1:9000", "GUNICORN_BIND": "10.0.0.5:80"}, ["10.0.0.5:80"]),
    ({"GUNICORN_BIND": "127.0.0.1:8000, [::1]:8000"}, ["127.0.0.1:8000", "[::1]:8000"]),
], ids=["loopback-by-default", "port-alone-is-every-interface", "bind-wins-over-port",
        "gunicorn-bind-wins", "several-addresses"])
def test_gunicorn_listens_on_loopback_unless_the_environment_says_otherwise(monkeypatch, env, expected):
    for key in ("GUNICORN_BIND", "BIND", "PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    bind = runpy.run_path(str(ROOT / "gunicorn.conf.py"))["bind"]
    config = Config()
    config.set("bind", bind)  # what gunicorn itself makes of it
    assert config.bind == expected
