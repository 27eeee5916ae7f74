"""Sign-in and sign-out through the real identity/MSAL code, with a mocked identity provider."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from app import create_app
from conftest import AUTHORITY, CLIENT_ID, ME, AuthActions, FakeEntra, fast_config, session_cookie


def test_login_redirects_to_the_authorize_endpoint_with_pkce_state_and_nonce(client, auth):
    params = auth.start()
    assert params["client_id"] == CLIENT_ID
    assert params["redirect_uri"] == "http://localhost/getAToken"
    assert params["response_type"] == "code"
    assert params["code_challenge_method"] == "S256" and params["code_challenge"]
    assert params["state"] and params["nonce"]
    assert params["prompt"] == "select_account"
    assert "User.Read" in params["scope"].split()


def test_full_flow_signs_in_shows_the_user_calls_graph_and_signs_out(client, auth, fake_entra):
    response = auth.sign_in()
    assert response.headers["Location"] == "/"

    home = client.get("/").get_data(as_text=True)
    assert ME["displayName"] in home and ME["userPrincipalName"] in home
    assert "Call the API" in home  # graph.example.test is not Microsoft Graph: see provider.api_name

    profile = client.get("/call_downstream_api")
    assert profile.status_code == 200
    page = profile.get_data(as_text=True)
    assert ME["jobTitle"] in page and ME["officeLocation"] in page
    graph_call = fake_entra.graph_calls()[-1]
    assert graph_call.request.headers["Authorization"] == "Bearer " + fake_entra.issued_access_tokens[-1]

    signed_out = auth.sign_out()
    assert signed_out.status_code == 303
    location = urlsplit(signed_out.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{AUTHORITY}/oauth2/v2.0/logout"
    assert parse_qs(location.query)["post_logout_redirect_uri"] == ["http://localhost/"]
    assert "Sign in" in client.get("/").get_data(as_text=True)
    assert client.get("/call_downstream_api").status_code == 302


def test_sign_in_returns_to_the_page_asked_for(auth):
    response = auth.sign_in(next_path="/call_downstream_api")
    assert response.headers["Location"] == "/call_downstream_api"


@pytest.mark.parametrize("next_path", [
    "https://evil.example/", "//evil.example/", "/\\evil.example", "\\\\evil.example", "http:evil.example",
    "javascript:alert(1)", "/\r\nLocation: https://evil.example", "/\tx", "evil.example", " /x", "/logout",
    "/getAToken?code=x",
])
def test_sign_in_ignores_a_next_link_that_is_not_a_same_origin_path(auth, next_path):
    response = auth.sign_in(next_path=next_path)
    assert response.headers["Location"] == "/"


def test_sign_in_gives_a_new_session_id(app, client, auth):
    auth.sign_in()
    before = client.get_cookie("session").value
    response = auth.sign_in()  # again, in the same browser
    after = session_cookie(response)
    assert after and before not in after
    with app.test_request_context():
        assert app.session_interface._retrieve_session_data(app.session_interface._get_store_id(before)) is None


@pytest.mark.parametrize(("error", "status", "title"), [
    ("access_denied", 403, "Sign-in was cancelled"),
    ("invalid_request", 400, "Sign-in failed"),
    ("server_error", 400, "Sign-in failed"),
])
def test_identity_provider_error_gives_an_auth_error_page(client, auth, error, status, title):
    params = auth.start()
    response = auth.callback(error=error, error_description="AADSTS-<b>described</b>", state=params["state"])
    page = response.get_data(as_text=True)
    assert response.status_code == status
    assert title in page and error in page
    assert "AADSTS-&lt;b&gt;described&lt;/b&gt;" in page
    assert "Signed in as" not in client.get("/").get_data(as_text=True)


def test_token_endpoint_error_gives_an_auth_error_page(client, auth, fake_entra):
    params = auth.start()
    fake_entra.fail_next_token("invalid_grant", "AADSTS54005: OAuth2 Authorization code was already redeemed")
    response = auth.callback(code="used", state=params["state"])
    assert response.status_code == 400
    assert "invalid_grant" in response.get_data(as_text=True)
    assert "Signed in as" not in client.get("/").get_data(as_text=True)


def test_callback_without_a_sign_in_in_progress_is_a_failed_sign_in(client, auth):
    response = auth.callback(code="c", state="s")
    assert response.status_code == 400
    assert "Sign-in could not be completed" in response.get_data(as_text=True)


def test_callback_with_a_state_that_does_not_match_is_refused(client, auth):
    auth.start()
    response = auth.callback(code="c", state="forged")
    assert response.status_code == 400
    assert "Signed in as" not in client.get("/").get_data(as_text=True)


def test_replayed_callback_does_not_sign_in_again(client, auth):
    params = auth.start()
    assert auth.callback(code="c", state=params["state"]).status_code == 302
    auth.sign_out()
    replay = auth.callback(code="c", state=params["state"])
    assert replay.status_code == 400
    assert "Signed in as" not in client.get("/").get_data(as_text=True)


@pytest.mark.parametrize("signed_in", [False, True])
def test_a_code_without_any_sign_in_in_progress_is_a_400_not_an_outage(client, auth, caplog, signed_in):
    if signed_in:
        auth.sign_in()
    with caplog.at_level(logging.WARNING):
        response = client.get("/getAToken", query_string={"code": "abc"})
    assert response.status_code == 400
    assert not [r for r in caplog.records if "not JSON" in r.getMessage()]
    if signed_in:
        assert "already signed in" in response.get_data(as_text=True)


def test_back_to_the_callback_while_signed_in_says_so_and_changes_nothing(client, auth):
    params = auth.start()
    assert auth.callback(code="c", state=params["state"]).status_code == 302
    sid = client.get_cookie("session").value
    replay = auth.callback(code="c", state=params["state"])
    assert replay.status_code == 400
    page = replay.get_data(as_text=True)
    assert "already signed in" in page and 'href="/"' in page
    assert client.get_cookie("session").value == sid
    assert "Signed in as" in client.get("/").get_data(as_text=True)


def test_callback_after_cancel_cannot_be_completed_with_the_same_state(client, auth):
    params = auth.start()
    auth.callback(error="access_denied", state=params["state"])
    response = auth.callback(code="c", state=params["state"])
    assert response.status_code == 400
    assert "Signed in as" not in client.get("/").get_data(as_text=True)


def test_nonce_mismatch_is_refused(client, auth, fake_entra):
    params = auth.start()
    fake_entra.nonce = "another-nonce"
    response = auth.callback(code="c", state=params["state"])
    assert response.status_code == 400
    assert "Signed in as" not in client.get("/").get_data(as_text=True)


@pytest.mark.parametrize("claims", [
    {"aud": "22222222-0000-0000-0000-000000000000"},
    {"iss": "https://login.example.test/another-tenant/v2.0"},
    {"tid": "another-tenant"},
])
def test_id_token_for_another_app_or_issuer_is_refused_and_the_session_cleared(client, auth, fake_entra, claims):
    params = auth.start()
    fake_entra.id_token_overrides = claims
    response = auth.callback(code="c", state=params["state"])
    assert response.status_code == 400
    assert "Sign-in refused" in response.get_data(as_text=True)
    assert "Signed in as" not in client.get("/").get_data(as_text=True)
    assert client.get("/call_downstream_api").status_code == 302


def test_logout_by_get_only_asks_to_confirm(client, auth):
    auth.sign_in()
    page = client.get("/logout")
    assert page.status_code == 200 and "Sign out?" in page.get_data(as_text=True)
    assert "Signed in as" in client.get("/").get_data(as_text=True)


def test_logout_without_csrf_token_changes_nothing(client, auth):
    auth.sign_in()
    response = client.post("/logout")
    assert response.status_code == 400
    assert "Signed in as" in client.get("/").get_data(as_text=True)


def test_second_sign_out_from_a_stale_tab_still_ends_the_entra_session(app, client, auth):
    auth.sign_in()
    stale_token = auth.csrf_token()  # the sign-out form of a second tab, loaded while signed in
    assert auth.sign_out().status_code == 303
    response = client.post("/logout", data={"csrf_token": stale_token})
    assert response.status_code == 303
    assert response.headers["Location"].startswith(FakeEntra.end_session_endpoint)
    assert "Signed in as" not in client.get("/").get_data(as_text=True)


def test_sign_out_without_any_session_goes_to_entra_and_stores_nothing(app, client):
    response = client.post("/logout")
    assert response.status_code == 303
    assert response.headers["Location"].startswith(FakeEntra.end_session_endpoint)
    assert session_cookie(response) is None


def test_a_post_from_another_site_cannot_sign_the_browser_out_of_the_app(app, client, auth):
    auth.sign_in()
    # SameSite=Lax: a form another site submits arrives without the session cookie.
    forged = app.test_client().post("/logout")
    assert session_cookie(forged) is None  # no deletion that would hit the real cookie
    assert "Signed in as" in client.get("/").get_data(as_text=True)

    # A browser that says where the post came from gets the CSRF check regardless.
    flagged = app.test_client().post("/logout", headers={"Sec-Fetch-Site": "cross-site"})
    assert flagged.status_code == 400 and session_cookie(flagged) is None


def test_logout_deletes_the_server_side_session(app, client, auth):
    auth.sign_in()
    sid = client.get_cookie("session").value
    store = app.session_interface
    assert store._retrieve_session_data(store._get_store_id(sid))
    auth.sign_out()
    assert not store._retrieve_session_data(store._get_store_id(sid))


def test_logout_when_the_identity_provider_is_down_still_signs_out_here(tmp_path, fake_entra):
    app = create_app(fast_config(tmp_path))
    client = app.test_client()
    auth = AuthActions(client, fake_entra)
    auth.sign_in()
    fake_entra.rsps.replace(responses.GET, f"{AUTHORITY}/.well-known/openid-configuration",
                            body=requests.ConnectionError("refused"))
    response = auth.sign_out()
    assert response.status_code == 503
    assert "Signed out of this app only" in response.get_data(as_text=True)
    assert "Signed in as" not in client.get("/").get_data(as_text=True)


@pytest.mark.parametrize("failure", [requests.ConnectionError("refused"), requests.exceptions.SSLError("bad cert")])
def test_login_when_the_identity_provider_is_unreachable_says_so(tmp_path, fake_entra, failure):
    fake_entra.rsps.replace(responses.GET, f"{AUTHORITY}/v2.0/.well-known/openid-configuration", body=failure)
    client = create_app(fast_config(tmp_path)).test_client()
    response = client.get("/login")
    assert response.status_code == 503
    assert "Microsoft Entra ID can&#39;t be reached" in response.get_data(as_text=True)


def test_token_endpoint_down_at_the_callback_offers_a_new_sign_in(client, auth, fake_entra):
    params = auth.start()
    fake_entra.rsps.replace(responses.POST, fake_entra.token_endpoint, body=requests.ConnectionError("down"))
    response = auth.callback(code="c", state=params["state"])
    assert response.status_code == 503
    page = response.get_data(as_text=True)
    assert 'href="/login"' in page and 'href="/getAToken"' not in page
    assert "Signed in as" not in client.get("/").get_data(as_text=True)


def test_login_when_discovery_answers_5xx_says_so(tmp_path, fake_entra):
    fake_entra.rsps.replace(responses.GET, f"{AUTHORITY}/v2.0/.well-known/openid-configuration", status=502)
    client = create_app(fast_config(tmp_path)).test_client()
    assert client.get("/login").status_code == 503


def test_login_when_discovery_hangs_answers_504(tmp_path, fake_entra):
    fake_entra.rsps.replace(responses.GET, f"{AUTHORITY}/v2.0/.well-known/openid-configuration",
                            body=requests.ReadTimeout("read timed out"))
    client = create_app(fast_config(tmp_path)).test_client()
    assert client.get("/login").status_code == 504


def test_callback_when_the_token_endpoint_is_unreachable_says_so(client, auth, fake_entra):
    params = auth.start()
    fake_entra.rsps.replace(responses.POST, fake_entra.token_endpoint, body=requests.ConnectionError("refused"))
    response = auth.callback(code="c", state=params["state"])
    assert response.status_code == 503
    assert "Signed in as" not in client.get("/").get_data(as_text=True)


@pytest.mark.parametrize("start_first", [True, False])
def test_callback_with_no_parameters_is_a_failed_sign_in(client, auth, start_first):
    if start_first:
        auth.start()
    response = client.get("/getAToken")
    assert response.status_code == 400
    assert "Signed in as" not in client.get("/").get_data(as_text=True)


def test_ungranted_scope_at_sign_in_explains_and_offers_consent(client, auth, fake_entra):
    params = auth.start()
    fake_entra.granted_scope = "openid profile offline_access"  # User.Read was not granted
    response = auth.callback(code="c", state=params["state"])
    assert response.status_code == 403
    page = response.get_data(as_text=True)
    assert "needs your permission" in page and "prompt=consent" in page
    assert "Signed in as" not in client.get("/").get_data(as_text=True)


def test_misspelt_scope_at_sign_in_shows_entra_s_error_instead_of_a_consent_loop(client, auth, fake_entra):
    params = auth.start()
    description = "AADSTS70011: The provided value for the input parameter 'scope' is not valid."
    response = auth.callback(error="invalid_scope", error_description=description, state=params["state"])
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "AADSTS70011" in page and "invalid_scope" in page
    assert "prompt=consent" not in page
    assert "Signed in as" not in client.get("/").get_data(as_text=True)


def test_one_failed_sign_in_does_not_hold_back_everybody_else_s(app, client, auth, fake_entra):
    first = auth.start()
    other = AuthActions(app.test_client(), fake_entra)
    second = other.start()
    fake_entra.fail_next_token("temporarily_unavailable", "AADSTS50196: try again later", status=503)
    assert auth.callback(code="c1", state=first["state"]).status_code == 503

    fake_entra.nonce = second["nonce"]
    assert other.callback(code="c2", state=second["state"]).status_code == 302  # not throttled
    assert len(fake_entra.token_calls()) == 2


def test_a_failed_refresh_is_still_not_retried_at_once_for_that_user(client, auth, fake_entra):
    fake_entra.access_token_lifetime = 60  # every page view refreshes
    auth.sign_in()
    fake_entra.fail_next_token("temporarily_unavailable", "AADSTS50196: try again later", status=503)
    assert client.get("/call_downstream_api").status_code == 503
    calls = len(fake_entra.token_calls())
    assert client.get("/call_downstream_api").status_code == 503  # MSAL's own throttle: no request
    assert len(fake_entra.token_calls()) == calls


def test_home_page_when_the_id_token_expired_and_the_identity_provider_is_down_says_so(client, auth, fake_entra):
    import time

    fake_entra.id_token_overrides = {"exp": int(time.time()) - 3600}  # expired: "/" must refresh it
    auth.sign_in()
    fake_entra.rsps.replace(responses.POST, fake_entra.token_endpoint, body=requests.ConnectionError("down"))
    response = client.get("/")
    assert response.status_code == 503
    assert "Microsoft Entra ID can&#39;t be reached" in response.get_data(as_text=True)


def test_consent_page_after_sign_in_keeps_the_page_asked_for(client, auth, fake_entra):
    params = auth.start(next_path="/call_downstream_api")
    fake_entra.granted_scope = "openid profile offline_access"
    page = auth.callback(code="c", state=params["state"]).get_data(as_text=True)
    assert "next=/call_downstream_api" in page


@pytest.mark.parametrize("body", ["[1, 2]", '{"token_type": "Bearer", "access_token": "x"}', "null",
                                  "<html>502 Bad Gateway</html>", ""])
def test_token_endpoint_answer_that_is_not_oauth_shaped_gives_502(client, auth, fake_entra, body):
    params = auth.start()
    fake_entra.rsps.replace(responses.POST, fake_entra.token_endpoint, body=body, status=200,
                            content_type="application/json")
    response = auth.callback(code="c", state=params["state"])
    assert response.status_code == 502
    assert "answered something unexpected" in response.get_data(as_text=True)
    assert "Signed in as" not in client.get("/").get_data(as_text=True)


@pytest.mark.parametrize("missing", ["iat", "exp", "sub"])
def test_id_token_without_its_basic_claims_is_refused(client, auth, fake_entra, missing):
    params = auth.start()
    fake_entra.id_token_overrides = {missing: None}
    if missing == "sub":
        fake_entra.id_token_overrides["oid"] = None
    response = auth.callback(code="c", state=params["state"])
    assert response.status_code == 400
    assert "Signed in as" not in client.get("/").get_data(as_text=True)


def test_logout_against_a_provider_without_end_session_endpoint_goes_home(tmp_path, fake_entra):
    discovery = {"issuer": "x", "authorization_endpoint": "y", "token_endpoint": "z"}
    fake_entra.rsps.replace(responses.GET, f"{AUTHORITY}/.well-known/openid-configuration", json=discovery)
    client = create_app(fast_config(tmp_path)).test_client()
    auth = AuthActions(client, fake_entra)
    auth.sign_in()
    response = auth.sign_out()
    assert response.status_code == 303 and response.headers["Location"] == "/"
    assert "Signed in as" not in client.get("/").get_data(as_text=True)


def test_a_burst_of_sign_outs_during_an_outage_waits_for_one_timeout_at_most(tmp_path, fake_entra):
    app = create_app(fast_config(tmp_path))
    fake_entra.rsps.replace(responses.GET, f"{AUTHORITY}/.well-known/openid-configuration",
                            body=requests.ReadTimeout("hung"))
    for _ in range(3):
        client = app.test_client()
        auth = AuthActions(client, fake_entra)
        auth.sign_in()
        assert auth.sign_out().status_code == 503
    lookups = [c for c in fake_entra.rsps.calls if c.request.url.endswith("/.well-known/openid-configuration")
               and "/v2.0/" not in c.request.url]
    assert len(lookups) == 1


def test_failed_sign_in_as_someone_else_keeps_the_previous_sign_in(client, auth, fake_entra):
    auth.sign_in()
    params = auth.start()
    fake_entra.fail_next_token("invalid_grant", "AADSTS70008: The provided authorization code has expired")
    assert auth.callback(code="c", state=params["state"]).status_code == 400
    assert ME["displayName"] in client.get("/").get_data(as_text=True)
    assert client.get("/call_downstream_api").status_code == 200


@pytest.mark.parametrize("client_info", ["!", "MQ", "eyJ1aWQiOiJ4In0", "%%%"])
def test_a_damaged_client_info_is_a_400_and_the_sign_in_can_still_complete(client, auth, fake_entra, caplog,
                                                                            client_info):
    # MSAL decodes client_info before it checks the state; no token request is made, so this
    # is a damaged callback (400), not an identity provider that answered badly (502).
    params = auth.start()
    with caplog.at_level(logging.WARNING):
        response = auth.callback(code="c1", state=params["state"], client_info=client_info)
    if client_info == "eyJ1aWQiOiJ4In0":  # valid JSON: MSAL accepts it, the sign-in completes
        assert response.status_code == 302
        return
    assert response.status_code == 400
    assert "Sign-in could not be completed" in response.get_data(as_text=True)
    assert not fake_entra.token_calls()
    assert any("parameter is damaged" in r.getMessage() for r in caplog.records)
    assert not any("not JSON" in r.getMessage() for r in caplog.records)
    # The pending sign-in was not lost: the genuine callback still completes it.
    assert auth.callback(code="c2", state=params["state"]).status_code == 302


@pytest.mark.parametrize(("body", "content_type"), [
    ("<html>maintenance</html>", "text/html"), ("[1, 2]", "application/json"),
    ('{"token_type": "Bearer"}', "application/json"),  # no access_token
    ('{"access_token": "x", "token_type": "Bearer"}', "application/json"),  # no id_token at sign-in
])
def test_a_token_answer_that_is_not_what_oauth_promises_is_a_502(client, auth, fake_entra, body, content_type):
    params = auth.start()
    fake_entra.rsps.replace("POST", fake_entra.token_endpoint, body=body, content_type=content_type)
    response = auth.callback(code="c1", state=params["state"])
    assert response.status_code == 502
    assert "answered something unexpected" in response.get_data(as_text=True)
    assert len(fake_entra.token_calls()) == 1
