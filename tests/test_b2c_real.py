"""Azure AD B2C, real tier: the app under gunicorn against the stand-in in B2C mode.

The stand-in serves three user flows (sign-up/sign-in, edit profile, password reset) as B2C
does: one authority per flow on 127.0.0.1:<port>, B2C-shaped tokens, "Forgot your password?"
as AADB2C90118, Cancel as AADB2C90091, a code or refresh token honoured only by its own
flow (AADB2C90088), and no access token for a request without an API scope. The app gets
the B2C_* settings and no AUTHORITY, exactly as `LOCAL_ENTRA_B2C=1 make run` gives them.
"""

from __future__ import annotations

import html
import re
import signal
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from live import ROOT, AppServer, WebUser, browser_page, query_of, screenshot, unavailable, wait_for
from local_entra import USERS, StandIn
from local_entra.sso import SESSION_COOKIE

pytestmark = pytest.mark.real

SUSI, EDIT, RESET = "B2C_1_signupsignin1", "B2C_1_profileediting1", "B2C_1_passwordreset1"
FORM_RE = re.compile(r'<form method="post" action="([^"]+)"')
REQUEST_ID_RE = re.compile(r'name="request_id" value="([^"]+)"')
SIGNED_IN_AS_RE = re.compile(r"Signed in as <strong>([^<]*)</strong>")
H1_RE = re.compile(r"<h1[^>]*>([^<]*)</h1>")

# What the app does wrong (see the report of issue 13).


@pytest.fixture(scope="module")
def b2c_stand_in():
    stand_in = StandIn(b2c=True, testing=True).start()
    yield stand_in
    stand_in.stop()


@pytest.fixture(scope="module")
def b2c_app(b2c_stand_in, tmp_path_factory):
    # The stand-in's settings (B2C_TENANT_NAME, the three flows, B2C_DOMAIN, ...) are all the
    # app is told; AppServer keeps any AUTHORITY of this environment away from it.
    server = AppServer(b2c_stand_in, tmp_path_factory.mktemp("b2c-app"), name="b2c-app").start()
    yield server
    server.stop()


@pytest.fixture
def stand_in(b2c_stand_in):
    """The shared B2C stand-in, counters zeroed and lifetimes as configured, before and after."""
    b2c_stand_in.reset_counters()
    yield b2c_stand_in
    b2c_stand_in.access_token_lifetime = b2c_stand_in.id_token_lifetime = 3600



def name_of(stand_in, user) -> str:
    """The user's name at the stand-in now (an edit-profile test may have changed it)."""
    return stand_in.find_user(user["id"])["displayName"]


def signed_in_as(person: WebUser) -> str | None:
    match = SIGNED_IN_AS_RE.search(person.get("/").text)
    return match and html.unescape(match.group(1))


def heading(response: requests.Response) -> str | None:
    match = H1_RE.search(response.text)
    return match and html.unescape(match.group(1)).strip()


def form_of(page: requests.Response) -> tuple[str, str]:
    """(absolute action, request id) of a stand-in page's form."""
    action = html.unescape(FORM_RE.search(page.text).group(1))
    return urljoin(page.url, action), REQUEST_ID_RE.search(page.text).group(1)


def at_the_stand_in(person: WebUser, app_redirect: requests.Response) -> requests.Response:
    """Follow the app's redirect to a user flow's page (no further)."""
    assert app_redirect.status_code == 302, app_redirect.text[:300]
    page = person.http.get(app_redirect.headers["Location"], allow_redirects=False, timeout=30)
    assert page.status_code == 200, page.text[:300]
    return page


def back_to_the_app(person: WebUser, stand_in_answer: requests.Response) -> requests.Response:
    """The stand-in's redirect to the app's callback, and the app's answer to it."""
    assert stand_in_answer.status_code == 302, stand_in_answer.text[:300]
    return person.http.get(stand_in_answer.headers["Location"], allow_redirects=False, timeout=30)


def edit_profile(person: WebUser, new_name: str | None, next_path="/call_downstream_api"):
    """Through the app's "Edit profile" to the edit-profile flow's form; submit `new_name`
    (None: press Cancel). Returns (the form page, the app's answer to the callback)."""
    page = at_the_stand_in(person, person.get("/profile/edit", params={"next": next_path}))
    action, request_id = form_of(page)
    choice = {"cancel": "1"} if new_name is None else {"displayName": new_name, "continue": "1"}
    answer = person.http.post(action, data={"request_id": request_id, **choice}, allow_redirects=False, timeout=30)
    return page, back_to_the_app(person, answer)


