"""Fixtures shared by every tier.

Fast tier: `app`, `client`, `fake_entra` (discovery, token endpoint and Graph of a made-up
https authority, mocked with `responses`) and `auth` (signs a user in through the real
`identity`/MSAL code). An autouse guard fails any test that reaches beyond loopback.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from app import create_app
from live import CSRF_RE

TENANT_ID = "9f0e5d3c-1b2a-4c8d-9e7f-6a5b4c3d2e1f"
AUTHORITY_HOST = "https://login.example.test"
AUTHORITY = f"{AUTHORITY_HOST}/{TENANT_ID}"
ISSUER = f"{AUTHORITY}/v2.0"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
CLIENT_SECRET = "fast-tier-client-secret-value"
GRAPH_ME = "https://graph.example.test/v1.0/me"
SECRET_KEY = "fast-tier-secret-key-0123456789abcdefghijklmnop"

ME = {
    "@odata.context": "https://graph.example.test/v1.0/$metadata#users/$entity",
    "businessPhones": ["+1 425 555 0109"],
    "displayName": "Adele Vance",
    "givenName": "Adele",
    "jobTitle": "Retail Manager",
    "mail": "adele@contoso.example",
    "mobilePhone": None,
    "officeLocation": "18/2111",
    "preferredLanguage": "en-US",
    "surname": "Vance",
    "userPrincipalName": "adele@contoso.example",
    "id": "87d349ed-44d7-43e1-9a83-5f2406dee5bd",
}


# --- network guard --------------------------------------------------------------------


def _is_loopback(host) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def only_loopback_network(monkeypatch):
    """Fail any test that opens a connection or resolves a name beyond this machine."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            pytest.fail(f"test tried to reach {address[0]}: only loopback is allowed", pytrace=False)

    def connect(sock, address):
        check(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        check(sock, address)
        return real_connect_ex(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _is_loopback(host if isinstance(host, str) else host.decode()):
            raise socket.gaierror(socket.EAI_NONAME, f"test tried to resolve {host}: only loopback is allowed")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


# --- a made-up identity provider and Graph, mocked with responses ----------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(claims: dict) -> str:
    """An unsigned-looking JWT: MSAL reads the id token's claims without checking its signature."""
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "fast"}).encode())
    body = _b64url(json.dumps(claims).encode())
    return f"{header}.{body}.{_b64url(b'signature')}"


