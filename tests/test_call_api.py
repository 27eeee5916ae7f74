"""/call_downstream_api: token from the session's cache, Graph called with it, every answer handled."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from app import create_app
from conftest import AUTHORITY, ME, AuthActions, FakeEntra, fast_config


@pytest.fixture
def signed_in_client(client, auth):
    auth.sign_in()
    return client


def test_signed_out_user_is_sent_to_sign_in_and_brought_back(client, auth, fake_entra):
    response = client.get("/call_downstream_api")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=/call_downstream_api"
    assert not fake_entra.graph_calls()


def test_profile_card_shows_the_fields_that_are_present_and_the_whole_json(signed_in_client, fake_entra):
    fake_entra.graph_answers(200, {"displayName": "Only Name", "userPrincipalName": "only@contoso.example",
                                   "businessPhones": [], "id": "abc"})
    page = signed_in_client.get("/call_downstream_api").get_data(as_text=True)
    assert "Only Name" in page and "only@contoso.example" in page
    assert "Job title" not in page and "Business phones" not in page
    assert "&#34;userPrincipalName&#34;: &#34;only@contoso.example&#34;" in page


def test_html_in_a_graph_field_is_escaped(signed_in_client, fake_entra):
    fake_entra.graph_answers(200, {**ME, "displayName": "<script>alert(1)</script>", "jobTitle": "<img src=x>"})
    page = signed_in_client.get("/call_downstream_api").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "<img src=x>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_steady_state_page_view_asks_the_token_endpoint_nothing(signed_in_client, fake_entra):
    token_calls = len(fake_entra.token_calls())
    for _ in range(3):
        assert signed_in_client.get("/call_downstream_api").status_code == 200
    assert len(fake_entra.token_calls()) == token_calls
    assert len(fake_entra.graph_calls()) == 3


def test_short_lived_access_token_is_refreshed_silently_on_each_call(client, auth, fake_entra):
    fake_entra.access_token_lifetime = 60  # under MSAL's 5-minute margin: refreshed on every call
    auth.sign_in()
    for expected_refreshes in (1, 2):
        assert client.get("/call_downstream_api").status_code == 200
        refreshes = [r for r in fake_entra.token_requests if r["grant_type"] == "refresh_token"]
        assert len(refreshes) == expected_refreshes
        sent = fake_entra.graph_calls()[-1].request.headers["Authorization"]
        assert sent == "Bearer " + fake_entra.issued_access_tokens[-1]
    # rotated: each refresh used the refresh token the previous answer issued
    assert refreshes[1]["refresh_token"] == fake_entra.issued_refresh_tokens[-2]


def test_graph_401_is_retried_once_with_a_refreshed_token(signed_in_client, fake_entra):
    fake_entra.graph_answers(401, {"error": {"code": "InvalidAuthenticationToken", "message": "expired"}})
    token_calls = len(fake_entra.token_calls())
    response = signed_in_client.get("/call_downstream_api")
    assert response.status_code == 200
    assert len(fake_entra.token_calls()) == token_calls + 1
    assert fake_entra.token_requests[-1]["grant_type"] == "refresh_token"
    assert fake_entra.graph_calls()[-1].request.headers["Authorization"].endswith(fake_entra.issued_access_tokens[-1])


def signs_in_again_as_the_same_user(response, fake_entra) -> bool:
    """A redirect straight to the authorize endpoint with the user's hint and no account picker."""
    location = response.headers["Location"]
    query = parse_qs(urlsplit(location).query)
    return (response.status_code == 302 and location.startswith(FakeEntra.authorize_endpoint)
            and query["login_hint"] == [fake_entra.user["preferred_username"]] and "prompt" not in query)


def test_graph_401_twice_sends_the_user_to_sign_in(signed_in_client, fake_entra):
    for _ in range(2):
        fake_entra.graph_answers(401, {"error": {"code": "InvalidAuthenticationToken", "message": "no"}})
    response = signed_in_client.get("/call_downstream_api")
    assert signs_in_again_as_the_same_user(response, fake_entra)