def reset_password(person: WebUser, app_redirect: requests.Response, user) -> requests.Response:
    """From the app's redirect to the password-reset flow, reset `user`'s password; the app's
    answer to the callback."""
    page = at_the_stand_in(person, app_redirect)
    assert urlsplit(page.url).path.startswith(f"/contosob2c.onmicrosoft.com/{RESET.lower()}/")
    assert "Reset your password" in page.text
    action, request_id = form_of(page)
    answer = person.http.post(action, data={"request_id": request_id, "user_id": user["id"],
                                            "new_password": "N3w-pass!", "confirm_password": "N3w-pass!"},
                              allow_redirects=False, timeout=30)
    return back_to_the_app(person, answer)


def test_signing_in_through_the_sign_up_sign_in_flow_shows_the_name_and_the_graph_profile(b2c_app, stand_in):
    assert "AUTHORITY" not in b2c_app.environment()
    user = USERS[0]
    person = WebUser(b2c_app.url)
    _, _, authorize_url = person.start_sign_in()
    sign_up_sign_in = f"{stand_in.front_url}/contosob2c.onmicrosoft.com/{SUSI.lower()}/oauth2/v2.0/authorize?"
    assert authorize_url.startswith(sign_up_sign_in)

    callback = person.sign_in(user, next_path="/call_downstream_api")
    assert callback.status_code == 302 and callback.headers["Location"] == "/call_downstream_api"
    assert signed_in_as(person) == name_of(stand_in, user)
    profile = person.get("/call_downstream_api")
    assert profile.status_code == 200 and user["mail"] in profile.text


def test_edit_profile_renames_the_user_on_the_page_and_the_api_page_keeps_its_tokens(b2c_app, stand_in):
    user = USERS[1]
    person = WebUser(b2c_app.url)
    person.sign_in(user)
    before = name_of(stand_in, user)
    assert person.get("/call_downstream_api").status_code == 200
    form, callback = edit_profile(person, "Tomás H. (edited)")
    assert f'value="{html.escape(before)}"' in form.text  # the form showed the current name
    assert callback.status_code == 302, f"{callback.status_code} {heading(callback)}"
    assert callback.headers["Location"] == "/call_downstream_api"
    assert signed_in_as(person) == "Tomás H. (edited)"
    refreshes = stand_in.counters["token_refresh"]
    profile = person.get("/call_downstream_api")
    assert profile.status_code == 200 and "Tomás H. (edited)" in profile.text  # Graph has the new name too
    assert stand_in.counters["token_refresh"] == refreshes  # the access token it had, no new one


def test_cancelling_edit_profile_keeps_the_user_signed_in_as_before(b2c_app, stand_in):
    user = USERS[0]
    person = WebUser(b2c_app.url)
    person.sign_in(user)
    before = signed_in_as(person)
    form, callback = edit_profile(person, None)
    assert f'value="{html.escape(before)}"' in form.text  # the form showed the current name
    assert callback.status_code == 302 and callback.headers["Location"] == "/call_downstream_api"
    assert signed_in_as(person) == before == name_of(stand_in, user)
    assert person.get("/call_downstream_api").status_code == 200


def test_forgot_your_password_leads_through_the_reset_flow_to_signed_in(b2c_app, stand_in):
    user = USERS[2]
    person = WebUser(b2c_app.url)
    _, _, authorize_url = person.start_sign_in(next_path="/call_downstream_api")
    picker = person.http.get(authorize_url, timeout=30)
    link = html.unescape(re.search(r'<a href="([^"]+)">Forgot your password\?</a>', picker.text).group(1))
    forgot = person.http.get(urljoin(authorize_url, link), allow_redirects=False, timeout=30)
    assert "AADB2C90118" in query_of(forgot.headers["Location"])["error_description"]

    to_reset = back_to_the_app(person, forgot)
    assert to_reset.status_code == 302 and to_reset.headers["Location"].startswith("/password/reset")
    landed = reset_password(person, person.get(to_reset.headers["Location"]), user)
    assert landed.status_code == 302 and landed.headers["Location"] == "/call_downstream_api"
    assert signed_in_as(person) == name_of(stand_in, user)
    profile = person.get("/call_downstream_api")
    assert profile.status_code == 200 and user["mail"] in profile.text


def test_after_a_reset_the_first_token_refresh_goes_back_through_sign_up_sign_in(b2c_app, stand_in):
    """The reset flow's refresh token is refused at the sign-up/sign-in flow's endpoint
    (AADB2C90088, as B2C does): the app signs the user in again, silently (B2C's session),
    and the page still comes."""
    stand_in.access_token_lifetime = 60  # under MSAL's 5 minutes: the next call refreshes
    user = USERS[2]
    person = WebUser(b2c_app.url)
    assert reset_password(person, person.get("/password/reset"), user).status_code == 302

    first = person.get("/call_downstream_api")
    assert first.status_code == 302
    assert first.headers["Location"].startswith(stand_in.openid_configuration()["authorization_endpoint"])
    profile = person.http.get(f"{b2c_app.url}/call_downstream_api", timeout=30)  # redirects followed
    assert profile.status_code == 200 and user["mail"] in profile.text
    assert urlsplit(profile.url).path == "/call_downstream_api"


