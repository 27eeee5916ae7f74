"""Conditional Access and CAE for real: the app under gunicorn against the local stand-in over
TLS, whose Graph revokes tokens (CAE) and whose token endpoint asks for MFA (step-up).

Real tier with `requests` (WebUser), and one Chromium test (browser tier) walking a person
through a CAE revocation and a step-up without ever seeing the account picker.
"""

from __future__ import annotations

import base64
import json
import re
import time

import pytest

from live import WebUser, browser_page, follow_hinted_sign_in, query_of, screenshot
from local_entra import USERS
from local_entra import claims as stand_in_claims
from local_entra.sso import login_hint

ADELE, BOB = USERS[0], USERS[1]
API = "/call_downstream_api"
POLICY_PAGE = "policy could not be satisfied"
CP1 = {"values": ["cp1"]}


@pytest.fixture
def person(live_app, fresh_stand_in):
    fresh_stand_in.reset_counters()  # recorded requests from here on only
    return WebUser(live_app.url)


def expected_hint(user: dict, stand_in) -> str:
    return login_hint(user["id"], stand_in.tenant_id)


def requested_claims(raw: str | None) -> dict:
    return json.loads(raw)["access_token"] if raw else {}


def signed_in_with_profile(person: WebUser, user: dict) -> None:
    assert person.sign_in(user).status_code == 302
    profile = person.get(API)
    assert profile.status_code == 200 and user["jobTitle"] in profile.text, profile.text[:300]


# --- (a) CAE: Graph revokes, the app re-acquires silently ------------------------------------


@pytest.mark.real
def test_a_cae_revocation_is_answered_silently_with_a_token_that_carries_the_challenge(person, stand_in):
    signed_in_with_profile(person, ADELE)
    stand_in.reset_counters()
    revoked_at = stand_in.cae_revoke()

    profile = person.get(API)
    assert profile.status_code == 200, profile.text[:300]
    assert ADELE["jobTitle"] in profile.text
    # Graph refused the old token (CAE 401), took the new one; the person saw nothing of it.
    assert stand_in.counters["graph"] == 2
    assert stand_in.authorize_requests == []
    [refresh] = stand_in.token_requests
    assert refresh["grant_type"] == "refresh_token"
    claims = requested_claims(refresh["claims"])
    assert claims["nbf"] == {"essential": True, "value": str(revoked_at)}  # Graph's challenge, as sent
    assert claims["xms_cc"] == CP1  # merged with the capability

    # The answered token sticks: the next view needs no token request and no second try.
    stand_in.reset_counters()
    assert person.get(API).status_code == 200
    assert stand_in.counters["token"] == 0 and stand_in.counters["graph"] == 1


# --- (b) step-up: a refresh answered interaction_required with claims --------------------------


@pytest.mark.real
def test_step_up_goes_straight_to_the_stand_in_with_the_policy_and_hint_and_back_to_the_api(
        person, stand_in, live_app):
    stand_in.access_token_lifetime = 60  # under MSAL's 5-minute margin: every view refreshes
    signed_in_with_profile(person, BOB)
    stand_in.require_step_up()
    stand_in.reset_counters()

    response = person.get(API)
    assert response.status_code == 302, response.text[:300]
    authorize = response.headers["Location"]
    assert authorize.startswith(stand_in.authorization_endpoint + "?")
    query = query_of(authorize)
    claims = requested_claims(query["claims"])
    assert claims["capolids"] == {"essential": True, "values": [stand_in_claims.STEP_UP_POLICY_ID]}
    assert claims["xms_cc"] == CP1
    assert query["login_hint"] == expected_hint(BOB, stand_in)
    assert "prompt" not in query  # no account picker

    back = follow_hinted_sign_in(person, authorize)  # asserts the stand-in asked nothing
    assert back.status_code == 302 and back.headers["Location"] == API
    profile = person.get(API)
    assert profile.status_code == 200 and BOB["jobTitle"] in profile.text
    assert ADELE["displayName"] not in profile.text
    # The stand-in saw exactly one sign-in, carrying the policy, for the same person.
    [sign_in] = stand_in.authorize_requests
    assert sign_in["prompt"] is None and sign_in["login_hint"] == expected_hint(BOB, stand_in)
    assert stand_in_claims.STEP_UP_POLICY_ID in sign_in["claims"]
    # And the stepped-up session refreshes without being asked again.
    assert person.get(API).status_code == 200


