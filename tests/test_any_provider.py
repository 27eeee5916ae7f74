"""Any-provider tier: the app against a real, certified OpenID Provider that nobody here wrote.

The provider is the npm package `oidc-provider` (tests/oidc_provider/server.mjs), run by
Node.js over HTTPS on a free loopback port, with its defaults kept wherever the tests do not
need otherwise: it refuses `prompt=select_account`, grants `offline_access` (a refresh
token) only through consent, and by default puts nothing but `sub` in the id token of the
code flow (the profile is at userinfo). The app runs under gunicorn with `OIDC_AUTHORITY`
set to the provider's issuer and `ENDPOINT` set to its userinfo endpoint, so "the API" is
userinfo, called with the user's access token. Chromium signs in through the provider's
own development pages (any login name, any password, then consent).

Three providers, each with its app, started only when a test needs them:

* `generous`: profile claims in the id token; a refresh token when the sign-in asked for
  consent (oidc-provider keeps `offline_access` only with `prompt=consent`);
* `userinfo_only`: `sub` only in the id token, no refresh tokens at all;
* `short_lived`: as `userinfo_only`, with access tokens that MSAL never finds usable.

Access tokens live 300 s + `USABLE_SECONDS` (`EXPIRY_TTL`): MSAL treats a token that has
less than 5 minutes left as expired, so such a token is used for a few seconds and then
"expires" without a wait of minutes. A token that lives under 5 minutes (`short_lived`) is
expired from the moment it is issued.

Without Node.js (20 or later) or the installed package this module skips on a laptop and
fails under CI=true; with npm and no node_modules it runs `npm ci` first.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from playwright.sync_api import Error as PlaywrightError  # a dev requirement, as in test_browser.py
from playwright.sync_api import expect

from live import ROOT, AppServer, TlsFiles, browser_page, screenshot, unavailable, wait_for

pytestmark = pytest.mark.real

PROVIDER_DIR = ROOT / "tests" / "oidc_provider"
MIN_NODE_MAJOR = 20  # oidc-provider 9 (jose 6) needs the WebCrypto global of Node.js 20+
ARTIFACTS = ROOT / "test-artifacts" / "any-provider"

MSAL_EXPIRY_MARGIN = 300  # MSAL treats an access token with less than this left as expired
USABLE_SECONDS = 6
EXPIRY_TTL = MSAL_EXPIRY_MARGIN + USABLE_SECONDS
# SCOPE: MSAL adds openid, profile and offline_access itself and refuses them in SCOPE.
SCOPE = "email"
PASSWORD = "any password will do"


# --- the provider ------------------------------------------------------------------------


def node_or_reason() -> tuple[str | None, str | None]:
    """(path of node, None) when the provider can run here, else (None, why not). Installs
    the locked packages with `npm ci` when npm is there and node_modules is not."""
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        return None, "Node.js not found: apt-get install nodejs npm"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    match = re.match(r"v(\d+)\.", version.strip())
    if not match or int(match.group(1)) < MIN_NODE_MAJOR:
        return None, f"Node.js {version.strip() or '?'} is too old for oidc-provider 9 (needs {MIN_NODE_MAJOR}+)"
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider" / "package.json").exists():
        npm = shutil.which("npm")
        if npm is None:
            return None, "tests/oidc_provider/node_modules is missing and npm is not installed: apt-get install npm"
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=PROVIDER_DIR, capture_output=True,
                              text=True, timeout=110, check=False)
        if done.returncode != 0:
            return None, f"npm ci in tests/oidc_provider failed: {(done.stderr or done.stdout)[-1500:]}"
    return node, None


class ClientRegistration:
    """The app's registration at the provider, in the shape AppServer wants of an identity
    provider: it registers the app's redirect URI when it binds its port, and reads
    `settings` (the app's environment) when it starts."""

    def __init__(self):
        self.client_id = f"any-provider-app-{secrets.token_hex(4)}"
        self.client_secret = secrets.token_urlsafe(32)
        self.redirect_uris: list[str] = []
        self.settings: dict[str, str] = {}

    def register_redirect_uri(self, uri: str) -> None:
        self.redirect_uris.append(uri)


class OidcProvider:
    """tests/oidc_provider/server.mjs: oidc-provider over HTTPS on a port the kernel picks."""

    def __init__(self, node: str, workdir: Path, tls: TlsFiles, client: ClientRegistration,
                 post_logout_redirect_uris: list[str], env: dict[str, str]):
        self.node, self.tls, self.client = node, tls, client
        self.log_path = Path(workdir) / "oidc-provider.log"
        self.env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "OIDC_PORT": "0",
            "OIDC_TLS_CERT": str(tls.cert),
            "OIDC_TLS_KEY": str(tls.key),
            "OIDC_CLIENT_ID": client.client_id,
            "OIDC_CLIENT_SECRET": client.client_secret,
            "OIDC_REDIRECT_URIS": json.dumps(client.redirect_uris),
            "OIDC_POST_LOGOUT_REDIRECT_URIS": json.dumps(post_logout_redirect_uris),
            **env,
        }
        self.process: subprocess.Popen | None = None
        self.issuer = ""
        self.discovery: dict = {}

    def start(self) -> OidcProvider:
        def ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"oidc-provider exited: {self.log()[-3000:]}")
            match = re.search(r"^READY (\{.*\})$", self.log(), re.MULTILINE)
            return json.loads(match.group(1)) if match else None

        # It is ready in about half a second; once, in a fresh CI clone, the first start of a
        # run stalled for over 20 s. A stalled start is ended and tried once more.
        for attempt in (1, 2):
            with open(self.log_path, "ab" if attempt == 1 else "wb") as log:  # a retry's ready line only
                self.process = subprocess.Popen([self.node, "server.mjs"], cwd=PROVIDER_DIR, env=self.env,
                                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                self.issuer = wait_for(ready, timeout=30, what="oidc-provider's ready line")["issuer"]
                break
            except TimeoutError:
                self.stop()
                if attempt == 2:
                    raise

        def discovery():
            try:
                response = requests.get(f"{self.issuer}/.well-known/openid-configuration", timeout=2,
                                        verify=str(self.tls.ca))
            except requests.RequestException:
                return None
            return response.json() if response.status_code == 200 else None

        self.discovery = wait_for(discovery, timeout=20, what="oidc-provider's discovery document")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str | None = None) -> list[dict]:
        """The protocol events server.mjs logged (one JSON object a line)."""
        found = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                with_event = json.loads(line)
                if name is None or with_event.get("event") == name:
                    found.append(with_event)
        return found

    def grants(self, grant_type: str) -> int:
        return sum(1 for e in self.events("grant.success") if e.get("grant_type") == grant_type)

    @property
    def authorization_endpoint(self) -> str:
        return self.discovery["authorization_endpoint"]


