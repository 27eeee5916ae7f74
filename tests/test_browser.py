"""Browser tier: Playwright drives Debian's Chromium through the app and the local stand-in.

One browser per module, a new context (cookie jar) per test. Screenshots of each step go to
test-artifacts/browser/; axe-core checks every kind of page for serious or critical problems.
`UPDATE_DOCS_SCREENSHOTS=1` (or a missing file) also refreshes docs/profile.png for the README:
rewriting it on every run would leave a changed binary in the work tree after each `make test`.
"""

from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import expect  # a dev requirement; Chromium's absence is handled in conftest

from live import ROOT, AppServer, TlsFiles, browser_page, screenshot, unavailable
from local_entra import USERS

try:
    from axe_playwright_python.sync_playwright import Axe
except ImportError as exc:  # pragma: no cover - depends on the machine
    AXE_MISSING: str | None = f"axe_playwright_python is not importable: {exc}"
else:
    AXE_MISSING = None

pytestmark = pytest.mark.browser

DOCS_PROFILE = ROOT / "docs" / "profile.png"
BLOCKING_IMPACTS = ("serious", "critical")

PRIYA = USERS[0]


@pytest.fixture
def page(browser, live_app, fresh_stand_in):
    with browser_page(browser, live_app.url) as new_page:
        yield new_page


@pytest.fixture(scope="module")
def axe():
    if AXE_MISSING:
        unavailable(AXE_MISSING)
    return Axe()


def check_accessibility(axe, page, what: str) -> None:
    """No serious or critical axe-core violation; the lesser ones are printed, not failed."""
    violations = axe.run(page).response["violations"]
    for v in violations:
        targets = [" ".join(node["target"]) for node in v["nodes"]][:5]
        print(f"axe [{what}] {v['impact']}: {v['id']}: {v['help']} at {targets}")
    blocking = [f"{v['impact']}: {v['id']}: {v['help']} ({len(v['nodes'])} element(s))"
                for v in violations if v["impact"] in BLOCKING_IMPACTS]
    assert not blocking, f"accessibility problems on {what}:\n" + "\n".join(blocking)


def header(page):
    return page.locator("header.site-header")


def open_picker(page):
    """From the signed-out home page to the stand-in's account picker."""
    page.goto("/")
    page.get_by_role("main").get_by_role("link", name="Sign in").click()
    expect(page.get_by_role("heading", name="Pick an account")).to_be_visible()


def test_sign_in_see_profile_and_sign_out(page, live_app, stand_in, axe):
    page.goto("/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Your profile, from Microsoft Graph")
    expect(page.locator(".stand-in-banner")).to_contain_text("Local stand-in")
    expect(header(page)).not_to_contain_text("Signed in as")
    screenshot(page, "01-home.png")
    check_accessibility(axe, page, "home, signed out")

    page.get_by_role("main").get_by_role("link", name="Sign in").click()
    expect(page.get_by_role("heading", name="Pick an account")).to_be_visible()
    assert page.url.startswith(stand_in.front_url)
    screenshot(page, "02-picker.png")
    check_accessibility(axe, page, "stand-in account picker")

    page.get_by_role("button", name=re.compile(re.escape(PRIYA["displayName"]))).click()
    page.wait_for_url(f"{live_app.url}/")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Welcome, {PRIYA['displayName']}")
    expect(header(page)).to_contain_text(f"Signed in as {PRIYA['displayName']}")
    expect(page.get_by_role("main")).to_contain_text(PRIYA["userPrincipalName"])
    screenshot(page, "03-signed-in.png")
    check_accessibility(axe, page, "home, signed in")

    page.get_by_role("link", name="Call Microsoft Graph").click()
    page.wait_for_url("**/call_downstream_api")
    card = page.locator("section.profile")
    expect(card.get_by_role("heading", level=1)).to_have_text(PRIYA["displayName"])
    expect(card).to_contain_text(PRIYA["jobTitle"])
    expect(card).to_contain_text(PRIYA["mail"])
    expect(page.locator(".stand-in-banner")).to_be_visible()
    screenshot(page, "04-profile.png")
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS", "").lower() in ("1", "true", "yes") or not DOCS_PROFILE.exists():
        DOCS_PROFILE.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_PROFILE))  # the viewport only: a README-sized picture
    check_accessibility(axe, page, "profile")

    header(page).get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="You signed out of your account")).to_be_visible()
    assert page.url.startswith(stand_in.front_url)
    screenshot(page, "04b-stand-in-signed-out.png")
    check_accessibility(axe, page, "stand-in signed-out page")
    page.get_by_role("link", name="Return to the application").click()
    page.wait_for_url(f"{live_app.url}/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Your profile, from Microsoft Graph")
    expect(page.get_by_role("main").get_by_role("link", name="Sign in")).to_be_visible()
    expect(page.locator("body")).not_to_contain_text("Signed in as")
    screenshot(page, "05-signed-out.png")

    # Signed out for real: the profile asks for a sign-in again.
    page.goto("/call_downstream_api")
    expect(page.get_by_role("heading", name="Pick an account")).to_be_visible()


