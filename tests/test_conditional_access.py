"""Conditional Access and CAE, fast tier: the WWW-Authenticate parser, client capabilities
in every request, silent re-acquire with the claims, interactive re-challenge with claims
and login hint, step-up, and the one guard against sign-in loops."""

from __future__ import annotations

import base64
import json
import logging
from urllib.parse import parse_qs, urlsplit

import pytest

from app import create_app
from claims_challenge import claims_challenge_from
from conftest import AuthActions, FakeEntra, fast_config

CAE_CLAIMS = {"access_token": {"nbf": {"essential": True, "value": "1767225600"}}}
CP1 = {"access_token": {"xms_cc": {"values": ["cp1"]}}}
STEP_UP_CLAIMS = {"access_token": {"capolids": {"essential": True, "values": ["8d3f2c1e-5b7a-4e96-a0c4-2f61d9b7e835"]}}}
LOGIN_HINT = "O.opaque-login-hint"


def b64(claims: dict, *, urlsafe=False, padded=True) -> str:
    raw = json.dumps(claims).encode()
    text = (base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)).decode()
    return text if padded else text.rstrip("=")


def graph_cae_header(claims: dict = CAE_CLAIMS) -> str:
    return ('Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
            'client_id="00000003-0000-0000-c000-000000000000", error="insufficient_claims", '
            f'claims="{b64(claims)}"')


CAE_401 = {"error": {"code": "InvalidAuthenticationToken",
                     "message": "Continuous access evaluation resulted in challenge with result: InteractionRequired"}}


def query_of(location: str) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def claims_of(form_value: str | None) -> dict:
    return json.loads(form_value) if form_value else {}


# --- the header parser --------------------------------------------------------------------

EXPECTED = json.dumps(CAE_CLAIMS, separators=(",", ":"))


@pytest.mark.parametrize("header", [
    graph_cae_header(),
    f'Bearer error="insufficient_claims", claims="{b64(CAE_CLAIMS, padded=False)}"',
    f'Bearer error="insufficient_claims", claims="{b64(CAE_CLAIMS, urlsafe=True, padded=False)}"',
    f'Bearer error="insufficient_claims", claims={b64(CAE_CLAIMS, urlsafe=True, padded=False)}',
    'Bearer error="insufficient_claims", claims="' + json.dumps(CAE_CLAIMS).replace('"', '\\"') + '"',
    f'Basic realm="a, b, error=\\"x\\"", Bearer realm="", error="insufficient_claims", claims="{b64(CAE_CLAIMS)}"',
    f'Bearer realm="x", error="invalid_token", Bearer error="insufficient_claims", claims="{b64(CAE_CLAIMS)}"',
    f'bearer   ERROR = "insufficient_claims" ,CLAIMS="{b64(CAE_CLAIMS)}"',
    f'Bearer realm="with, commas, inside", error="insufficient_claims", claims="{b64(CAE_CLAIMS)}", extra=token',
])
def test_claims_challenges_are_read_in_every_shape_graph_and_others_send(header):
    assert json.loads(claims_challenge_from(header)) == CAE_CLAIMS
    assert claims_challenge_from(header) == EXPECTED


@pytest.mark.parametrize("header", [
    None, "", "Bearer", 'Bearer realm=""', 'Bearer error="invalid_token"',
    'Bearer error="insufficient_claims"',  # no claims
    'Bearer error="insufficient_claims", claims=""',
    'Bearer error="insufficient_claims", claims="!!!not base64!!!"',
    f'Bearer error="insufficient_claims", claims="{base64.b64encode(b"[1,2]").decode()}"',  # not an object
    f'Bearer error="insufficient_claims", claims="{base64.b64encode(b"{}").decode()}"',  # empty
    f'Basic error="insufficient_claims", claims="{b64(CAE_CLAIMS)}"',  # not Bearer
    'Bearer error="insufficient_claims", claims="' + "A" * 20000 + '"',
    'Bearer error="insufficient_claims", claims="unterminated',
    "\x00\x01Bearer,,,,===\"\"\"",
    'Bearer ' + 'a="' * 3000,
])
def test_anything_else_is_no_challenge(header):
    assert claims_challenge_from(header) is None


# --- client capabilities -------------------------------------------------------------------


