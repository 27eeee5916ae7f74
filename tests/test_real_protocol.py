"""The app under gunicorn against the local stand-in over real HTTP and TLS, driven with requests."""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from live import WebUser
from local_entra import USERS

pytestmark = pytest.mark.real

ADELE, BOB = USERS[0], USERS[1]


@pytest.fixture
def person(live_app, fresh_stand_in):
    return WebUser(live_app.url)


def test_whole_flow_sign_in_profile_sign_out(person, live_app, stand_in):
    response = person.sign_in(ADELE, next_path="/call_downstream_api")
    assert response.status_code == 302 and response.headers["Location"] == "/call_downstream_api"
    assert "session=" in response.headers["Set-Cookie"]

    home = person.get("/")
    assert ADELE["displayName"] in home.text and ADELE["userPrincipalName"] in home.text

    profile = person.get("/call_downstream_api")
    assert profile.status_code == 200
    assert ADELE["displayName"] in profile.text and ADELE["jobTitle"] in profile.text
    assert BOB["displayName"] not in profile.text

    signed_out = person.sign_out()
    assert signed_out.status_code == 303
    end_session = signed_out.headers["Location"]
    assert end_session.startswith(stand_in.front_url)
    assert parse_qs(urlsplit(end_session).query)["post_logout_redirect_uri"] == [f"{live_app.url}/"]
    goodbye = person.http.get(end_session, timeout=10)
    assert goodbye.status_code == 200 and f'href="{live_app.url}/"' in goodbye.text
    assert not person.is_signed_in()


def test_steady_state_page_views_make_no_token_or_discovery_requests(person, stand_in):
    person.sign_in(ADELE)
    person.get("/call_downstream_api")
    stand_in.reset_counters()
    for _ in range(5):
        response = person.get("/call_downstream_api")
        assert response.status_code == 200
        assert "Set-Cookie" not in response.headers
    counters = stand_in.counters
    assert counters["token"] == 0 and counters["discovery"] == 0
    assert counters["graph"] == 5


def test_short_lived_tokens_are_refreshed_on_every_call(person, stand_in):
    stand_in.access_token_lifetime = 60  # under MSAL's 5-minute margin
    person.sign_in(BOB)
    stand_in.reset_counters()
    for _ in range(3):
        response = person.get("/call_downstream_api")
        assert response.status_code == 200 and BOB["displayName"] in response.text
    assert stand_in.counters["token_refresh"] == 3


def test_revoked_refresh_token_sends_the_user_to_sign_in_again(person, stand_in):
    stand_in.access_token_lifetime = 60
    person.sign_in(ADELE)
    stand_in.revoke_refresh_tokens()
    response = person.get("/call_downstream_api")
    assert response.status_code == 302
    # Straight to the stand-in, naming the user: it signs them in without the account picker.
    authorize = response.headers["Location"]
    assert authorize.startswith(stand_in.authorization_endpoint) and "login_hint=" in authorize
    callback = person.http.get(authorize, allow_redirects=False, timeout=30)
    assert callback.status_code in (302, 303)
    again = person.http.get(callback.headers["Location"], allow_redirects=False, timeout=30)
    assert again.headers["Location"] == "/call_downstream_api"
    assert person.get("/call_downstream_api").status_code == 200


def test_cancel_on_the_account_picker_gives_the_auth_error_page(person):
    response = person.cancel_sign_in()
    assert response.status_code == 403
    assert "Sign-in was cancelled" in response.text and "access_denied" in response.text
    assert not person.is_signed_in()


def test_replayed_callback_signs_nobody_in(person, live_app):
    action, request_id, _ = person.start_sign_in()
    callback = person.pick(action, request_id, {"user_id": ADELE["id"]})
    assert person.http.get(callback, allow_redirects=False).status_code == 302
    # Someone else replays the same callback URL (from a log, a proxy, the history).
    attacker = WebUser(live_app.url)
    replay = attacker.http.get(callback, allow_redirects=False)
    assert replay.status_code == 400
    assert not attacker.is_signed_in()
    # And the user who used it once cannot use it again after signing out.
    person.sign_out()
    assert person.http.get(callback, allow_redirects=False).status_code == 400
    assert not person.is_signed_in()


def test_graph_errors_are_pages_with_the_right_status(person, stand_in):
    person.sign_in(ADELE)
    cases = [
        ({"status": 403}, 403),
        ({"status": 500}, 502),
        ({"status": 429, "headers": {"Retry-After": "7"}}, 503),
        ({"status": 200, "body": "<html>not json</html>"}, 502),
    ]
    for fault, expected in cases:
        stand_in.graph_fault(**fault)
        response = person.get("/call_downstream_api")
        assert response.status_code == expected, (fault, response.text[:300])
        assert "Traceback" not in response.text
    assert person.get("/call_downstream_api").status_code == 200


def test_graph_401_is_retried_once_with_a_refreshed_token(person, stand_in):
    person.sign_in(ADELE)
    stand_in.reset_counters()
    stand_in.graph_fault(status=401)
    response = person.get("/call_downstream_api")
    assert response.status_code == 200
    assert stand_in.counters["token_refresh"] == 1 and stand_in.counters["graph"] == 2