class ProviderAndApp:
    """One provider with the app registered at it, and the app under gunicorn pointed at it."""

    def __init__(self, node: str, workdir: Path, name: str, provider_env: dict[str, str]):
        self.name = name
        self.tls = TlsFiles.for_loopback(workdir)
        self.client = ClientRegistration()
        # Binds the app's port now and registers its redirect URI with `self.client`.
        self.app = AppServer(self.client, workdir, name=f"{name}-app")
        self.home = f"{self.app.url}/"
        self.provider = OidcProvider(node, workdir, self.tls, self.client, [self.home], provider_env)

    def start(self) -> ProviderAndApp:
        self.provider.start()
        self.client.settings = self.app_env()
        self.app.start()
        return self

    def app_env(self) -> dict[str, str]:
        """Everything the app is configured with (AppServer adds SECRET_KEY and SESSION_FILE_DIR)."""
        return {
            "OIDC_AUTHORITY": self.provider.issuer,
            "CLIENT_ID": self.client.client_id,
            "CLIENT_SECRET": self.client.client_secret,
            "SCOPE": SCOPE,
            "ENDPOINT": self.provider.discovery["userinfo_endpoint"],
            "CLIENT_CAPABILITIES": "",  # no cp1: a claims request Entra's way means nothing here
            "REQUESTS_CA_BUNDLE": str(self.tls.ca),
        }

    def stop(self) -> None:
        self.app.stop()
        self.provider.stop()

    def diagnostics(self) -> str:
        return (f"\n--- {self.name} oidc-provider log (tail) ---\n{self.provider.log()[-2500:]}"
                f"\n--- {self.name} app log (tail) ---\n{self.app.logs()[-2500:]}")