def test_graph_403_names_the_missing_permission(signed_in_client, fake_entra):
    fake_entra.graph_answers(403, {"error": {"code": "Authorization_RequestDenied", "message": "Insufficient"}})
    response = signed_in_client.get("/call_downstream_api")
    assert response.status_code == 403
    assert "User.Read" in response.get_data(as_text=True)


@pytest.mark.parametrize("status", [429, 503])
def test_graph_throttling_with_a_short_retry_after_is_retried_once(signed_in_client, fake_entra, monkeypatch, status):
    monkeypatch.setattr("downstream.time.sleep", lambda seconds: None)
    fake_entra.graph_answers(status, {"error": {"code": "TooManyRequests"}}, {"Retry-After": "1"})
    assert signed_in_client.get("/call_downstream_api").status_code == 200
    assert len(fake_entra.graph_calls()) == 2


@pytest.mark.parametrize("status", [429, 503])
def test_graph_throttling_that_persists_gives_503_passing_retry_after_on(
        signed_in_client, fake_entra, monkeypatch, status):
    monkeypatch.setattr("downstream.time.sleep", lambda seconds: None)
    for _ in range(2):
        fake_entra.graph_answers(status, {"error": {"code": "TooManyRequests"}}, {"Retry-After": "1"})
    response = signed_in_client.get("/call_downstream_api")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "try again in 1 s" in response.get_data(as_text=True)


def test_graph_throttling_with_a_long_retry_after_is_not_waited_for(signed_in_client, fake_entra):
    fake_entra.graph_answers(429, {"error": {"code": "TooManyRequests"}}, {"Retry-After": "30"})
    response = signed_in_client.get("/call_downstream_api")
    assert response.status_code == 503 and response.headers["Retry-After"] == "30"
    assert len(fake_entra.graph_calls()) == 1


@pytest.mark.parametrize("status", [500, 502, 504])
def test_graph_server_error_gives_502(signed_in_client, fake_entra, status):
    fake_entra.graph_answers(status, "<html>oops</html>")
    response = signed_in_client.get("/call_downstream_api")
    assert response.status_code == 502
    assert "oops" not in response.get_data(as_text=True)


def test_graph_timeout_gives_504(signed_in_client, fake_entra):
    fake_entra.graph_answers(200, requests.ReadTimeout("read timed out"))
    assert signed_in_client.get("/call_downstream_api").status_code == 504


def test_graph_unreachable_gives_502(signed_in_client, fake_entra):
    fake_entra.graph_answers(200, requests.ConnectionError("refused"))
    assert signed_in_client.get("/call_downstream_api").status_code == 502


@pytest.mark.parametrize("body", ["not json at all", "[1, 2, 3]", "", "[" * 5000 + "]" * 5000])
def test_graph_answer_that_is_not_a_json_object_gives_502(signed_in_client, fake_entra, body):
    fake_entra.graph_answers(200, body)
    assert signed_in_client.get("/call_downstream_api").status_code == 502


@pytest.mark.parametrize("error", ["interaction_required", "invalid_grant"])
def test_token_error_that_a_new_sign_in_fixes_sends_to_sign_in(signed_in_client, fake_entra, error):
    fake_entra.graph_answers(401, {"error": {"code": "InvalidAuthenticationToken", "message": "revoked"}})
    fake_entra.fail_next_token(error, "AADSTS700082: The refresh token has expired")
    response = signed_in_client.get("/call_downstream_api")
    assert signs_in_again_as_the_same_user(response, fake_entra)


def test_consent_required_explains_and_offers_to_consent(signed_in_client, fake_entra):
    fake_entra.graph_answers(401, {"error": {"code": "InvalidAuthenticationToken", "message": "x"}})
    fake_entra.fail_next_token("invalid_grant", "AADSTS65001: The user or administrator has not consented",
                               suberror="consent_required")
    response = signed_in_client.get("/call_downstream_api")
    assert response.status_code == 403
    page = response.get_data(as_text=True)
    assert "needs your permission" in page and "prompt=consent" in page


def test_misspelt_scope_at_token_time_gives_the_error_page_not_consent(client, auth, fake_entra):
    fake_entra.access_token_lifetime = 60  # so that the page view asks the token endpoint
    auth.sign_in()
    fake_entra.fail_next_token("invalid_scope", "AADSTS70011: The provided value for 'scope' is not valid.")
    response = client.get("/call_downstream_api")
    page = response.get_data(as_text=True)
    assert response.status_code == 502, page[:500]
    assert "AADSTS70011" in page and "prompt=consent" not in page