def test_identity_provider_down_gives_503_and_back_up_recovers(person, stand_in):
    stand_in.access_token_lifetime = 60
    person.sign_in(ADELE)
    stand_in.stop_idp()
    response = person.get("/call_downstream_api")
    assert response.status_code == 503
    assert "Microsoft Entra ID can&#39;t be reached" in response.text
    stand_in.start_idp()
    assert person.get("/call_downstream_api").status_code == 200


@pytest.mark.slow
def test_hanging_identity_provider_is_answered_within_15_seconds(person, stand_in, live_app):
    stand_in.access_token_lifetime = 60
    person.sign_in(ADELE)
    stand_in.hang_idp(True)
    started = time.monotonic()
    response = person.get("/call_downstream_api", timeout=30)
    elapsed = time.monotonic() - started
    assert response.status_code in (503, 504)
    assert elapsed < 15
    stand_in.hang_idp(False)
    # No worker stayed stuck: the app answers at once. (The released request may have
    # used up the rotating refresh token, in which case the answer is "sign in again".)
    assert person.get("/call_downstream_api", timeout=10).status_code in (200, 302)


@pytest.mark.slow
def test_hanging_identity_provider_never_holds_login_callback_or_logout(stand_in, fresh_stand_in, tmp_path):
    from live import AppServer

    with AppServer(stand_in, tmp_path, name="fresh-app") as app:
        person = WebUser(app.url)
        person.sign_in(ADELE)  # discovery for sign-in is now cached in that process ...
        action, request_id, _ = person.start_sign_in()
        callback = person.pick(action, request_id, {"user_id": BOB["id"]})
        stand_in.hang_idp(True)  # ... but the token endpoint and end-session lookup hang
        for request in (lambda: person.http.get(callback, allow_redirects=False, timeout=30),
                        person.sign_out):
            started = time.monotonic()
            response = request()
            assert time.monotonic() - started < 15
            assert response.status_code in (503, 504), response.text[:300]
        assert not person.is_signed_in()  # sign-out cleared the local session all the same
        with AppServer(stand_in, tmp_path, name="cold-app") as cold:  # nothing cached at all
            started = time.monotonic()
            response = WebUser(cold.url).get("/login", timeout=30)
            assert time.monotonic() - started < 15
            assert response.status_code in (503, 504)


@pytest.mark.slow
def test_no_token_code_or_secret_reaches_the_logs(stand_in, tmp_path):
    from live import AppServer

    with AppServer(stand_in, tmp_path, name="debug-app", env={"LOG_LEVEL": "DEBUG",
                                                              "GUNICORN_LOG_LEVEL": "debug"}) as app:
        person = WebUser(app.url)
        person.sign_in(ADELE, next_path="/call_downstream_api")
        assert person.get("/call_downstream_api").status_code == 200
        stand_in.access_token_lifetime = 60
        person.sign_in(BOB)
        person.get("/call_downstream_api")
        person.get("/call_downstream_api")
        person.sign_out()
        stand_in.access_token_lifetime = 3600
        logs = app.logs()
    assert "DEBUG" in logs  # the test would prove nothing if nothing was logged
    assert not re.search(r"eyJ[\w-]{10,}\.eyJ[\w-]{10,}", logs), "a JWT (id or access token) was logged"
    for code in person.codes_seen:
        assert code not in logs, "an authorization code was logged"
    assert stand_in.settings["CLIENT_SECRET"] not in logs


@pytest.mark.filterwarnings("ignore:http.cookiejar bug")  # the client's cookie jar, not the app
@pytest.mark.parametrize("host", ["xn--zz", "a..b", "x" * 70 + ".example", "[::1", "bad host"])
def test_malformed_host_header_gets_a_page_not_a_server_error(live_app, host):
    import requests

    for path in ("/", "/login", "/nowhere"):
        response = requests.get(f"{live_app.url}{path}", headers={"Host": host}, allow_redirects=False, timeout=10)
        assert response.status_code < 500, (path, host, response.text[:200])
        assert response.headers.get("X-Content-Type-Options") == "nosniff"
    assert "Traceback" not in live_app.logs()


def test_graph_that_does_not_answer_in_time_is_a_timeout_not_an_outage(fresh_stand_in, monkeypatch):
    # Over a real socket: urllib3's retry wrapping once made a read timeout look like a
    # connection failure (502 "can't be reached" instead of 504). A short read timeout
    # keeps the test fast; the app's is 10 s.
    from downstream import DownstreamApi, TimedOut
    from local_entra import USERS

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", fresh_stand_in.settings["REQUESTS_CA_BUNDLE"])
    api = DownstreamApi(fresh_stand_in.settings["ENDPOINT"], timeout=(3.05, 0.5))
    token = fresh_stand_in.mint_access_token(USERS[0]["userPrincipalName"], lifetime=600)
    assert api.get_json(token)["displayName"] == USERS[0]["displayName"]
    fresh_stand_in.graph_fault(status=None, delay=1.5)
    with pytest.raises(TimedOut):
        api.get_json(token)