# --- (c) a policy that cannot be satisfied: the loop guard -------------------------------------


@pytest.mark.real
@pytest.mark.parametrize(("challenge", "round_trips"), [
    ("the same challenge every time", 1),
    ("a new challenge after every sign-in", 2),
])
def test_a_policy_that_cannot_be_satisfied_ends_on_the_policy_page_after_at_most_two_sign_ins(
        person, stand_in, challenge, round_trips):
    signed_in_with_profile(person, ADELE)
    stand_in.reset_counters()
    # A revocation instant in the future: every token the stand-in can issue now was issued
    # before it, so Graph challenges each one, whatever claims it answered.
    instant = stand_in.cae_revoke(at=int(time.time()) + 3600)

    sign_ins = 0
    response = person.get(API)
    while response.status_code == 302 and sign_ins < 5:
        location = response.headers["Location"]
        assert location.startswith(stand_in.authorization_endpoint + "?"), location
        query = query_of(location)
        assert requested_claims(query["claims"])["nbf"]["value"] == str(instant)
        assert query["login_hint"] == expected_hint(ADELE, stand_in) and "prompt" not in query
        back = follow_hinted_sign_in(person, location)
        assert back.status_code == 302 and back.headers["Location"] == API
        sign_ins += 1
        if challenge == "a new challenge after every sign-in":
            instant = stand_in.cae_revoke(at=instant + 1)
        response = person.get(API)

    assert response.status_code == 403, (sign_ins, response.status_code, response.text[:300])
    assert POLICY_PAGE in response.text
    assert sign_ins == round_trips <= 2
    assert len(stand_in.authorize_requests) == sign_ins
    # The person is still signed in; only the API page is refused.
    assert person.is_signed_in()


# --- (d) nothing of a challenge or a token in the app's log ------------------------------------


# What a claims value or a token looks like in a log line: a JWT, a stand-in code or refresh
# token, the JSON members of a claims request.
LEAK_PATTERNS = [re.compile(p) for p in (
    r"eyJ[\w-]{8,}\.", r"0\.local\.", r"1\.local\.", r'"nbf"', r"capolids", r"xms_cc", r"essential",
    r"insufficient_claims\"?,? *claims=\"?[A-Za-z0-9+/=]{8,}",
)]


@pytest.mark.real
def test_the_app_log_holds_no_claims_value_hint_code_or_token(person, stand_in, live_app):
    log_start = len(live_app.logs())
    stand_in.access_token_lifetime = 60
    signed_in_with_profile(person, ADELE)
    # CAE, answered silently.
    revoked_at = stand_in.cae_revoke()
    assert person.get(API).status_code == 200
    # Step-up: one hinted sign-in with the policy's claims.
    stand_in.require_step_up()
    response = person.get(API)
    assert response.status_code == 302
    follow_hinted_sign_in(person, response.headers["Location"])
    assert person.get(API).status_code == 200
    # A revocation nobody can satisfy: the loop guard's page (its warning is logged).
    stand_in.clear_faults()
    never = stand_in.cae_revoke(at=int(time.time()) + 7200)
    response = person.get(API)
    assert response.status_code == 302
    follow_hinted_sign_in(person, response.headers["Location"])
    assert person.get(API).status_code == 403

    log = live_app.logs()[log_start:]
    assert "Sign-in loop stopped" in log  # the log did get the story
    secrets = {
        "the CAE challenge (as Graph sends it)": stand_in_claims.cae_challenge_header_value(revoked_at),
        "the unsatisfiable CAE challenge": stand_in_claims.cae_challenge_header_value(never),
        "the revocation instant": str(revoked_at),
        "the unsatisfiable instant": str(never),
        "the step-up policy id": stand_in_claims.STEP_UP_POLICY_ID,
        "the step-up claims": stand_in_claims.step_up_challenge(),
        "the login hint": expected_hint(ADELE, stand_in),
        "the client secret": stand_in.client_secret,
        **{f"authorization code {i}": code for i, code in enumerate(person.codes_seen)},
    }
    assert person.codes_seen, "no code was seen: the scenario did not run"
    leaked = [name for name, value in secrets.items() if value in log]
    leaked += [p.pattern for p in LEAK_PATTERNS if p.search(log)]
    assert not leaked, f"found in the app's log: {leaked}"