def test_cp1_is_declared_in_the_authorize_and_every_token_request(client, auth, fake_entra):
    fake_entra.access_token_lifetime = 200  # under MSAL's 5 minutes: every look-up refreshes
    params = auth.start()
    assert claims_of(params.get("claims")) == CP1
    auth.callback(code="c", state=params["state"])
    assert claims_of(fake_entra.token_requests[-1].get("claims")) == CP1
    client.get("/call_downstream_api")
    assert fake_entra.token_requests[-1]["grant_type"] == "refresh_token"
    assert claims_of(fake_entra.token_requests[-1].get("claims")) == CP1


def test_an_empty_client_capabilities_declares_none(tmp_path, fake_entra):
    client = create_app(fast_config(tmp_path, CLIENT_CAPABILITIES=[])).test_client()
    auth = AuthActions(client, fake_entra)
    params = auth.start()
    assert "claims" not in params
    auth.callback(code="c", state=params["state"])
    assert "claims" not in fake_entra.token_requests[-1]


# --- CAE: Graph revokes, the app re-acquires ------------------------------------------------


@pytest.fixture
def signed_in(client, fake_entra):
    fake_entra.id_token_overrides = {"login_hint": LOGIN_HINT}
    AuthActions(client, fake_entra).sign_in()
    return client


def test_a_cae_challenge_is_answered_with_a_silent_refresh_that_carries_the_claims(signed_in, fake_entra):
    assert signed_in.get("/call_downstream_api").status_code == 200
    fake_entra.graph_answers(401, CAE_401, {"WWW-Authenticate": graph_cae_header()})
    response = signed_in.get("/call_downstream_api")
    assert response.status_code == 200
    refresh = fake_entra.token_requests[-1]
    assert refresh["grant_type"] == "refresh_token"
    assert claims_of(refresh["claims"]) == {"access_token": {**CAE_CLAIMS["access_token"], **CP1["access_token"]}}
    assert fake_entra.graph_calls()[-1].request.headers["Authorization"] == (
        f"Bearer {fake_entra.issued_access_tokens[-1]}")


def test_a_cae_challenge_that_needs_the_user_sends_them_to_sign_in_with_claims_and_hint(signed_in, fake_entra):
    fake_entra.graph_answers(401, CAE_401, {"WWW-Authenticate": graph_cae_header()})
    fake_entra.fail_next_token("interaction_required", "AADSTS50173: The provided grant has expired")
    response = signed_in.get("/call_downstream_api")
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(FakeEntra.authorize_endpoint)
    query = query_of(location)
    assert claims_of(query["claims"]) == {"access_token": {**CAE_CLAIMS["access_token"], **CP1["access_token"]}}
    assert query["login_hint"] == LOGIN_HINT and "prompt" not in query  # no account picker

    # After that sign-in, back on the page that needed it.
    fake_entra.nonce = query["nonce"]
    back = signed_in.get("/getAToken", query_string={"code": "c2", "state": query["state"]})
    assert back.status_code == 302 and back.headers["Location"] == "/call_downstream_api"
    assert signed_in.get("/call_downstream_api").status_code == 200


def test_a_silent_token_that_is_challenged_again_means_signing_in_again(signed_in, fake_entra):
    for _ in range(2):
        fake_entra.graph_answers(401, CAE_401, {"WWW-Authenticate": graph_cae_header()})
    response = signed_in.get("/call_downstream_api")
    assert response.status_code == 302
    query = query_of(response.headers["Location"])
    assert "nbf" in claims_of(query["claims"])["access_token"] and query["login_hint"] == LOGIN_HINT


def test_the_same_challenge_right_after_a_sign_in_that_carried_it_is_a_page_not_a_loop(signed_in, fake_entra):
    fake_entra.graph_answers(401, CAE_401, {"WWW-Authenticate": graph_cae_header()})
    fake_entra.fail_next_token("interaction_required", "AADSTS50173")
    query = query_of(signed_in.get("/call_downstream_api").headers["Location"])
    fake_entra.nonce = query["nonce"]
    assert signed_in.get("/getAToken", query_string={"code": "c2", "state": query["state"]}).status_code == 302

    for _ in range(2):  # the policy is still not satisfied
        fake_entra.graph_answers(401, CAE_401, {"WWW-Authenticate": graph_cae_header()})
    response = signed_in.get("/call_downstream_api")
    assert response.status_code == 403
    page = response.get_data(as_text=True)
    assert "policy could not be satisfied" in page and "administrator" in page


