"""Real parts for the real-protocol, browser and scale-out tiers.

`AppServer` runs the app under gunicorn in a subprocess on a free loopback port (http, or
https with `TlsFiles`), pointed at the local stand-in over TLS; `WebUser` is a person with
a browser's cookie jar who signs in by picking an account on the stand-in's page;
`RedisServer` is Debian's redis-server on a free port in a temporary directory.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
SECRET_KEY = "live-tier-secret-key-0123456789abcdefghijklmnopqrstuvwxyz"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Debian's Chromium (Playwright's own browser download does not work here), with the flags
# that keep it from reaching beyond this machine on its own.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]


BROWSER_ARTIFACTS = ROOT / "test-artifacts" / "browser"  # screenshots, kept by CI as artifacts
PAGE_TIMEOUT_MS = 15_000  # generous: a wait, never a measurement


@contextlib.contextmanager
def browser_page(browser, base_url: str, **context_options):
    """A page in a fresh browser context (its own cookie jar) on `base_url`."""
    context = browser.new_context(viewport={"width": 1100, "height": 800}, base_url=base_url, locale="en-US",
                                  **context_options)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(page, name: str, folder: Path = BROWSER_ARTIFACTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    return path


def unavailable(reason: str):
    """A missing browser or server is a skip on a laptop, but a failure in CI, where it must be there."""
    import pytest

    if IN_CI:
        pytest.fail(f"{reason} (required under CI)", pytrace=False)
    pytest.skip(reason)


def listening_socket(port: int = 0) -> socket.socket:
    """A listening loopback socket (port 0: the kernel picks a free one). Handed to gunicorn
    as a file descriptor, so that no other process can take the port in between."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def closed_port() -> tuple[socket.socket, int]:
    """A port on which nothing listens, reserved while the socket is open: connecting to a
    bound socket that does not listen is refused, and nobody else can bind it meanwhile."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


def start_on_a_free_port(start, answers, *, what: str, tries: int = 5):
    """Start a server that can only be told a port number (redis-server): `start(port)`
    returns its process; if it exits before `answers(port)` (the port was taken between
    choosing and binding), try again on another port."""
    for _ in range(tries):
        sock, port = closed_port()
        sock.close()
        process = start(port)

        def up(process=process, port=port):
            if process.poll() is not None:
                return "exited"
            return answers(port)

        if wait_for(up, timeout=10, what=what) != "exited":
            return process, port
    raise RuntimeError(f"{what} could not bind a port in {tries} tries")


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path

    @classmethod
    def for_loopback(cls, directory: Path) -> TlsFiles:
        """A throwaway CA and a server certificate for 127.0.0.1 and localhost."""
        import trustme

        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        files = cls(directory / "server.crt", directory / "server.key", directory / "ca.crt")
        files.cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
        server.private_key_pem.write_to_path(str(files.key))
        ca.cert_pem.write_to_path(str(files.ca))
        return files


class AppServer:
    """`gunicorn 'app:create_app()'` with this repo's gunicorn.conf.py, on 127.0.0.1."""

    def __init__(self, stand_in, workdir: Path, *, name: str = "app", workers: int = 1, threads: int = 4,
                 worker_class: str = "gthread", env: dict | None = None, port: int | None = None,
                 app_spec: str = "app:create_app()", config: Path = ROOT / "gunicorn.conf.py",
                 tls: TlsFiles | None = None):
        self.stand_in = stand_in
        self.name = name
        self._listener: socket.socket | None = listening_socket(port or 0)
        self.port = self._listener.getsockname()[1]
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{name}.log"
        self.workers, self.threads, self.worker_class = workers, threads, worker_class
        self.extra_env = env or {}
        self.app_spec, self.config = app_spec, Path(config)
        self.process: subprocess.Popen | None = None
        stand_in.register_redirect_uri(f"{self.url}/getAToken")

    def environment(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIENT_", "AUTHORITY", "OIDC_", "B2C_"))}
        env.update({k: v for k, v in self.stand_in.settings.items() if isinstance(v, str)})
        env.update({
            "SECRET_KEY": SECRET_KEY,
            "SESSION_FILE_DIR": str(self.workdir / "sessions"),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        })
        return env

    def start(self) -> AppServer:
        if self._listener is None:  # a restart: the same address, bound again
            self._listener = listening_socket(self.port)
        command = [
            sys.executable, "-m", "gunicorn", "-c", str(self.config),
            "--bind", f"fd://{self._listener.fileno()}", "--workers", str(self.workers),
            "--threads", str(self.threads), "--worker-class", self.worker_class,
            self.app_spec,
        ]
        if self.tls:
            command[-1:-1] = ["--certfile", str(self.tls.cert), "--keyfile", str(self.tls.key)]
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the process's life)
        self.process = subprocess.Popen(command, cwd=ROOT, env=self.environment(), stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        pass_fds=(self._listener.fileno(),))
        log.close()
        # gunicorn has the socket now; without our copy, a stopped server's port refuses.
        self._listener.close()
        self._listener = None

        def answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-3000:]}")
            try:
                verify = str(self.tls.ca) if self.tls else True
                return requests.get(f"{self.url}/healthz", timeout=2, verify=verify).status_code in (200, 503)
            except requests.RequestException:
                return False

        wait_for(answers, timeout=60, what=f"{self.name} to answer")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Die like a machine that lost power: no graceful shutdown."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