@pytest.fixture(scope="module")
def node():
    path, reason = node_or_reason()
    if reason:
        unavailable(reason)
    return path


def running(node, tmp_path_factory, name: str, provider_env: dict[str, str]):
    pair = ProviderAndApp(node, tmp_path_factory.mktemp(name), name, provider_env)
    try:
        yield pair.start()
    finally:
        pair.stop()


@pytest.fixture(scope="module")
def generous(node, tmp_path_factory):
    """Profile claims in the id token; refresh tokens through consent; tokens usable a few seconds."""
    yield from running(node, tmp_path_factory, "generous", {
        "OIDC_CLAIMS_IN_ID_TOKEN": "1", "OIDC_ACCESS_TOKEN_TTL": str(EXPIRY_TTL)})


@pytest.fixture(scope="module")
def userinfo_only(node, tmp_path_factory):
    """oidc-provider's default id token (`sub` only); no refresh tokens; tokens usable a few seconds."""
    yield from running(node, tmp_path_factory, "userinfo-only", {
        "OIDC_REFRESH_TOKENS": "off", "OIDC_ACCESS_TOKEN_TTL": str(EXPIRY_TTL)})


@pytest.fixture(scope="module")
def short_lived(node, tmp_path_factory):
    """No refresh tokens and access tokens of 60 s, which MSAL treats as expired at once."""
    yield from running(node, tmp_path_factory, "short-lived", {
        "OIDC_REFRESH_TOKENS": "off", "OIDC_ACCESS_TOKEN_TTL": "60"})


# --- the browser ---------------------------------------------------------------------------


def _on_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost" or not host:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def provider_page(browser, pair: ProviderAndApp):
    """A fresh browser (cookie jar) on the app. oidc-provider's pages load a web font from
    the Internet: every request beyond loopback is refused here instead."""
    with browser_page(browser, pair.app.url, ignore_https_errors=True) as page:  # the provider's throwaway CA
        page.context.route(lambda url: not _on_loopback(url), lambda route: route.abort())
        yield page


def shot(page, name: str) -> None:
    screenshot(page, name, folder=ARTIFACTS)


def header(page):
    return page.locator("header.site-header")


def page_text(page) -> str:
    try:
        return page.locator("body").inner_text(timeout=2000)[:1500]
    except PlaywrightError as exc:
        return f"(no text: {exc})"


def sign_in(page, pair: ProviderAndApp, login: str, *, prompt: str | None = None) -> float:
    """From the app's signed-out home page through oidc-provider's sign-in and consent pages
    back to the app. Returns time.monotonic() once signed in (the tokens were issued before).
    `prompt`: the app's own `/login?prompt=...` instead of the Sign in link."""
    if prompt:
        page.goto(f"/login?prompt={prompt}")
    else:
        page.goto("/")
        page.get_by_role("main").get_by_role("link", name="Sign in").click()
    # The provider's sign-in page, or the app's callback with an error from the provider.
    page.wait_for_url(lambda url: "/interaction/" in url or url.startswith(f"{pair.app.url}/getAToken"))
    if not page.url.startswith(pair.provider.issuer):
        shot(page, f"{pair.name}-sign-in-refused.png")
        pytest.fail(f"the provider refused the sign-in request; the app shows {page.url}:\n{page_text(page)}"
                    f"{pair.diagnostics()}", pytrace=False)
    page.locator("input[name=login]").fill(login)
    page.locator("input[name=password]").fill(PASSWORD)
    page.get_by_role("button", name="Sign-in").click()
    # A new browser has granted nothing yet: oidc-provider asks for consent (offline_access too).
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(pair.home)
    return time.monotonic()