# --- step-up: a refresh answered with interaction_required and claims -----------------------


def test_step_up_sends_the_user_to_sign_in_with_the_policy_s_claims(client, fake_entra):
    fake_entra.access_token_lifetime = 200  # under MSAL's 5 minutes: every look-up refreshes
    fake_entra.id_token_overrides = {"login_hint": LOGIN_HINT}
    AuthActions(client, fake_entra).sign_in()
    fake_entra.fail_next_token("interaction_required", "AADSTS50076: you must use multi-factor authentication",
                               claims=json.dumps(STEP_UP_CLAIMS), suberror="basic_action")
    response = client.get("/call_downstream_api")
    assert response.status_code == 302
    query = query_of(response.headers["Location"])
    claims = claims_of(query["claims"])
    assert claims["access_token"]["capolids"] == STEP_UP_CLAIMS["access_token"]["capolids"]
    assert claims["access_token"]["xms_cc"] == CP1["access_token"]["xms_cc"]
    assert query["login_hint"] == LOGIN_HINT and "prompt" not in query


def test_step_up_answered_as_invalid_grant_with_claims_is_handled_alike(client, fake_entra):
    fake_entra.access_token_lifetime = 200
    AuthActions(client, fake_entra).sign_in()
    fake_entra.fail_next_token("invalid_grant", "AADSTS50076", claims=json.dumps(STEP_UP_CLAIMS))
    query = query_of(client.get("/call_downstream_api").headers["Location"])
    assert "capolids" in claims_of(query["claims"])["access_token"]
    assert query["login_hint"] == fake_entra.user["preferred_username"]  # no login_hint claim: the UPN


# --- one loop guard for every path ----------------------------------------------------------


def api_page_through_sign_ins(client, fake_entra, before_each_view, tries: int = 4):
    """Open the API page, following every "sign in again" through a sign-in, as a browser
    whose provider session signs it in silently would. Returns (statuses, last response)."""
    statuses = []
    for _ in range(tries):
        before_each_view()
        response = client.get("/call_downstream_api")
        statuses.append(response.status_code)
        if response.status_code != 302:
            break
        query = query_of(response.headers["Location"])
        fake_entra.nonce = query["nonce"]
        assert client.get("/getAToken", query_string={"code": "c", "state": query["state"]}).status_code == 302
    return statuses, response


def test_a_plain_401_after_a_fresh_token_signs_in_at_most_twice_then_explains(signed_in, fake_entra):
    def graph_refuses_every_token():
        for _ in range(2):
            fake_entra.graph_answers(401, {"error": {"code": "InvalidAuthenticationToken", "message": "Audience"}})

    statuses, response = api_page_through_sign_ins(signed_in, fake_entra, graph_refuses_every_token)
    assert statuses == [302, 302, 502]
    assert "did not accept the access token" in response.get_data(as_text=True)


def test_no_token_after_every_sign_in_stops_after_two_round_trips(client, fake_entra):
    # A provider that grants no refresh token, and an access token that always looks expired
    # (clock skew): every page view needs a new sign-in.
    fake_entra.access_token_lifetime = 200
    AuthActions(client, fake_entra).sign_in()
    statuses, response = api_page_through_sign_ins(client, fake_entra, lambda: fake_entra.fail_next_token(
        "invalid_grant", "AADSTS700082: The refresh token has expired"))
    assert statuses == [302, 302, 502]
    assert "did not give the app a token" in response.get_data(as_text=True)


def test_the_consent_link_carries_the_login_hint(signed_in, fake_entra):
    fake_entra.fail_next_token("consent_required", "AADSTS65001: consent")
    fake_entra.access_token_lifetime = 200
    page = signed_in.get("/login", query_string={"prompt": "consent", "next": "/call_downstream_api"})
    query = query_of(page.headers["Location"])
    assert query["prompt"] == "consent" and query["login_hint"] == LOGIN_HINT


def test_nothing_of_a_challenge_reaches_the_logs(signed_in, fake_entra, caplog):
    fake_entra.graph_answers(401, CAE_401, {"WWW-Authenticate": graph_cae_header()})
    fake_entra.fail_next_token("interaction_required", "AADSTS50173")
    with caplog.at_level(logging.DEBUG):
        signed_in.get("/call_downstream_api")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert b64(CAE_CLAIMS) not in text and "1767225600" not in text