class FakeEntra:
    """Discovery, token endpoint, end-session and Graph of AUTHORITY, answered by `responses`.

    `rsps` is strict: a request to any URL not registered here fails the test.
    """

    token_endpoint = f"{AUTHORITY}/oauth2/v2.0/token"
    authorize_endpoint = f"{AUTHORITY}/oauth2/v2.0/authorize"
    end_session_endpoint = f"{AUTHORITY}/oauth2/v2.0/logout"

    def __init__(self, rsps: responses.RequestsMock):
        self.rsps = rsps
        self.user = {"oid": ME["id"], "name": ME["displayName"], "preferred_username": ME["userPrincipalName"]}
        self.id_token_overrides: dict = {}
        self.token_errors: list[tuple[int, dict]] = []
        self.nonce: str | None = None
        self.graph_responses: list = []
        self.access_token_lifetime = 3600
        self.granted_scope = "User.Read openid profile offline_access"
        self.issued_access_tokens: list[str] = []
        self.issued_refresh_tokens: list[str] = []
        self.issued_id_tokens: list[str] = []
        self.token_requests: list[dict] = []
        discovery = {
            "issuer": ISSUER,
            "authorization_endpoint": self.authorize_endpoint,
            "token_endpoint": self.token_endpoint,
            "end_session_endpoint": self.end_session_endpoint,
            "jwks_uri": f"{AUTHORITY}/discovery/v2.0/keys",
            "response_types_supported": ["code"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }
        rsps.add(responses.GET, f"{AUTHORITY}/v2.0/.well-known/openid-configuration", json=discovery)
        rsps.add(responses.GET, f"{AUTHORITY}/.well-known/openid-configuration", json=discovery)
        rsps.add_callback(responses.POST, self.token_endpoint, callback=self._token)
        rsps.add_callback(responses.GET, GRAPH_ME, callback=self._graph)

    # test-facing knobs

    def fail_next_token(self, error: str, description: str = "", status: int = 400, **extra) -> None:
        self.token_errors.append((status, {"error": error, "error_description": description, **extra}))

    def graph_answers(self, status: int = 200, body=None, headers=None) -> None:
        """Queue one Graph answer; when the queue is empty Graph answers ME."""
        self.graph_responses.append((status, body, headers or {}))

    def graph_calls(self) -> list:
        return [c for c in self.rsps.calls if c.request.url.startswith(GRAPH_ME)]

    def token_calls(self) -> list:
        return [c for c in self.rsps.calls if c.request.url == self.token_endpoint]

    def unmocked(self) -> list[str]:
        """Requests that matched no mock (responses refused them with a ConnectionError)."""
        return [f"{c.request.method} {c.request.url}" for c in self.rsps.calls
                if isinstance(c.response, Exception) and "Connection refused by Responses" in str(c.response)]

    # responses callbacks

    def _token(self, request):
        form = {k: v[0] for k, v in parse_qs(request.body if isinstance(request.body, str)
                                             else request.body.decode()).items()}
        self.token_requests.append(form)
        if self.token_errors:
            status, body = self.token_errors.pop(0)
            return status, {"Content-Type": "application/json"}, json.dumps(body)
        now = int(time.time())
        claims = {
            "aud": CLIENT_ID, "iss": ISSUER, "tid": TENANT_ID, "iat": now, "nbf": now, "exp": now + 3600,
            "sub": "pairwise-" + self.user["oid"][:8], "ver": "2.0", **self.user,
        }
        if form.get("grant_type") == "authorization_code" and self.nonce:
            claims["nonce"] = self.nonce
        claims.update(self.id_token_overrides)
        access_token = make_jwt({"aud": "00000003-0000-0000-c000-000000000000", "scp": "User.Read",
                                 "oid": self.user["oid"], "exp": now + self.access_token_lifetime,
                                 "jti": uuid.uuid4().hex})
        refresh_token = "rt-" + uuid.uuid4().hex
        id_token = make_jwt(claims)
        self.issued_access_tokens.append(access_token)
        self.issued_refresh_tokens.append(refresh_token)
        self.issued_id_tokens.append(id_token)
        body = {
            "token_type": "Bearer",
            "scope": self.granted_scope,
            "expires_in": self.access_token_lifetime,
            "access_token": access_token,
            "refresh_token": refresh_token,
            "id_token": id_token,
            "client_info": _b64url(json.dumps({"uid": self.user["oid"], "utid": TENANT_ID}).encode()),
        }
        return 200, {"Content-Type": "application/json"}, json.dumps(body)

    def _graph(self, request):
        if self.graph_responses:
            status, body, headers = self.graph_responses.pop(0)
            if isinstance(body, Exception):
                raise body
            if isinstance(body, (dict, list)):
                return status, {"Content-Type": "application/json", **headers}, json.dumps(body)
            return status, headers, body or ""
        return 200, {"Content-Type": "application/json"}, json.dumps(ME)


# --- the app under test ---------------------------------------------------------------


def fast_config(tmp_path, **overrides) -> dict:
    return {
        "TESTING": True,
        "SECRET_KEY": SECRET_KEY,
        "CLIENT_ID": CLIENT_ID,
        "CLIENT_SECRET": CLIENT_SECRET,
        "AUTHORITY": AUTHORITY,
        "ENDPOINT": GRAPH_ME,
        "SESSION_FILE_DIR": str(tmp_path / "sessions"),
        **overrides,
    }


@pytest.fixture
def fake_entra():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fake = FakeEntra(rsps)
        yield fake
        assert not fake.unmocked(), f"requests to unmocked URLs: {fake.unmocked()}"


@pytest.fixture
def app(tmp_path, fake_entra):
    return create_app(fast_config(tmp_path))


@pytest.fixture
def client(app):
    return app.test_client()


class AuthActions:
    """Signs in and out through the app's real routes, like the Flask tutorial's `auth`."""

    def __init__(self, client, fake: FakeEntra, redirect_path: str = "/getAToken",
                 base_url: str = "http://localhost"):
        self.client = client
        self.fake = fake
        self.redirect_path = redirect_path
        self.base_url = base_url  # https://localhost: the cookies get their __Host- names

    def start(self, next_path: str | None = None) -> dict:
        """GET /login; return the authorize request's query parameters."""
        response = self.client.get("/login", query_string={"next": next_path} if next_path else None,
                                   base_url=self.base_url)
        assert response.status_code == 302, response.get_data(as_text=True)
        location = response.headers["Location"]
        assert location.startswith(FakeEntra.authorize_endpoint)
        params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        self.fake.nonce = params.get("nonce")
        return params

    def callback(self, **params):
        return self.client.get(self.redirect_path, query_string=params, base_url=self.base_url)

    def sign_in(self, next_path: str | None = None):
        params = self.start(next_path)
        response = self.callback(code="auth-code-" + uuid.uuid4().hex, state=params["state"],
                                 session_state="s")
        assert response.status_code == 302, response.get_data(as_text=True)
        return response

    def csrf_token(self, path: str = "/") -> str:
        match = CSRF_RE.search(self.client.get(path, base_url=self.base_url).get_data(as_text=True))
        assert match, "no CSRF token on the page"
        return match.group(1)

    def sign_out(self):
        return self.client.post("/logout", data={"csrf_token": self.csrf_token()}, base_url=self.base_url,
                                headers={"Referer": f"{self.base_url}/"})


@pytest.fixture
def auth(client, fake_entra):
    return AuthActions(client, fake_entra)


def home_page_shows_signed_in(client) -> bool:
    """Whether the home page, seen with this client's cookies, shows someone signed in."""
    return "Signed in as" in client.get("/").get_data(as_text=True)


def session_cookie(response) -> str | None:
    """The Set-Cookie of the server-side session's id (either name), or None."""
    return _set_cookie(response, ("session=", "__Host-session="))


def pending_cookie(response) -> str | None:
    """The Set-Cookie of the pending sign-in's sealed cookie (either name), or None."""
    return _set_cookie(response, ("signin_pending=", "__Host-signin_pending="))


def _set_cookie(response, prefixes) -> str | None:
    for header in response.headers.getlist("Set-Cookie"):
        if header.startswith(prefixes):
            return header
    return None


# --- real parts: the local stand-in over TLS and the app under gunicorn ------------------


@pytest.fixture(scope="session")
def stand_in():
    from local_entra import StandIn

    server = StandIn(testing=True).start()
    yield server
    server.stop()


@pytest.fixture
def fresh_stand_in(stand_in):
    """The shared stand-in, with no fault left over from an earlier test."""
    stand_in.clear_faults()
    stand_in.hang_idp(False)
    yield stand_in
    stand_in.clear_faults()
    stand_in.hang_idp(False)
    stand_in.start_idp()
    stand_in.access_token_lifetime = 3600


@pytest.fixture(scope="module")
def live_app(stand_in, tmp_path_factory):
    from live import AppServer

    server = AppServer(stand_in, tmp_path_factory.mktemp("live-app")).start()
    yield server
    server.stop()


# --- Chromium and Redis, shared by every tier that needs them -----------------------------


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the whole run (Playwright's sync API allows one at a time)."""
    from live import CHROMIUM, CHROMIUM_ARGS, unavailable

    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - depends on the machine
        unavailable(f"playwright is not importable: {exc}")
    if not Path(CHROMIUM).exists():
        unavailable(f"{CHROMIUM} not found: apt-get install chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def require_redis_server() -> None:
    from live import RedisServer, unavailable

    if not RedisServer.available():
        unavailable("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    from live import RedisServer

    require_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_client(redis_server):
    import redis

    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()