def test_other_token_errors_give_a_502_page(signed_in_client, fake_entra):
    fake_entra.graph_answers(401, {"error": {"code": "InvalidAuthenticationToken", "message": "x"}})
    fake_entra.fail_next_token("invalid_client", "AADSTS7000215: Invalid client secret provided")
    response = signed_in_client.get("/call_downstream_api")
    assert response.status_code == 502
    assert "invalid_client" in response.get_data(as_text=True)


def test_identity_provider_unreachable_during_refresh_gives_503(signed_in_client, fake_entra):
    fake_entra.graph_answers(401, {"error": {"code": "InvalidAuthenticationToken", "message": "x"}})
    fake_entra.rsps.replace(responses.POST, fake_entra.token_endpoint, body=requests.ConnectionError("down"))
    response = signed_in_client.get("/call_downstream_api")
    assert response.status_code == 503
    assert "Microsoft Entra ID can&#39;t be reached" in response.get_data(as_text=True)


def test_identity_provider_unreachable_at_start_up_gives_503_on_every_route(tmp_path, fake_entra):
    app = create_app(fast_config(tmp_path))
    client = app.test_client()
    AuthActions(client, fake_entra).sign_in()
    # A new process: discovery is not cached yet, and the identity provider is down.
    fake_entra.rsps.replace(responses.GET, f"{AUTHORITY}/v2.0/.well-known/openid-configuration",
                            body=requests.ConnectionError("down"))
    app2 = create_app(fast_config(tmp_path))
    client2 = app2.test_client()
    client2.set_cookie("session", client.get_cookie("session").value)
    assert client2.get("/call_downstream_api").status_code == 503
    assert client2.get("/login").status_code == 503


def test_graph_redirect_is_not_followed_with_the_token(signed_in_client, fake_entra):
    fake_entra.graph_answers(302, "", {"Location": "https://elsewhere.example/steal"})
    response = signed_in_client.get("/call_downstream_api")
    assert response.status_code == 502
    assert len(fake_entra.graph_calls()) == 1


@pytest.mark.parametrize(("retry_after", "expected"), [
    ("99999999999999999999999", "3600"),
    ("Wed, 21 Oct 2015 07:28:00 GMT", "1"),  # a date in the past: try again now
    ("soon", "5"),
    ("\u00b2", "5"),  # a latin-1 superscript two: str.isdigit() says yes, int() says no
    ("\u0661\u0662", "5"),  # Arabic-Indic digits
    ("-1", "5"),
    ("", "5"),
])
def test_graph_retry_after_is_parsed_and_capped(signed_in_client, fake_entra, retry_after, expected):
    for _ in range(2):
        fake_entra.graph_answers(429, {"error": {"code": "TooManyRequests"}}, {"Retry-After": retry_after})
    response = signed_in_client.get("/call_downstream_api")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == expected


@pytest.mark.parametrize(("depth", "status", "expected"), [
    (400, 200, 200), (900, 200, 200),  # parsed and shown
    (5000, 200, 502),  # deeper than the JSON parser goes: "not JSON", not a 500
    (400, 500, 502), (5000, 500, 502),
])
def test_a_deeply_nested_graph_answer_is_a_page_not_a_500(signed_in_client, fake_entra, depth, status, expected):
    nested = '{"a":' * depth + "1" + "}" * depth
    body = nested if status == 500 else '{"displayName": "Deep", "extra": ' + nested + "}"
    fake_entra.graph_answers(status, body, {"Content-Type": "application/json"})
    response = signed_in_client.get("/call_downstream_api")
    assert response.status_code == expected
    page = response.get_data(as_text=True)
    assert ("Deep" in page) == (expected == 200)


def test_an_answer_too_deep_to_indent_is_shown_without_its_json():
    from templating import tojson_pretty

    deep: dict = {}
    for _ in range(100_000):
        deep = {"a": deep}
    assert tojson_pretty(deep) == "(nested too deeply to show)"