def test_a_form_on_another_site_cannot_sign_the_user_out(page, live_app):
    open_picker(page)
    page.get_by_role("button", name=re.compile(re.escape(PRIYA["displayName"]))).click()
    page.wait_for_url(f"{live_app.url}/")
    expect(header(page)).to_contain_text(f"Signed in as {PRIYA['displayName']}")

    # A page on another site that posts to /logout as soon as it loads (served by the
    # browser's request interception: no server, no name resolution).
    attack = (f'<!doctype html><form id="f" method="post" action="{live_app.url}/logout"></form>'
              '<script>document.getElementById("f").submit()</script>')
    page.route("http://attacker.test/**", lambda route: route.fulfill(body=attack, content_type="text/html"))
    with page.expect_response(f"{live_app.url}/logout") as posted:
        page.goto("http://attacker.test/")
    assert posted.value.status in (303, 400)
    assert not [c for c in posted.value.headers_array() if c["name"].lower() == "set-cookie"]

    page.goto(f"{live_app.url}/")
    expect(header(page)).to_contain_text(f"Signed in as {PRIYA['displayName']}")


@pytest.fixture(scope="module")
def https_app(stand_in, tmp_path_factory):
    """The app served over https by gunicorn itself, as behind nothing but TLS."""
    workdir = tmp_path_factory.mktemp("https-app")
    server = AppServer(stand_in, workdir, name="https-app", tls=TlsFiles.for_loopback(workdir)).start()
    yield server
    server.stop()


def test_sign_in_and_sign_out_over_https(browser, https_app, fresh_stand_in):
    # Over https the cookie is Secure, and sign-out's CSRF check also wants a same-origin
    # Referer: the one the browser sends under the app's own Referrer-Policy.
    # ignore_https_errors: the throwaway CA is not the browser's.
    with browser_page(browser, https_app.url, ignore_https_errors=True) as page:
        open_picker(page)
        page.get_by_role("button", name=re.compile(re.escape(PRIYA["displayName"]))).click()
        page.wait_for_url(f"{https_app.url}/")
        expect(header(page)).to_contain_text(f"Signed in as {PRIYA['displayName']}")
        # __Host-: the browser lets no other origin (a sibling subdomain, plain http) set it.
        cookie = next(c for c in page.context.cookies() if c["name"] == "__Host-session")
        assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/"
        assert "domain" not in cookie or not cookie["domain"].startswith(".")
        assert not [c for c in page.context.cookies() if "signin_pending" in c["name"]]  # dropped at sign-in

        header(page).get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", name="You signed out of your account")).to_be_visible()
        page.goto("/")
        expect(page.get_by_role("main").get_by_role("link", name="Sign in")).to_be_visible()
        expect(page.locator("body")).not_to_contain_text("Signed in as")


def test_cancel_on_the_picker_shows_the_cancelled_page(page, live_app, axe):
    open_picker(page)
    response_statuses = []
    page.on("response", lambda r: response_statuses.append((r.url, r.status)))
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_url(f"{live_app.url}/getAToken**")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign-in was cancelled")
    expect(page.get_by_role("main")).to_contain_text("access_denied")
    expect(page.get_by_role("link", name="Try signing in again")).to_be_visible()
    expect(page.locator("body")).not_to_contain_text("Signed in as")
    assert any(url.startswith(f"{live_app.url}/getAToken") and status == 403
               for url, status in response_statuses), response_statuses
    screenshot(page, "06-error-cancelled.png")
    check_accessibility(axe, page, "sign-in cancelled error page")


def test_unknown_address_shows_the_not_found_page(page, axe):
    response = page.goto("/no/such/page")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", level=1)).to_have_text("Page not found")
    expect(page.get_by_role("link", name="Home")).to_be_visible()
    screenshot(page, "07-error-not-found.png")
    check_accessibility(axe, page, "404 page")


def test_axe_runs_under_the_apps_content_security_policy(page, axe):
    """axe is injected with page.evaluate (CDP), which the app's script-src 'self' does not block."""
    response = page.goto("/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    results = axe.run(page).response
    assert isinstance(results["violations"], list)
    assert results["testEngine"]["name"] == "axe-core"
    assert page.evaluate("typeof window.axe") == "object"


def test_keyboard_user_can_reach_sign_in_after_the_skip_link(page):
    page.goto("/")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Enter")
    assert page.url.endswith("#content")


def test_chromium_reaches_nothing_beyond_loopback(page, live_app):
    """Every request the pages make during a sign-in stays on this machine (no CDN, no fonts)."""
    hosts = set()
    page.on("request", lambda r: hosts.add(re.sub(r"^\w+://([^/:]+).*$", r"\1", r.url)))
    open_picker(page)
    page.get_by_role("button", name=re.compile(re.escape(PRIYA["displayName"]))).click()
    page.wait_for_url(f"{live_app.url}/")
    assert hosts <= {"127.0.0.1", "localhost"}, hosts