class ProviderTraffic:
    """Every request the browser sends to the provider, and each sign-in round trip among
    them (a request to the authorization endpoint)."""

    def __init__(self, page, pair: ProviderAndApp):
        self.pair = pair
        self.urls: list[str] = []
        page.on("request", self._seen)

    def _seen(self, request) -> None:
        if request.url.startswith(self.pair.provider.issuer):
            self.urls.append(request.url)

    def sign_in_round_trips(self) -> int:
        return sum(1 for url in self.urls if url.split("?")[0] == self.pair.provider.authorization_endpoint)

    def clear(self) -> None:
        self.urls.clear()


def open_api_page(page, pair: ProviderAndApp):
    """Open the API page the way a person would; a redirect loop fails the test here, with
    what the browser said, instead of surfacing as a timeout."""
    try:
        response = page.goto("/call_downstream_api")
    except PlaywrightError as exc:
        pytest.fail(f"the browser gave up on the API page: {exc}{pair.diagnostics()}", pytrace=False)
    assert response is not None
    return response


def expect_userinfo_page(page, pair: ProviderAndApp, *, sub: str, name: str, email: str) -> None:
    """The API page shows userinfo's answer as a plain key/value list, not Graph's card."""
    main = page.get_by_role("main")
    expect(page.get_by_role("heading", level=1)).to_have_text(re.compile(r"the API", re.IGNORECASE))
    facts = main.locator("section.profile dl.facts")
    keys = [key.strip() for key in facts.locator("dt").all_inner_texts()]
    assert {"sub", "name", "email"} <= set(keys), f"userinfo's keys are not listed: {keys}"
    assert "Display name" not in keys and "Job title" not in keys, f"Graph's card for a non-Graph answer: {keys}"
    values = dict(zip(keys, (v.strip() for v in facts.locator("dd").all_inner_texts()), strict=True))
    assert values["sub"] == sub and values["name"] == name and values["email"] == email, values
    expect(main.locator("pre.json")).to_contain_text(f'"sub": "{sub}"')
    expect(page.locator("body")).not_to_contain_text("Microsoft Graph")
    assert page.url == f"{pair.app.url}/call_downstream_api"


def expect_signed_in_as(page, shown: str) -> None:
    expect(header(page)).to_contain_text(f"Signed in as {shown}")
    expect(header(page)).not_to_contain_text("None")
    expect(page.get_by_role("heading", level=1)).not_to_contain_text("None")


# --- without a browser: what the provider offers, and what the app asks of it -------------


def test_the_provider_does_not_offer_select_account(generous):
    """Why the app must not send `prompt=select_account` everywhere: it is optional in
    OpenID Connect Core, this provider's discovery does not list it, and its authorization
    endpoint refuses it with invalid_request."""
    provider, client = generous.provider, generous.client
    discovery = requests.get(f"{provider.issuer}/.well-known/openid-configuration", timeout=5,
                             verify=str(generous.tls.ca)).json()
    assert discovery["issuer"] == provider.issuer
    assert "select_account" not in (discovery.get("prompt_values_supported") or [])

    query = urlencode({"client_id": client.client_id, "response_type": "code", "scope": "openid",
                       "redirect_uri": client.redirect_uris[0], "state": "s", "prompt": "select_account"})
    refused = requests.get(f"{provider.authorization_endpoint}?{query}", allow_redirects=False, timeout=5,
                           verify=str(generous.tls.ca))
    assert refused.status_code in (302, 303), refused.text[:300]
    answer = parse_qs(urlsplit(refused.headers["Location"]).query)
    assert answer["error"] == ["invalid_request"], answer


def test_the_app_asks_this_provider_for_no_prompt(generous):
    sign_in_start = requests.get(f"{generous.app.url}/login", allow_redirects=False, timeout=10)
    assert sign_in_start.status_code == 302, sign_in_start.text[:500]
    location = sign_in_start.headers["Location"]
    assert location.startswith(generous.provider.authorization_endpoint + "?"), location
    query = parse_qs(urlsplit(location).query)
    assert "prompt" not in query, f"the app asks for prompt={query['prompt']}, which this provider refuses"
    assert query["client_id"] == [generous.client.client_id]
    assert query["code_challenge_method"] == ["S256"]
    assert {"openid", "offline_access", SCOPE} <= set(query["scope"][0].split())


