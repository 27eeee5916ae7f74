"""Sign-out from anywhere (OpenID Connect Front-Channel Logout 1.0), fast tier: the sid
index, the front-channel route's answers and headers, and the end-session URL's hint."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

from app import create_app
from conftest import AUTHORITY, CLIENT_ID, ISSUER, AuthActions, FakeEntra, fast_config, home_page_shows_signed_in

FRONTCHANNEL = "/logout/frontchannel"


def sign_in(app, fake_entra, sid: str, user: dict | None = None, login_hint: str | None = None):
    """A new browser signed in through the provider session `sid`."""
    browser = app.test_client()
    fake_entra.id_token_overrides = {"sid": sid, **({"login_hint": login_hint} if login_hint else {})}
    if user:
        fake_entra.user = user
    AuthActions(browser, fake_entra).sign_in()
    fake_entra.id_token_overrides = {}
    return browser


BOB = {"oid": "00000000-0000-0000-0000-0000000000bb", "name": "Bob", "preferred_username": "bob@x"}


def test_a_front_channel_request_ends_exactly_the_sessions_of_that_sid(app, fake_entra):
    adele_sid, bob_sid = str(uuid.uuid4()), str(uuid.uuid4())
    adele_laptop = sign_in(app, fake_entra, adele_sid)
    adele_phone = sign_in(app, fake_entra, adele_sid)  # the same provider session, two browsers
    adele_elsewhere = sign_in(app, fake_entra, str(uuid.uuid4()))  # another provider session
    bob = sign_in(app, fake_entra, bob_sid, user=BOB)

    iframe = app.test_client()  # the provider's page: no cookie of ours
    response = iframe.get(FRONTCHANNEL, query_string={"sid": adele_sid})
    assert response.status_code == 200

    assert not home_page_shows_signed_in(adele_laptop) and not home_page_shows_signed_in(adele_phone)
    assert home_page_shows_signed_in(adele_elsewhere) and home_page_shows_signed_in(bob)
    assert adele_laptop.get("/call_downstream_api").status_code == 302  # to sign in


def test_the_index_is_written_at_sign_in_and_removed_at_sign_out(app, fake_entra):
    sid = str(uuid.uuid4())
    browser = sign_in(app, fake_entra, sid)
    index = app.session_interface.sid_index
    store_id = app.session_interface._get_store_id(browser.get_cookie("session").value)
    assert index.members(sid) == [store_id]
    AuthActions(browser, fake_entra).sign_out()
    assert index.members(sid) == []


def test_with_iss_only_sessions_from_that_issuer_end(app, fake_entra):
    sid = str(uuid.uuid4())
    browser = sign_in(app, fake_entra, sid)
    other_issuer = "https://other.example/tenant/v2.0"
    assert app.test_client().get(FRONTCHANNEL, query_string={"sid": sid, "iss": other_issuer}).status_code == 200
    assert home_page_shows_signed_in(browser)
    assert app.test_client().get(FRONTCHANNEL, query_string={"sid": sid, "iss": ISSUER}).status_code == 200
    assert not home_page_shows_signed_in(browser)


def test_an_unknown_sid_changes_nothing(app, fake_entra):
    browser = sign_in(app, fake_entra, str(uuid.uuid4()))
    assert app.test_client().get(FRONTCHANNEL, query_string={"sid": str(uuid.uuid4())}).status_code == 200
    assert home_page_shows_signed_in(browser)


@pytest.mark.parametrize("query", [
    {},  # no sid
    {"sid": ""},
    {"sid": "x" * 257},
    {"sid": "a\nb"},
    {"sid": "<script>"},
    {"sid": "ok", "iss": "http://plain.example/"},
    {"sid": "ok", "iss": "https://" + "a" * 3000},
    {"sid": "ok", "iss": "not a url"},
])
def test_missing_malformed_or_oversized_parameters_are_a_400(app, fake_entra, query):
    browser = sign_in(app, fake_entra, "ok")
    response = app.test_client().get(FRONTCHANNEL, query_string=query)
    assert response.status_code == 400
    assert "<script>" not in response.get_data(as_text=True)
    assert home_page_shows_signed_in(browser)


def test_a_repeated_sid_parameter_is_a_400(app, fake_entra):
    assert app.test_client().get(f"{FRONTCHANNEL}?sid=a&sid=b").status_code == 400


def test_the_route_may_be_framed_by_the_identity_provider_only_and_is_never_cached(app, fake_entra):
    response = app.test_client().get(FRONTCHANNEL, query_string={"sid": "x"})
    policy = response.headers["Content-Security-Policy"]
    assert "frame-ancestors https://login.example.test" in policy and "'none'" not in policy.split(
        "frame-ancestors")[1].split(";")[0]
    assert "X-Frame-Options" not in response.headers
    assert response.headers["Cache-Control"] == "no-store"
    # Every other route keeps refusing to be framed.
    home = app.test_client().get("/")
    assert "frame-ancestors 'none'" in home.headers["Content-Security-Policy"]
    assert home.headers["X-Frame-Options"] == "DENY"


def test_the_route_needs_no_csrf_token_and_changes_nothing_else(app, fake_entra):
    browser = sign_in(app, fake_entra, "s1")
    response = browser.get(FRONTCHANNEL, query_string={"sid": "unknown"})  # even with our cookie
    assert response.status_code == 200 and not response.headers.getlist("Set-Cookie")
    assert home_page_shows_signed_in(browser)


def test_a_store_outage_is_a_503(tmp_path, fake_entra):
    import shutil

    app = create_app(fast_config(tmp_path))
    sign_in(app, fake_entra, "s1")
    directory = tmp_path / "sessions"
    shutil.rmtree(directory)
    directory.write_text("not a directory any more")
    response = app.test_client().get(FRONTCHANNEL, query_string={"sid": "s1"})
    assert response.status_code == 503


def test_the_path_is_configurable_and_checked(tmp_path, fake_entra):
    app = create_app(fast_config(tmp_path, FRONTCHANNEL_LOGOUT_PATH="/signout-oidc"))
    assert app.test_client().get("/signout-oidc", query_string={"sid": "x"}).status_code == 200
    broken = create_app(fast_config(tmp_path, FRONTCHANNEL_LOGOUT_PATH="/getAToken"))
    assert "FRONTCHANNEL_LOGOUT_PATH" in broken.test_client().get("/").get_data(as_text=True)


# --- the app's own sign-out: no account picker ---------------------------------------


def test_sign_out_url_is_encoded_and_carries_client_id_and_the_login_hint(app, fake_entra):
    browser = sign_in(app, fake_entra, "s1", login_hint="O.aX0yZ-opaque+hint/==")
    response = AuthActions(browser, fake_entra).sign_out()
    assert response.status_code == 303
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == FakeEntra.end_session_endpoint
    query = parse_qs(location.query, strict_parsing=True)
    assert query == {"post_logout_redirect_uri": ["http://localhost/"], "client_id": [CLIENT_ID],
                     "logout_hint": ["O.aX0yZ-opaque+hint/=="]}
    assert "http%3A%2F%2Flocalhost%2F" in location.query  # encoded, not concatenated


def test_sign_out_without_a_login_hint_claim_sends_no_hint(app, fake_entra):
    browser = sign_in(app, fake_entra, "s1")
    location = AuthActions(browser, fake_entra).sign_out().headers["Location"]
    assert "logout_hint" not in location and AUTHORITY in location