def test_the_leak_patterns_find_what_they_look_for():
    """The log check above is only as good as its patterns: each finds a real sample."""
    now = int(time.time())
    samples = [
        "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
        "code=0.local.abc", "refresh_token=1.local.abc",
        stand_in_claims.cae_challenge(now), stand_in_claims.step_up_challenge(),
        json.dumps({"access_token": {"xms_cc": {"values": ["cp1"]}}}),
        f'error="insufficient_claims", claims="{stand_in_claims.cae_challenge_header_value(now)}"',
    ]
    for sample in samples:
        assert any(p.search(sample) for p in LEAK_PATTERNS), sample
    assert base64.b64decode(stand_in_claims.cae_challenge_header_value(now)).decode() == (
        stand_in_claims.cae_challenge(now))


# --- Chromium: a revocation and a step-up, without the account picker --------------------------



@pytest.fixture
def page(browser, live_app, fresh_stand_in):
    with browser_page(browser, live_app.url) as new_page:
        yield new_page


@pytest.mark.browser
def test_chromium_keeps_the_profile_through_a_cae_revocation_and_steps_up_without_the_picker(
        page, live_app, stand_in):
    from playwright.sync_api import expect

    stand_in.access_token_lifetime = 60  # every view refreshes: a step-up is noticed at once
    profile_card = page.locator("section.profile")

    page.goto("/")
    page.get_by_role("main").get_by_role("link", name="Sign in").click()
    expect(page.get_by_role("heading", name="Pick an account")).to_be_visible()
    page.get_by_role("button", name=re.compile(re.escape(ADELE["displayName"]))).click()
    page.wait_for_url(f"{live_app.url}/")
    page.goto(API)
    expect(profile_card.get_by_role("heading", level=1)).to_have_text(ADELE["displayName"])

    stand_in.reset_counters()
    stand_in.cae_revoke()
    page.reload()
    expect(profile_card.get_by_role("heading", level=1)).to_have_text(ADELE["displayName"])
    expect(profile_card).to_contain_text(ADELE["jobTitle"])
    assert stand_in.authorize_requests == []  # answered silently
    assert any(r["claims"] and '"nbf"' in r["claims"] for r in stand_in.token_requests)
    screenshot(page, "policies-01-profile-after-cae-revocation.png")

    stand_in.require_step_up()
    stand_in.reset_counters()
    at_stand_in = []
    page.on("response", lambda r: at_stand_in.append((r.status, r.url))
            if r.url.startswith(stand_in.authorization_endpoint) else None)
    page.goto(API)
    page.wait_for_url(f"{live_app.url}{API}")
    expect(profile_card.get_by_role("heading", level=1)).to_have_text(ADELE["displayName"])
    expect(profile_card).to_contain_text(ADELE["jobTitle"])
    expect(page.get_by_role("heading", name="Pick an account")).to_have_count(0)
    # Through the stand-in once, answered with a redirect: no page was shown there.
    assert [status for status, _ in at_stand_in] == [302], at_stand_in
    [sign_in] = stand_in.authorize_requests
    assert sign_in["login_hint"] == expected_hint(ADELE, stand_in) and sign_in["prompt"] is None
    assert stand_in_claims.STEP_UP_POLICY_ID in sign_in["claims"]
    screenshot(page, "policies-02-profile-after-step-up.png")