def test_pages_name_the_provider_and_the_api_not_microsoft(generous):
    home = requests.get(generous.home, timeout=10)
    assert home.status_code == 200
    text = re.sub(r"<[^>]+>", " ", home.text)
    assert "127.0.0.1" in text, "the home page should name the provider by its host name"
    for microsoft_name in ("Microsoft Entra ID", "Microsoft Graph"):
        assert microsoft_name not in text, (
            f"the home page says {microsoft_name!r} while the app talks to oidc-provider: "
            f"{[line.strip() for line in text.splitlines() if microsoft_name in line]}")


# --- in a browser --------------------------------------------------------------------------


@pytest.mark.browser
def test_sign_in_shows_the_user_and_the_userinfo_answer(browser, generous):
    with provider_page(browser, generous) as page:
        traffic = ProviderTraffic(page, generous)
        sign_in(page, generous, "ada.lovelace")
        expect_signed_in_as(page, "Ada Lovelace")
        expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Ada Lovelace")
        authorize = next(url for url in traffic.urls if url.split("?")[0] == generous.provider.authorization_endpoint)
        assert "prompt" not in parse_qs(urlsplit(authorize).query)
        shot(page, "generous-01-signed-in.png")

        page.get_by_role("main").get_by_role("link", name=re.compile(r"^Call ")).click()
        page.wait_for_url("**/call_downstream_api")
        expect_userinfo_page(page, generous, sub="ada.lovelace", name="Ada Lovelace",
                             email="ada.lovelace@example.test")
        expect_signed_in_as(page, "Ada Lovelace")
        shot(page, "generous-02-userinfo.png")


@pytest.mark.browser
@pytest.mark.slow
def test_an_expired_access_token_is_refreshed_without_a_sign_in(browser, generous):
    """oidc-provider keeps `offline_access` (MSAL always asks for it) only in a request with
    prompt=consent: a sign-in through the app's /login?prompt=consent gets a refresh token."""
    with provider_page(browser, generous) as page:
        codes = generous.provider.events("grant.success")
        signed_in_at = sign_in(page, generous, "alan.turing", prompt="consent")
        redeemed = generous.provider.events("grant.success")[len(codes):]
        assert [e["refresh_token"] for e in redeemed] == [True], f"no refresh token was issued: {redeemed}"
        refreshes = generous.provider.grants("refresh_token")
        traffic = ProviderTraffic(page, generous)

        assert open_api_page(page, generous).status == 200, page_text(page)
        assert generous.provider.grants("refresh_token") == refreshes, "refreshed a token that was still usable"

        time.sleep(max(0.0, signed_in_at + USABLE_SECONDS + 1 - time.monotonic()))
        response = open_api_page(page, generous)
        assert response.status == 200, page_text(page) + generous.diagnostics()
        expect_userinfo_page(page, generous, sub="alan.turing", name="Alan Turing", email="alan.turing@example.test")
        assert traffic.sign_in_round_trips() == 0, f"signed in again instead of refreshing: {traffic.urls}"
        assert generous.provider.grants("refresh_token") == refreshes + 1, generous.diagnostics()


@pytest.mark.browser
@pytest.mark.slow
def test_sign_out_ends_the_providers_session_and_returns_home(browser, generous):
    with provider_page(browser, generous) as page:
        sign_in(page, generous, "grace.hopper")
        traffic = ProviderTraffic(page, generous)
        end_session = generous.provider.discovery["end_session_endpoint"]

        header(page).get_by_role("button", name="Sign out").click()
        # oidc-provider asks before it signs anyone out.
        yes = page.get_by_role("button", name="Yes, sign me out")
        expect(yes).to_be_visible()
        shot(page, "generous-03-provider-logout.png")
        asked = [url for url in traffic.urls if url.split("?")[0] == end_session]
        assert asked, traffic.urls
        query = parse_qs(urlsplit(asked[0]).query)
        assert query.get("client_id") == [generous.client.client_id], query
        assert query.get("post_logout_redirect_uri") == [generous.home], query
        assert query.get("id_token_hint"), f"no id_token_hint on the end-session request: {sorted(query)}"
        yes.click()

        page.wait_for_url(generous.home)
        expect(page.get_by_role("main").get_by_role("link", name="Sign in")).to_be_visible()
        expect(page.locator("body")).not_to_contain_text("Signed in as")
        assert generous.provider.events("end_session.success"), generous.diagnostics()
        shot(page, "generous-04-signed-out.png")

        # Signed out at the provider too: signing in again asks for a login.
        page.get_by_role("main").get_by_role("link", name="Sign in").click()
        expect(page.locator("input[name=login]")).to_be_visible()