def test_an_expired_b2c_id_token_is_renewed_without_an_error_page(b2c_app, stand_in):
    stand_in.id_token_lifetime = -300  # as if the hour had passed: identity renews it on the next page
    person = WebUser(b2c_app.url)
    person.sign_in(USERS[0])
    stand_in.id_token_lifetime = 3600
    home = person.get("/")
    assert home.status_code == 200, f"{home.status_code} {heading(home)}"
    assert signed_in_as(person) == name_of(stand_in, USERS[0])


def test_signing_out_ends_the_b2c_session_and_returns_to_the_app(b2c_app, stand_in):
    person = WebUser(b2c_app.url)
    person.sign_in(USERS[0])
    signed_out = person.sign_out()
    assert signed_out.status_code == 303
    assert signed_out.headers["Location"].startswith(stand_in.openid_configuration()["end_session_endpoint"])
    back = person.http.get(signed_out.headers["Location"], allow_redirects=False, timeout=30)
    assert back.status_code == 302 and back.headers["Location"] == f"{b2c_app.url}/"  # B2C asks nothing
    assert SESSION_COOKIE not in person.http.cookies
    assert not person.is_signed_in()
    # The B2C session is over too: signing in asks for an account again.
    _, request_id, _ = person.start_sign_in()
    assert request_id


def test_make_run_with_local_entra_b2c_serves_the_app_against_a_b2c_stand_in(tmp_path):
    from test_make_run import RunPy

    if (ROOT / ".env").is_file():
        pytest.skip("a .env is present: make run would use Microsoft Entra ID, not the stand-in")
    run = RunPy(tmp_path)
    run.env["LOCAL_ENTRA_B2C"] = "1"
    try:
        run.start()
        assert "stand-in for Azure AD B2C" in run.log()
        login = requests.get(f"http://127.0.0.1:{run.port}/login", allow_redirects=False, timeout=10)
        assert login.status_code == 302
        assert urlsplit(login.headers["Location"]).path == (
            f"/contosob2c.onmicrosoft.com/{SUSI.lower()}/oauth2/v2.0/authorize")
        picker = requests.get(login.headers["Location"], timeout=10)
        assert "Forgot your password?" in picker.text
        run.process.send_signal(signal.SIGTERM)
        run.process.wait(timeout=30)
        wait_for(run.group_is_gone, timeout=10, what="make run's processes to be gone")
    finally:
        run.kill_everything()


# --- Chromium -----------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.slow
def test_chromium_edits_the_profile_through_the_b2c_stand_in(browser, b2c_app, stand_in):
    from playwright.sync_api import expect
    from test_browser import AXE_MISSING, check_accessibility

    if AXE_MISSING:
        unavailable(AXE_MISSING)
    from axe_playwright_python.sync_playwright import Axe

    axe = Axe()
    user, new_name = USERS[0], "Priya R. (edited in Chromium)"
    with browser_page(browser, b2c_app.url) as page:
        page.goto("/")
        page.get_by_role("main").get_by_role("link", name="Sign in").click()
        expect(page.get_by_role("heading", name="Pick an account")).to_be_visible()
        expect(page.get_by_role("link", name="Forgot your password?")).to_be_visible()
        check_accessibility(axe, page, "B2C stand-in: sign-up/sign-in")
        page.get_by_role("button", name=re.compile(re.escape(name_of(stand_in, user)))).click()
        page.wait_for_url(f"{b2c_app.url}/")
        header = page.locator("header.site-header")
        expect(header).to_contain_text(f"Signed in as {name_of(stand_in, user)}")

        header.get_by_role("link", name="Edit profile").click()
        expect(page.get_by_role("heading", name="Edit your profile")).to_be_visible()
        assert page.url.startswith(f"{stand_in.front_url}/contosob2c.onmicrosoft.com/{EDIT.lower()}/")
        field = page.get_by_label("Display name")
        expect(field).to_have_value(name_of(stand_in, user))
        screenshot(page, "b2c-01-edit-profile.png")
        check_accessibility(axe, page, "B2C stand-in: edit profile")
        field.fill(new_name)
        with page.expect_response(lambda response: urlsplit(response.url).path == "/getAToken") as callback:
            page.get_by_role("button", name="Continue").click()
        assert callback.value.status == 302  # the callback signs the edit in, back where they were
        page.wait_for_load_state()
        screenshot(page, "b2c-02-after-edit-profile.png")
        page.wait_for_url(f"{b2c_app.url}/")
        expect(header).to_contain_text(f"Signed in as {new_name}")