FORM_ACTION_RE = re.compile(r'<form method="post" action="([^"]+)"')
REQUEST_ID_RE = re.compile(r'name="request_id" value="([^"]+)"')


class WebUser:
    """A person with a browser: a cookie jar, following the same redirects a browser would."""

    def __init__(self, app_url: str):
        self.app_url = app_url
        self.http = requests.Session()
        self.codes_seen: list[str] = []

    def get(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("allow_redirects", False)
        kwargs.setdefault("timeout", 30)
        return self.http.get(urljoin(self.app_url, path), **kwargs)

    def start_sign_in(self, next_path: str | None = None) -> tuple[str, str, str]:
        """GET /login and the stand-in's account picker: (form action, request id, authorize URL)."""
        response = self.get("/login", params={"next": next_path} if next_path else None)
        assert response.status_code == 302, response.text[:500]
        authorize_url = response.headers["Location"]
        picker = self.http.get(authorize_url, timeout=30)
        assert picker.status_code == 200, picker.text[:500]
        action = html.unescape(FORM_ACTION_RE.search(picker.text).group(1))
        request_id = REQUEST_ID_RE.search(picker.text).group(1)
        return urljoin(authorize_url, action), request_id, authorize_url

    def pick(self, action: str, request_id: str, choice: dict) -> str:
        """Submit the picker; return the callback URL the stand-in sends the browser to."""
        response = self.http.post(action, data={"request_id": request_id, **choice},
                                  allow_redirects=False, timeout=30)
        assert response.status_code in (302, 303), response.text[:500]
        callback = response.headers["Location"]
        self.codes_seen += parse_qs(urlsplit(callback).query).get("code", [])
        return callback

    def sign_in(self, user: dict, next_path: str | None = None, callback_base: str | None = None):
        """Sign in as `user` (one of local_entra.USERS). Returns the callback's response.

        `callback_base` lands the callback on another instance (a load balancer would).
        """
        action, request_id, _ = self.start_sign_in(next_path)
        callback = self.pick(action, request_id, {"user_id": user["id"]})
        if callback_base:
            parts = urlsplit(callback)
            callback = f"{callback_base}{parts.path}?{parts.query}"
        return self.http.get(callback, allow_redirects=False, timeout=30)

    def cancel_sign_in(self):
        action, request_id, _ = self.start_sign_in()
        callback = self.pick(action, request_id, {"cancel": "1"})
        return self.http.get(callback, allow_redirects=False, timeout=30)

    def csrf_token(self) -> str:
        match = CSRF_RE.search(self.get("/").text)
        assert match, "no sign-out form: not signed in?"
        return match.group(1)

    def sign_out(self) -> requests.Response:
        return self.http.post(urljoin(self.app_url, "/logout"), data={"csrf_token": self.csrf_token()},
                              allow_redirects=False, timeout=30)

    def is_signed_in(self, app_url: str | None = None) -> bool:
        return "Signed in as" in self.http.get(urljoin(app_url or self.app_url, "/"), timeout=30).text


class RedisServer:
    """Debian's redis-server on a free loopback port, data in a temporary directory."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self) -> RedisServer:
        def start(port):
            return subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                 "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def answers(port):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        if self.port is None:
            self.process, self.port = start_on_a_free_port(start, answers, what="redis-server")
        else:  # the same address again (a restart)
            self.process = start(self.port)
            wait_for(lambda: answers(self.port), timeout=10, what="redis-server")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


# --- Conditional Access and sign-out everywhere (test_policies_real, test_sign_out_everywhere_real) ---

IFRAME_SRC_RE = re.compile(r'<iframe\b[^>]*\bsrc="([^"]+)"')


def query_of(url: str) -> dict[str, str]:
    """A URL's query parameters, the first value of each."""
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


def iframe_sources(page_html: str) -> list[str]:
    """The src of every iframe of a page, as a browser would load them."""
    return [html.unescape(src) for src in IFRAME_SRC_RE.findall(page_html)]


def follow_hinted_sign_in(person: WebUser, authorize_url: str) -> requests.Response:
    """Follow the app's redirect to the stand-in's authorize endpoint with a login_hint and
    no prompt: the stand-in must sign the user in at once (a 302 to the app's callback, no
    account picker). Returns the callback's response."""
    at_idp = person.http.get(authorize_url, allow_redirects=False, timeout=30)
    assert at_idp.status_code == 302, f"the stand-in asked something ({at_idp.status_code}): {at_idp.text[:300]}"
    callback = at_idp.headers["Location"]
    assert urlsplit(callback).path == "/getAToken" and "code" in query_of(callback), callback
    person.codes_seen.append(query_of(callback)["code"])
    return person.http.get(callback, allow_redirects=False, timeout=30)