@pytest.mark.browser
def test_profile_claims_only_at_userinfo_never_show_none(browser, userinfo_only):
    """oidc-provider's default: the id token has `sub` only; the name is at userinfo."""
    with provider_page(browser, userinfo_only) as page:
        sign_in(page, userinfo_only, "katherine.johnson")
        # name > preferred_username > email > sub: the id token carries only the last.
        expect_signed_in_as(page, "katherine.johnson")
        expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, katherine.johnson")
        expect(page.get_by_role("main")).not_to_contain_text("Katherine Johnson")  # not in the id token
        shot(page, "userinfo-only-01-signed-in.png")

        assert open_api_page(page, userinfo_only).status == 200, page_text(page) + userinfo_only.diagnostics()
        expect_userinfo_page(page, userinfo_only, sub="katherine.johnson", name="Katherine Johnson",
                             email="katherine.johnson@example.test")
        expect(header(page)).not_to_contain_text("None")
        shot(page, "userinfo-only-02-userinfo.png")


@pytest.mark.browser
@pytest.mark.slow
def test_an_expired_access_token_without_refresh_token_takes_one_quiet_sign_in(browser, userinfo_only):
    with provider_page(browser, userinfo_only) as page:
        signed_in_at = sign_in(page, userinfo_only, "dorothy.vaughan")
        traffic = ProviderTraffic(page, userinfo_only)
        assert open_api_page(page, userinfo_only).status == 200, page_text(page)
        assert traffic.sign_in_round_trips() == 0

        time.sleep(max(0.0, signed_in_at + USABLE_SECONDS + 1 - time.monotonic()))
        response = open_api_page(page, userinfo_only)
        round_trips = traffic.sign_in_round_trips()
        assert 1 <= round_trips <= 2, f"{round_trips} sign-in round trips: {traffic.urls}"
        # The provider still has its session: the sign-in is a redirect there and back, no page.
        assert not [url for url in traffic.urls if "/interaction/" in url], traffic.urls
        assert response.status == 200, page_text(page) + userinfo_only.diagnostics()
        expect_userinfo_page(page, userinfo_only, sub="dorothy.vaughan", name="Dorothy Vaughan",
                             email="dorothy.vaughan@example.test")
        assert userinfo_only.provider.grants("refresh_token") == 0


@pytest.mark.browser
@pytest.mark.slow
def test_tokens_that_never_last_end_on_an_error_page_not_a_redirect_loop(browser, short_lived):
    """60 s access tokens and no refresh token: to MSAL every token is expired on arrival, so
    no sign-in can ever give the API page a token. At most two sign-in round trips, then a
    page that says so; never the browser's ERR_TOO_MANY_REDIRECTS."""
    with provider_page(browser, short_lived) as page:
        sign_in(page, short_lived, "mary.jackson")
        expect_signed_in_as(page, "mary.jackson")
        traffic = ProviderTraffic(page, short_lived)

        response = open_api_page(page, short_lived)
        round_trips = traffic.sign_in_round_trips()
        assert round_trips <= 2, f"{round_trips} sign-in round trips: {traffic.urls}"
        assert response.status == 200 or 400 <= response.status < 500 or response.status in (502, 503), (
            f"{response.status}: {page_text(page)}")
        assert page.url.startswith(short_lived.app.url), page.url  # the app's own page, not the provider's
        expect(page.get_by_role("heading", level=1)).to_have_text(re.compile(r"\S"))
        shot(page, "short-lived-01-api-page.png")

        # Asked again, still no loop and no more than two round trips.
        traffic.clear()
        again = open_api_page(page, short_lived)
        assert traffic.sign_in_round_trips() <= 2, traffic.urls
        assert again.status == 200 or 400 <= again.status < 500 or again.status in (502, 503)
