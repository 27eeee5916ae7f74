"""The local Entra ID / Graph stand-in, driven over real loopback HTTP and TLS.

MSAL itself redeems the codes and refreshes the tokens, so these tests show
the stand-in speaks the protocol the app's libraries expect.
"""

import base64
import html
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import msal
import pytest
import requests

import app_config
from live import wait_for
from local_entra import USERS, StandIn, b2c
from local_entra import __main__ as local_entra_cli
from local_entra.claims import STEP_UP_POLICY_ID
from local_entra.sso import SESSION_COOKIE
from local_entra.tokens import pkce_s256

# MSAL nudges towards form_post; identity (and so the app) uses the query mode.
pytestmark = pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")

REDIRECT_URI = "http://localhost:5000/getAToken"
SCOPES = ["User.Read"]


@pytest.fixture(scope="module")
def standin():
    s = StandIn(testing=True).start()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def clean_standin(standin):
    """Each test starts with no armed fault, a running IdP and zeroed counters."""
    standin.clear_faults()
    standin.hang_idp(False)
    standin.start_idp()
    standin.reset_counters()
    yield
    standin.clear_faults()
    standin.hang_idp(False)


@pytest.fixture
def http(standin):
    """A pooled client that trusts the stand-in's CA.

    trust_env=False: a REQUESTS_CA_BUNDLE already in the environment would
    otherwise override `verify` for every request.
    """
    session = requests.Session()
    session.trust_env = False
    session.verify = standin.settings["REQUESTS_CA_BUNDLE"]
    yield session
    session.close()


@pytest.fixture
def msal_app(standin, http):
    return msal.ConfidentialClientApplication(
        standin.client_id,
        client_credential=standin.client_secret,
        authority=standin.settings["AUTHORITY"],
        instance_discovery=False,  # as identity does; never ask login.microsoftonline.com
        http_client=http,
    )


@pytest.fixture
def cae_app(standin, http):
    """A client that declares the cp1 capability, as the app does (CLIENT_CAPABILITIES)."""
    return msal.ConfidentialClientApplication(
        standin.client_id, client_credential=standin.client_secret, authority=standin.settings["AUTHORITY"],
        instance_discovery=False, http_client=http, client_capabilities=["cp1"],
    )


class _PickerForm(HTMLParser):
    """Collects the picker form's action, hidden fields and submit buttons."""

    def __init__(self):
        super().__init__()
        self.action, self.hidden, self.buttons = None, {}, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.action = attrs.get("action")
        elif tag == "input" and attrs.get("type") == "hidden":
            self.hidden[attrs["name"]] = attrs.get("value", "")
        elif tag == "button":
            self.buttons.append((attrs.get("name"), attrs.get("value")))


def pick_account(standin, http, auth_uri, user, cancel=False):
    """Open the account picker and press a user's button; return the redirect's query."""
    page = http.get(auth_uri)
    assert page.status_code == 200, page.text
    form = _PickerForm()
    form.feed(page.text)
    assert ("user_id", user["id"]) in form.buttons
    fields = dict(form.hidden, **({"cancel": "1"} if cancel else {"user_id": user["id"]}))
    answer = http.post(standin.front_url + form.action, data=fields, allow_redirects=False)
    assert answer.status_code == 302
    location = urlsplit(answer.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT_URI
    return {key: values[0] for key, values in parse_qs(location.query).items()}


def sign_in(standin, http, msal_app, user=USERS[0], **flow_options):
    flow = msal_app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI, **flow_options)
    result = msal_app.acquire_token_by_auth_code_flow(flow, pick_account(standin, http, flow["auth_uri"], user))
    assert "access_token" in result, result
    return result


def sign_in_with_hint(http, msal_app, login_hint, **flow_options):
    """A hinted sign-in: the authorize request must come straight back with a code."""
    flow = msal_app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI, login_hint=login_hint,
                                            **flow_options)
    answer = http.get(flow["auth_uri"], allow_redirects=False)
    assert answer.status_code == 302, "the account picker was shown"
    query = {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["Location"]).query).items()}
    result = msal_app.acquire_token_by_auth_code_flow(flow, query)
    assert "access_token" in result, result
    return result


def claims_of(token):
    return jwt.decode(token, options={"verify_signature": False})


def end_session_url(standin, **params):
    return f"{standin.front_url}/{standin.tenant_id}/oauth2/v2.0/logout?{urlencode(params)}"


class _Forms(HTMLParser):
    """Every form on a page: its action, hidden fields and iframes' sources."""

    def __init__(self):
        super().__init__()
        self.forms, self.iframes = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.forms.append({"action": attrs.get("action"), "fields": {}})
        elif tag == "input" and attrs.get("type") == "hidden":
            self.forms[-1]["fields"][attrs["name"]] = attrs.get("value", "")
        elif tag == "iframe":
            self.iframes.append(attrs)


def parse_page(text):
    page = _Forms()
    page.feed(text)
    return page


def submit_only_form(standin, http, page_text):
    """Press the one button of a page's one form (the account question, "Sign out everywhere")."""
    (form,) = parse_page(page_text).forms
    return http.post(standin.front_url + form["action"], data=form["fields"], allow_redirects=False)


def raw_authorize(standin, http, verifier="v" * 50, user=USERS[0]):
    """Authorize without MSAL, to control PKCE; return the code."""
    query = urlencode({
        "client_id": standin.client_id, "response_type": "code", "redirect_uri": REDIRECT_URI,
        "scope": "openid profile offline_access User.Read", "state": "s1", "nonce": "n1",
        "code_challenge": pkce_s256(verifier), "code_challenge_method": "S256",
    })
    return pick_account(standin, http, f"{standin.authorization_endpoint}?{query}", user)["code"]


def token_request(standin, http, **form):
    data = {"client_id": standin.client_id, "client_secret": standin.client_secret, **form}
    return http.post(standin.settings["AUTHORITY"] + "/oauth2/v2.0/token", data=data)


def me(standin, http, access_token):
    return http.get(standin.settings["ENDPOINT"], headers={"Authorization": f"Bearer {access_token}"})


# --- discovery and pages ---------------------------------------------------------------


def test_discovery_has_what_msal_and_identity_read(standin, http):
    authority = standin.settings["AUTHORITY"]
    config = http.get(f"{authority}/v2.0/.well-known/openid-configuration").json()
    assert config == http.get(f"{authority}/.well-known/openid-configuration").json()
    assert config["issuer"] == f"{authority}/v2.0"
    assert config["authorization_endpoint"].startswith(standin.front_url)
    assert config["end_session_endpoint"].startswith(standin.front_url)
    assert config["token_endpoint"] == f"{authority}/oauth2/v2.0/token"
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert config["id_token_signing_alg_values_supported"] == ["RS256"]
    keys = http.get(config["jwks_uri"]).json()["keys"]
    assert keys[0]["kty"] == "RSA" and keys[0]["kid"]


def test_unknown_tenant_is_refused_like_entra(standin, http):
    answer = http.get(f"{standin.idp_url}/contoso.invalid/v2.0/.well-known/openid-configuration")
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_tenant"


def test_settings_point_at_the_listeners(standin):
    settings = standin.settings
    assert settings["ENDPOINT"] == f"{standin.graph_url}/v1.0/me"
    assert settings["SCOPE"] == "User.Read"
    assert Path(settings["REQUESTS_CA_BUNDLE"]).read_text().startswith("-----BEGIN CERTIFICATE-----")


def test_picker_page_is_labelled_as_a_stand_in(standin, http, msal_app):
    flow = msal_app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI)
    page = http.get(flow["auth_uri"])
    assert '<html lang="en">' in page.text and "<main" in page.text and "<h1" in page.text
    assert "Local stand-in for Microsoft Entra ID" in page.text
    assert "<script" not in page.text
    for user in USERS:
        assert user["displayName"] in page.text
    css = http.get(standin.front_url + re.search(r'href="([^"]+\.css)"', page.text).group(1))
    assert css.status_code == 200 and "text/css" in css.headers["Content-Type"]


@pytest.mark.parametrize("bad", [{"client_id": "00000000-0000-0000-0000-000000000000"},
                                 {"redirect_uri": "https://evil.example/cb"}])
def test_unknown_client_or_redirect_uri_shows_an_error_page_and_never_redirects(standin, http, bad):
    params = {"client_id": standin.client_id, "redirect_uri": REDIRECT_URI, "response_type": "code",
              "scope": "openid", "code_challenge": "x" * 43, "code_challenge_method": "S256", **bad}
    answer = http.get(standin.authorization_endpoint, params=params, allow_redirects=False)
    assert answer.status_code == 400
    assert "AADSTS" in answer.text


def test_missing_pkce_is_sent_back_to_the_app_as_invalid_request(standin, http):
    params = {"client_id": standin.client_id, "redirect_uri": REDIRECT_URI, "response_type": "code",
              "scope": "openid User.Read", "state": "abc"}
    answer = http.get(standin.authorization_endpoint, params=params, allow_redirects=False)
    query = parse_qs(urlsplit(answer.headers["Location"]).query)
    assert answer.status_code == 302
    assert query["error"] == ["invalid_request"] and query["state"] == ["abc"]


def test_cancel_returns_access_denied_with_the_state(standin, http, msal_app):
    flow = msal_app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI)
    query = pick_account(standin, http, flow["auth_uri"], USERS[0], cancel=True)
    assert query["error"] == "access_denied"
    assert query["error_description"].startswith("AADSTS65004")
    assert query["state"] == flow["state"]


def test_sign_out_page_links_back_only_to_a_registered_origin(standin, http):
    logout = f"{standin.front_url}/{standin.tenant_id}/oauth2/v2.0/logout"
    page = http.get(logout, params={"post_logout_redirect_uri": "http://localhost:5000/"})
    assert "You signed out" in page.text and 'href="http://localhost:5000/"' in page.text
    page = http.get(logout, params={"post_logout_redirect_uri": "http://evil.example/"})
    assert "evil.example" not in page.text
    assert standin.counters["logout"] == 2


# --- the code flow with MSAL ----------------------------------------------------------


def test_msal_signs_in_and_graph_returns_the_picked_user(standin, http, msal_app):
    user = USERS[1]
    result = sign_in(standin, http, msal_app, user)
    claims = result["id_token_claims"]  # MSAL has already checked the nonce
    assert claims["preferred_username"] == user["userPrincipalName"]
    assert claims["aud"] == standin.client_id and claims["iss"] == standin.settings["AUTHORITY"] + "/v2.0"
    assert claims["oid"] == user["id"] and claims["tid"] == standin.tenant_id
    assert "User.Read" in result["scope"].split()
    account = msal_app.get_accounts()[0]
    assert account["home_account_id"] == f"{user['id']}.{standin.tenant_id}"

    profile = me(standin, http, result["access_token"])
    assert profile.status_code == 200
    body = profile.json()
    assert body.pop("@odata.context")
    assert body == user
    counters = standin.counters
    assert counters["token_auth_code"] == 1 and counters["graph"] == 1 and counters["authorize"] == 1


def test_refresh_rotates_the_refresh_token(standin, http, msal_app):
    first = sign_in(standin, http, msal_app)
    account = msal_app.get_accounts()[0]
    refreshed = msal_app.acquire_token_silent_with_error(SCOPES, account, force_refresh=True)
    assert refreshed["access_token"] != first["access_token"]
    assert "nonce" not in refreshed["id_token_claims"]
    assert standin.counters["token_refresh"] == 1
    reused = token_request(standin, http, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"


def test_revoked_refresh_token_gets_invalid_grant(standin, http, msal_app):
    result = sign_in(standin, http, msal_app)
    standin.revoke_refresh_tokens(USERS[0]["userPrincipalName"])
    answer = token_request(standin, http, grant_type="refresh_token", refresh_token=result["refresh_token"])
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"
    assert "AADSTS70000" in answer.json()["error_description"]


def test_a_code_works_once(standin, http):
    code = raw_authorize(standin, http, verifier="v" * 50)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
            "code_verifier": "v" * 50, "scope": "User.Read openid"}
    first = token_request(standin, http, **form)
    assert first.status_code == 200, first.text
    info = json.loads(base64.urlsafe_b64decode(first.json()["client_info"] + "=="))
    assert info == {"uid": USERS[0]["id"], "utid": standin.tenant_id}
    replay = token_request(standin, http, **form)
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant" and "AADSTS54005" in replay.json()["error_description"]


def test_a_wrong_code_verifier_is_rejected(standin, http):
    code = raw_authorize(standin, http, verifier="v" * 50)
    answer = token_request(standin, http, grant_type="authorization_code", code=code,
                           redirect_uri=REDIRECT_URI, code_verifier="w" * 50)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_a_wrong_client_secret_is_401_invalid_client(standin, http):
    answer = token_request(standin, http, grant_type="refresh_token", refresh_token="x", client_secret="nope")
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"


# --- Graph ------------------------------------------------------------------------------


def test_graph_rejects_tampered_expired_and_underscoped_tokens(standin, http):
    good = standin.mint_access_token(USERS[2]["userPrincipalName"])
    assert me(standin, http, good).status_code == 200
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["oid"] = USERS[0]["id"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    tampered = me(standin, http, f"{header}.{forged}.{signature}")
    assert tampered.status_code == 401
    assert tampered.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert tampered.headers["WWW-Authenticate"].startswith("Bearer")
    expired = me(standin, http, standin.mint_access_token(USERS[2]["id"], lifetime=-60))
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
    no_scope = me(standin, http, standin.mint_access_token(USERS[2]["id"], scopes="Mail.Read"))
    assert no_scope.status_code == 403
    assert no_scope.json()["error"]["code"] == "Authorization_RequestDenied"
    assert http.get(standin.settings["ENDPOINT"]).status_code == 401


def test_graph_keeps_connections_alive_and_counts_them(standin, http):
    token = standin.mint_access_token(USERS[0]["id"])
    for _ in range(3):
        answer = me(standin, http, token)
        assert answer.status_code == 200 and answer.headers["Content-Length"]
    assert standin.counters["graph"] == 3
    assert standin.counters["graph_connections"] == 1
    requests.get(standin.settings["ENDPOINT"], verify=standin.settings["REQUESTS_CA_BUNDLE"], timeout=5)
    assert standin.counters["graph_connections"] == 2


# --- failure injection ------------------------------------------------------------------


def test_graph_faults_apply_count_times(standin, http):
    token = standin.mint_access_token(USERS[0]["id"])
    standin.graph_fault(status=429, headers={"Retry-After": "5"}, count=2)
    for _ in range(2):
        answer = me(standin, http, token)
        assert answer.status_code == 429 and answer.headers["Retry-After"] == "5"
        assert answer.json()["error"]["code"] == "TooManyRequests"
    assert me(standin, http, token).status_code == 200

    standin.graph_fault(status=None, delay=0.2)
    started = time.monotonic()
    assert me(standin, http, token).status_code == 200
    assert time.monotonic() - started >= 0.2

    standin.graph_fault(status=500, body="oops", count=None)
    assert [me(standin, http, token).status_code for _ in range(3)] == [500, 500, 500]
    standin.clear_faults()
    assert me(standin, http, token).status_code == 200


def test_token_fault_reaches_msal(standin, http, msal_app):
    sign_in(standin, http, msal_app)
    standin.fail_next_token(error="invalid_grant", description="AADSTS50173: The grant expired.")
    result = msal_app.acquire_token_silent_with_error(SCOPES, msal_app.get_accounts()[0], force_refresh=True)
    assert result["error"] == "invalid_grant" and "AADSTS50173" in result["error_description"]


def test_http_test_controls_drive_the_same_faults(standin, http):
    base = standin.front_url + "/_test"
    assert http.post(f"{base}/graph_fault", json={"status": 503, "count": 1}).status_code == 200
    token = standin.mint_access_token(USERS[0]["id"])
    assert me(standin, http, token).status_code == 503
    assert http.get(f"{base}/counters").json()["graph"] == 1
    assert http.post(f"{base}/reset_counters", json={}).status_code == 200
    assert http.get(f"{base}/counters").json()["graph"] == 0
    assert http.post(f"{base}/fail_next_token", json={"error": "temporarily_unavailable", "status": 503}).ok
    answer = token_request(standin, http, grant_type="refresh_token", refresh_token="x")
    assert answer.status_code == 503 and answer.json()["error"] == "temporarily_unavailable"
    assert http.post(f"{base}/revoke", json={}).ok and http.post(f"{base}/clear", json={}).ok


def test_idp_can_stop_and_restart_on_the_same_port(standin, http):
    port = urlsplit(standin.idp_url).port
    discovery = standin.settings["AUTHORITY"] + "/v2.0/.well-known/openid-configuration"
    assert http.get(discovery).ok  # leaves a pooled connection that stop_idp must drop
    standin.stop_idp()
    with pytest.raises(requests.ConnectionError):
        http.get(discovery)
    assert me(standin, http, standin.mint_access_token(USERS[0]["id"])).ok  # Graph is unaffected
    standin.start_idp()
    assert urlsplit(standin.idp_url).port == port
    assert http.get(discovery).ok


def test_a_hung_idp_times_clients_out_until_released(standin, http):
    discovery = standin.settings["AUTHORITY"] + "/v2.0/.well-known/openid-configuration"
    standin.hang_idp(True)
    with pytest.raises(requests.ReadTimeout):
        http.get(discovery, timeout=0.3)
    standin.hang_idp(False)
    assert http.get(discovery, timeout=5).ok


def test_without_testing_there_is_no_injection():
    plain = StandIn()
    with pytest.raises(RuntimeError):
        plain.fail_next_token()
    with pytest.raises(RuntimeError):
        plain.graph_fault()
    with plain:
        answer = requests.get(f"{plain.front_url}/_test/counters", timeout=5)
        assert answer.status_code == 404
        assert requests.post(f"{plain.front_url}/_test/clear", json={}, timeout=5).status_code == 404


# --- sign-in sessions, hints and sign-out ------------------------------------------------


def test_id_tokens_carry_the_browser_sessions_sid_and_a_login_hint(standin, http, msal_app):
    first = sign_in(standin, http, msal_app)["id_token_claims"]
    assert uuid.UUID(first["sid"])
    assert first["login_hint"] and USERS[0]["userPrincipalName"] not in first["login_hint"]
    assert http.cookies[SESSION_COOKIE] != first["sid"]  # the cookie is a secret; sid is not

    refreshed = msal_app.acquire_token_silent_with_error(SCOPES, msal_app.get_accounts()[0], force_refresh=True)
    assert refreshed["id_token_claims"]["sid"] == first["sid"]
    assert refreshed["id_token_claims"]["login_hint"] == first["login_hint"]
    again = sign_in(standin, http, msal_app)["id_token_claims"]  # the same browser: the same session
    assert again["sid"] == first["sid"]

    with requests.Session() as other_browser:
        other_browser.trust_env, other_browser.verify = False, http.verify
        elsewhere = sign_in(standin, other_browser, msal_app)["id_token_claims"]
    assert elsewhere["sid"] != first["sid"] and elsewhere["login_hint"] == first["login_hint"]


def test_a_login_hint_signs_the_user_in_with_no_account_question(standin, http, msal_app):
    hint = sign_in(standin, http, msal_app, USERS[1])["id_token_claims"]["login_hint"]
    standin.reset_counters()

    by_hint = sign_in_with_hint(http, msal_app, hint)["id_token_claims"]
    assert by_hint["oid"] == USERS[1]["id"]
    by_upn = sign_in_with_hint(http, msal_app, USERS[2]["userPrincipalName"].upper())["id_token_claims"]
    assert by_upn["oid"] == USERS[2]["id"] and by_upn["sid"] != by_hint["sid"]

    for ask_anyway in ("select_account", "login"):
        flow = msal_app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI, login_hint=hint, prompt=ask_anyway)
        assert "Pick an account" in http.get(flow["auth_uri"]).text
    flow = msal_app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI, login_hint="nobody@contoso.example")
    assert "Pick an account" in http.get(flow["auth_uri"]).text

    recorded = standin.authorize_requests
    assert [r["login_hint"] for r in recorded] == [hint, USERS[2]["userPrincipalName"].upper(), hint, hint,
                                                   "nobody@contoso.example"]
    assert [r["prompt"] for r in recorded] == [None, None, "select_account", "login", None]
    assert all(r["client_id"] == standin.client_id and r["claims"] is None for r in recorded)


def test_end_session_with_the_users_logout_hint_asks_nothing(standin, http, msal_app):
    hint = sign_in(standin, http, msal_app)["id_token_claims"]["login_hint"]
    page = http.get(end_session_url(standin, post_logout_redirect_uri="http://localhost:5000/",
                                    client_id=standin.client_id, logout_hint=hint))
    assert page.status_code == 200 and "You signed out of your account" in page.text
    assert 'href="http://localhost:5000/"' in page.text
    assert SESSION_COOKIE not in http.cookies
    assert standin.logout_requests == [{
        "method": "GET", "client_id": standin.client_id, "post_logout_redirect_uri": "http://localhost:5000/",
        "logout_hint": hint,
    }]
    # The session is over: the picker no longer marks anyone as signed in.
    flow = msal_app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI)
    assert "Signed in" not in http.get(flow["auth_uri"]).text


def test_end_session_without_a_hint_asks_which_account(standin, http, msal_app):
    sign_in(standin, http, msal_app)
    for params in ({"post_logout_redirect_uri": "http://localhost:5000/"},
                   {"post_logout_redirect_uri": "http://localhost:5000/", "logout_hint": "someone-else"}):
        question = http.get(end_session_url(standin, **params))
        assert question.status_code == 200
        assert "Which account do you want to sign out of?" in question.text
        assert USERS[0]["displayName"] in question.text and "You signed out" not in question.text
    assert SESSION_COOKIE in http.cookies

    answer = submit_only_form(standin, http, question.text)
    assert "You signed out of your account" in answer.text
    assert 'href="http://localhost:5000/"' in answer.text  # the parameters survived the question
    assert SESSION_COOKIE not in http.cookies
    assert [(r["method"], r["logout_hint"]) for r in standin.logout_requests] == [
        ("GET", None), ("GET", "someone-else"), ("POST", "someone-else")]
    # Without a session there is nothing to ask about.
    assert "You signed out" in http.get(end_session_url(standin)).text


@pytest.fixture
def frontchannel(standin):
    """The app's front-channel logout URLs registered, on both of its hosts; removed afterwards."""
    uris = ["http://localhost:5000/logout/frontchannel", "http://127.0.0.1:5000/logout/frontchannel"]
    for uri in uris:
        standin.register_frontchannel_logout_uri(uri)
    yield uris
    standin.frontchannel_logout_uris.clear()


def test_ending_the_session_loads_the_apps_frontchannel_logout_url_with_sid(standin, http, msal_app, frontchannel):
    claims = sign_in(standin, http, msal_app)["id_token_claims"]
    page = http.get(end_session_url(standin, logout_hint=claims["login_hint"],
                                    post_logout_redirect_uri="http://evil.example/"))
    # Only the host the browser signed in on (localhost), with sid alone, as Entra sends it.
    (frame,) = parse_page(page.text).iframes
    assert frame["src"] == f"http://localhost:5000/logout/frontchannel?sid={claims['sid']}"
    assert "hidden" in frame and frame["title"]
    assert page.headers["Content-Security-Policy"] == (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action *; frame-ancestors 'none';"
        " frame-src http://localhost:5000")
    assert "evil.example" not in page.text  # the way back is still for registered origins only

    # A session that is over is not ended twice; other pages allow no frames.
    again = http.get(end_session_url(standin, logout_hint=claims["login_hint"]))
    assert not parse_page(again.text).iframes and "frame-src" not in again.headers["Content-Security-Policy"]


def test_signing_out_everywhere_on_the_stand_in_tells_the_app(standin, http, msal_app, frontchannel):
    """What another app's sign-out does: the session ends and the app hears of it by front channel."""
    sid = sign_in(standin, http, msal_app)["id_token_claims"]["sid"]
    home = http.get(standin.front_url + "/")
    assert USERS[0]["displayName"] in home.text and "Sign out everywhere" in home.text
    page = submit_only_form(standin, http, home.text)
    assert "You signed out of your account" in page.text and "Return to the application" not in page.text
    assert [f["src"] for f in parse_page(page.text).iframes] == [f"{frontchannel[0]}?sid={sid}"]
    assert "Nobody is signed in" in http.get(standin.front_url + "/").text


def test_a_form_on_another_site_cannot_end_the_session(standin, http, msal_app):
    sign_in(standin, http, msal_app)
    cookie = next(c for c in http.cookies if c.name == SESSION_COOKIE)
    # SameSite=Lax: a browser leaves the cookie off another site's form post...
    assert cookie.get_nonstandard_attr("SameSite") == "Lax" and cookie.has_nonstandard_attr("HttpOnly")
    # ...and a post without it ends nothing.
    page = requests.post(end_session_url(standin), data={"account": "x"}, timeout=5)
    assert "You signed out" in page.text
    assert standin.store.browser_session(cookie.value) is not None


def test_frontchannel_logout_uris_are_registered_by_constructor_method_and_command_line():
    stand_in = StandIn(frontchannel_logout_uris=["http://localhost:5000/logout/frontchannel"])
    stand_in.register_frontchannel_logout_uri("http://localhost:5000/logout/frontchannel")
    stand_in.register_frontchannel_logout_uri("http://127.0.0.1:5000/logout/frontchannel")
    assert stand_in.frontchannel_logout_uris == ["http://localhost:5000/logout/frontchannel",
                                                 "http://127.0.0.1:5000/logout/frontchannel"]
    assert StandIn().frontchannel_logout_uris == []
    args = local_entra_cli.parse_args(["--frontchannel-logout-uri", "http://a/fc", "--frontchannel-logout-uri", "http://b/fc"])
    assert args.frontchannel_logout_uris == ["http://a/fc", "http://b/fc"]
    assert local_entra_cli.parse_args([]).frontchannel_logout_uris == []


# --- Conditional Access: client capabilities, CAE, step-up ---------------------------------


def test_a_client_that_declares_cp1_gets_xms_cc_in_its_access_tokens(standin, http, msal_app, cae_app):
    capable = claims_of(sign_in(standin, http, cae_app)["access_token"])
    assert capable["xms_cc"] == ["cp1"]
    assert "xms_cc" not in claims_of(sign_in(standin, http, msal_app)["access_token"])
    cp1 = {"access_token": {"xms_cc": {"values": ["cp1"]}}}
    assert json.loads(standin.authorize_requests[0]["claims"]) == cp1
    assert [(r["grant_type"], r["claims"] and json.loads(r["claims"])) for r in standin.token_requests] == [
        ("authorization_code", cp1), ("authorization_code", None)]
    recorded = http.get(standin.front_url + "/_test/requests").json()
    assert recorded["token"] == standin.token_requests and set(recorded) == {"authorize", "token", "logout"}
    standin.reset_counters()
    assert standin.recorded_requests == {"authorize": [], "token": [], "logout": []}


def parse_challenge(header):
    scheme, _, rest = header.partition(" ")
    assert scheme == "Bearer"
    return dict(re.findall(r'(\w+)="([^"]*)"', rest))


def test_cae_revocation_challenges_cp1_tokens_until_the_challenge_is_answered(standin, http, cae_app):
    before = sign_in(standin, http, cae_app)["access_token"]
    assert me(standin, http, before).status_code == 200
    revoked_at = standin.cae_revoke()

    challenged = me(standin, http, before)
    assert challenged.status_code == 401
    error = challenged.json()["error"]
    assert error["code"] == "InvalidAuthenticationToken"
    assert error["message"] == ("Continuous access evaluation resulted in challenge with result: InteractionRequired"
                                " and code: LocationConditionEvaluationSatisfied")
    header = challenged.headers["WWW-Authenticate"]
    expected_claims = '{"access_token":{"nbf":{"essential":true, "value":"' + str(revoked_at) + '"}}}'
    encoded = base64.b64encode(expected_claims.encode()).decode()
    assert header == (
        'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize",'
        ' client_id="00000003-0000-0000-c000-000000000000", error_description="' + error["message"] + '",'
        ' error="insufficient_claims", claims="' + encoded + '"')
    challenge = base64.b64decode(parse_challenge(header)["claims"]).decode()
    assert challenge == expected_claims

    account = cae_app.get_accounts()[0]
    # A refresh that ignores the challenge gets a token Graph still refuses.
    plain = cae_app.acquire_token_silent_with_error(SCOPES, account, force_refresh=True)
    assert me(standin, http, plain["access_token"]).status_code == 401
    # Answering it (MSAL merges cp1 in) gives one Graph takes, and so do that token's refreshes.
    answered = cae_app.acquire_token_silent_with_error(SCOPES, account, claims_challenge=challenge)
    assert json.loads(standin.token_requests[-1]["claims"])["access_token"]["nbf"]["value"] == str(revoked_at)
    assert claims_of(answered["access_token"])["iat"] >= revoked_at
    assert me(standin, http, answered["access_token"]).status_code == 200
    later = cae_app.acquire_token_silent_with_error(SCOPES, account, force_refresh=True)
    assert me(standin, http, later["access_token"]).status_code == 200

    # Clients that cannot take a challenge (no cp1) are never sent one.
    assert me(standin, http, standin.mint_access_token(USERS[0]["id"], iat=revoked_at - 60)).status_code == 200
    standin.cae_clear()
    assert me(standin, http, before).status_code == 200


def test_a_sign_in_with_the_cae_challenge_also_answers_it(standin, http, cae_app):
    base = standin.front_url + "/_test"
    old = sign_in(standin, http, cae_app)
    revoked = http.post(f"{base}/cae_revoke", json={}).json()["revoked_at"]
    assert me(standin, http, old["access_token"]).status_code == 401
    # An answer to an earlier event does not do.
    stale_answer = {"access_token": {"nbf": {"essential": True, "value": str(revoked - 10)},
                                     "xms_cc": {"values": ["cp1"]}}}
    stale = token_request(standin, http, grant_type="refresh_token", refresh_token=old["refresh_token"],
                          claims=json.dumps(stale_answer))
    assert me(standin, http, stale.json()["access_token"]).status_code == 401

    challenge = json.dumps({"access_token": {"nbf": {"essential": True, "value": revoked}}})  # a number works too
    fresh = sign_in(standin, http, cae_app, claims_challenge=challenge)["access_token"]
    assert me(standin, http, fresh).status_code == 200
    assert http.post(f"{base}/clear", json={}).ok  # clear-faults ends the event too
    old = old["access_token"]
    assert me(standin, http, old).status_code == 200
    assert http.post(f"{base}/cae_revoke", json={}).ok and http.post(f"{base}/cae_clear", json={}).ok
    assert me(standin, http, old).status_code == 200


def test_step_up_refuses_refresh_until_a_sign_in_claims_the_policy(standin, http, msal_app):
    first = sign_in(standin, http, msal_app)
    standin.require_step_up()
    refused = msal_app.acquire_token_silent_with_error(SCOPES, msal_app.get_accounts()[0], force_refresh=True)
    assert refused["error"] == "interaction_required" and refused["suberror"] == "basic_action"
    assert refused["error_codes"] == [50076]
    assert refused["error_description"].startswith(
        "AADSTS50076: Due to a configuration change made by your administrator, or because you moved to a new"
        " location, you must use multi-factor authentication to access '00000003-0000-0000-c000-000000000000'.")
    policy = '{"access_token":{"capolids":{"essential":true,"values":["' + STEP_UP_POLICY_ID + '"]}}}'
    assert refused["claims"] == policy
    assert refused["trace_id"] and refused["correlation_id"] and refused["timestamp"]

    # The user signs in again with the policy's claims: that sign-in's tokens, and their refreshes, are fine.
    stepped_up = sign_in(standin, http, msal_app, claims_challenge=refused["claims"])
    assert json.loads(standin.authorize_requests[-1]["claims"]) == json.loads(refused["claims"])
    refreshed = token_request(standin, http, grant_type="refresh_token", refresh_token=stepped_up["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert token_request(standin, http, grant_type="refresh_token", refresh_token=refreshed.json()["refresh_token"]).ok

    # The refused refresh token was not used up: it works once the policy is lifted.
    def refresh_first():
        return token_request(standin, http, grant_type="refresh_token", refresh_token=first["refresh_token"])

    assert refresh_first().status_code == 400
    standin.clear_faults()
    assert refresh_first().ok


def test_step_up_over_http_with_entras_other_spelling(standin, http, msal_app):
    first = sign_in(standin, http, msal_app)
    assert http.post(standin.front_url + "/_test/step_up", json={"error": "invalid_grant"}).ok
    refused = token_request(standin, http, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant" and refused.json()["suberror"] == "basic_action"
    assert STEP_UP_POLICY_ID in refused.json()["claims"]


# --- a real browser: the hidden iframe reaches the app -----------------------------------------


class _FrontChannelApp(BaseHTTPRequestHandler):
    """The app's side: records the front-channel logout calls it gets."""

    def do_GET(self):
        self.server.calls.append(self.path)
        body = b"<!doctype html><title>ok</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_app(standin):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FrontChannelApp)
    server.calls = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_port}"
    standin.register_redirect_uri(f"{server.url}/getAToken")
    standin.register_frontchannel_logout_uri(f"{server.url}/logout/frontchannel")
    yield server
    standin.frontchannel_logout_uris.clear()
    server.shutdown()
    server.server_close()


@pytest.mark.browser
def test_chromium_loads_the_frontchannel_logout_url_when_the_user_signs_out_elsewhere(
        standin, msal_app, fake_app, browser):
    """The hidden iframe really loads under the signed-out page's Content-Security-Policy."""
    # The session's one Chromium (conftest's `browser`): Playwright's sync API allows only one
    # at a time, so a second one started here failed whenever the browser tier ran first.
    flow = msal_app.initiate_auth_code_flow(SCOPES, redirect_uri=f"{fake_app.url}/getAToken")
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.goto(flow["auth_uri"])
        page.get_by_role("button", name=re.compile(USERS[0]["displayName"])).click()
        page.wait_for_url(f"{fake_app.url}/getAToken?**")
        callback = {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}
        sid = msal_app.acquire_token_by_auth_code_flow(flow, callback)["id_token_claims"]["sid"]

        page.goto(standin.front_url + "/")
        page.get_by_role("button", name="Sign out everywhere").click()
        page.get_by_role("heading", name="You signed out of your account").wait_for()
    finally:
        context.close()
    assert f"/logout/frontchannel?sid={sid}" in fake_app.calls


# --- Azure AD B2C mode ---------------------------------------------------------------------

B2C_FLOWS = ("B2C_1_signupsignin1", "B2C_1_profileediting1", "B2C_1_passwordreset1")
SUSI, EDIT, RESET = B2C_FLOWS


@pytest.fixture(scope="module")
def b2c_standin():
    s = StandIn(b2c=True, testing=True).start()
    yield s
    s.stop()


@pytest.fixture
def b2c_http(b2c_standin):
    """A browser at the B2C stand-in: its cookie jar is its session there."""
    session = requests.Session()
    session.trust_env = False
    session.verify = b2c_standin.settings["REQUESTS_CA_BUNDLE"]
    yield session
    session.close()


def b2c_app(standin, http, flow=SUSI):
    """A confidential client of one user flow's authority, as identity builds it."""
    return msal.ConfidentialClientApplication(
        standin.client_id, client_credential=standin.client_secret, authority=standin.flow_authority(flow),
        instance_discovery=False, http_client=http)


def query_of(response):
    assert response.status_code == 302, response.text[:300]
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT_URI
    return {key: values[0] for key, values in parse_qs(location.query).items()}


def b2c_sign_in(standin, http, user=USERS[0], scopes=SCOPES):
    """Sign ``user`` in through the sign-up/sign-in flow: by the picker, or at once when this
    browser is signed in as them already (B2C's single sign-on)."""
    app = b2c_app(standin, http)
    flow = app.initiate_auth_code_flow(scopes, redirect_uri=REDIRECT_URI)
    at_idp = http.get(flow["auth_uri"], allow_redirects=False)
    answer = query_of(at_idp) if at_idp.status_code == 302 else pick_account(standin, http, flow["auth_uri"], user)
    result = app.acquire_token_by_auth_code_flow(flow, answer)
    assert result.get("id_token_claims", {}).get("oid") == user["id"], result
    return app, result


def only_form(standin, http, page_text, **fields):
    """Submit a page's one form with its hidden fields and ``fields``."""
    (form,) = parse_page(page_text).forms
    return http.post(standin.front_url + html.unescape(form["action"]), data={**form["fields"], **fields},
                     allow_redirects=False)


def test_b2c_settings_name_the_tenant_its_user_flows_and_domain_instead_of_authority(b2c_standin):
    settings = b2c_standin.settings
    assert "AUTHORITY" not in settings
    assert settings["B2C_TENANT_NAME"] == "contosob2c"
    assert (settings["B2C_SIGNUP_SIGNIN_USER_FLOW"], settings["B2C_EDIT_PROFILE_USER_FLOW"],
            settings["B2C_RESET_PASSWORD_USER_FLOW"]) == B2C_FLOWS
    assert settings["B2C_DOMAIN"] == b2c_standin.idp_url.removeprefix("https://")
    assert settings["ENDPOINT"] == f"{b2c_standin.graph_url}/v1.0/me" and settings["CLIENT_ID"]
    # The authority an app builds from them (app_config's rule) is the stand-in's.
    assert app_config.b2c_authority(settings) == b2c_standin.authority == b2c_standin.flow_authority(SUSI)


def test_b2c_each_user_flow_has_discovery_where_msal_looks_for_it(b2c_standin, b2c_http):
    issuer = f"{b2c_standin.idp_url}/{b2c_standin.tenant_id}/v2.0/"
    for flow in B2C_FLOWS:
        authority = b2c_standin.flow_authority(flow)
        config = b2c_http.get(f"{authority}/v2.0/.well-known/openid-configuration").json()
        # The app's sign-out reads it without /v2.0.
        assert config == b2c_http.get(f"{authority}/.well-known/openid-configuration").json()
        assert config["issuer"] == issuer  # B2C's shape: one issuer per tenant, trailing slash
        path = f"/contosob2c.onmicrosoft.com/{flow.lower()}/"
        assert config["authorization_endpoint"] == f"{b2c_standin.front_url}{path}oauth2/v2.0/authorize"
        assert config["end_session_endpoint"] == f"{b2c_standin.front_url}{path}oauth2/v2.0/logout"
        assert config["token_endpoint"] == f"{b2c_standin.idp_url}{path}oauth2/v2.0/token"
        assert b2c_http.get(config["jwks_uri"]).json()["keys"][0]["kid"]
        # MSAL takes it for B2C (the flow's B2C_1 prefix) and reads that very document.
        app = b2c_app(b2c_standin, b2c_http, flow)
        assert app.authority._is_b2c and app.authority.token_endpoint == config["token_endpoint"]
    assert b2c_standin.counters["discovery"] == 2 * len(B2C_FLOWS) + len(B2C_FLOWS)
    assert b2c_http.get(b2c_standin.flow_authority("B2C_1_nosuchflow") + "/v2.0/.well-known/openid-configuration"
                        ).status_code == 404


def test_b2c_sign_in_gives_b2c_shaped_tokens_that_graph_accepts(b2c_standin, b2c_http):
    user = USERS[1]
    app, result = b2c_sign_in(b2c_standin, b2c_http, user)
    claims = result["id_token_claims"]
    assert claims["sub"] == claims["oid"] == user["id"]
    assert claims["emails"] == [user["mail"]] and claims["name"] == user["displayName"]
    assert claims["tfp"] == SUSI and claims["ver"] == "1.0"
    assert claims["iss"] == b2c_standin.issuer and claims["aud"] == b2c_standin.client_id
    assert not {"preferred_username", "tid", "sid", "login_hint"} & set(claims)
    info = json.loads(base64.urlsafe_b64decode(result["client_info"] + "=="))
    assert info == {"uid": f"{user['id']}-b2c_1_signupsignin1", "utid": b2c_standin.tenant_id}
    assert app.get_accounts()[0]["home_account_id"] == f"{user['id']}-b2c_1_signupsignin1.{b2c_standin.tenant_id}"
    assert me(b2c_standin, b2c_http, result["access_token"]).json()["displayName"] == user["displayName"]
    refreshed = app.acquire_token_silent_with_error(SCOPES, app.get_accounts()[0], force_refresh=True)
    assert refreshed["id_token_claims"]["tfp"] == SUSI and "nonce" not in refreshed["id_token_claims"]


def test_b2c_issues_no_access_token_when_no_api_scope_is_asked_for(b2c_standin, b2c_http):
    """What MSAL gets for scopes=[] (openid profile offline_access): an id token and a refresh
    token, as from B2C; an app that insists on an access token there fails against B2C."""
    app, result = b2c_sign_in(b2c_standin, b2c_http, scopes=[])
    assert "access_token" not in result, sorted(result)
    assert result["id_token_claims"]["tfp"] == SUSI and result["refresh_token"]
    assert result["token_type"] == "Bearer"
    renewed = app.acquire_token_silent_with_error([], app.get_accounts()[0], force_refresh=True)
    assert "access_token" not in renewed and renewed["id_token_claims"]["oid"] == USERS[0]["id"]


def test_b2c_codes_and_refresh_tokens_are_honoured_only_by_their_own_flow(b2c_standin, b2c_http):
    app, signed_in = b2c_sign_in(b2c_standin, b2c_http)
    at_reset = b2c_http.post(b2c_standin.token_endpoint_of(RESET), data={
        "client_id": b2c_standin.client_id, "client_secret": b2c_standin.client_secret,
        "grant_type": "refresh_token", "refresh_token": signed_in["refresh_token"]})
    assert at_reset.status_code == 400 and at_reset.json()["error"] == "invalid_grant"
    assert at_reset.json()["error_description"].startswith(
        "AADB2C90088: The provided grant has not been issued for this endpoint. Actual Value : "
        f"{RESET} and Expected Value : {SUSI}\r\nCorrelation ID: ")
    # Refused, not used up: it still works at its own flow's endpoint.
    refreshed = app.acquire_token_silent_with_error(SCOPES, app.get_accounts()[0], force_refresh=True)
    assert "access_token" in refreshed, refreshed

    flow = app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI)
    answer = query_of(b2c_http.get(flow["auth_uri"], allow_redirects=False))  # signed in here: no question
    edit_app = b2c_app(b2c_standin, b2c_http, EDIT)
    result = edit_app.acquire_token_by_auth_code_flow(flow, answer)
    assert result["error"] == "invalid_grant" and "AADB2C90088" in result["error_description"]


def test_b2c_forgot_your_password_ends_the_sign_in_with_aadb2c90118(b2c_standin, b2c_http):
    app = b2c_app(b2c_standin, b2c_http)
    flow = app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI)
    picker = b2c_http.get(flow["auth_uri"])
    assert "Local stand-in for Azure AD B2C" in picker.text and "<script" not in picker.text
    link = html.unescape(re.search(r'<a href="([^"]+)">Forgot your password\?</a>', picker.text).group(1))
    answer = query_of(b2c_http.get(b2c_standin.front_url + link, allow_redirects=False))
    assert answer == {"error": "access_denied", "state": flow["state"],
                      "error_description": "AADB2C90118: The user has forgotten their password."}
    # The request is over: neither the link nor the picker's form works again.
    assert b2c_http.get(b2c_standin.front_url + link, allow_redirects=False).status_code == 400
    assert "error" in app.acquire_token_by_auth_code_flow(flow, answer)


def test_b2c_edit_profile_shows_the_name_and_a_new_one_reaches_id_tokens_and_graph(b2c_standin, b2c_http):
    user = USERS[2]
    b2c_sign_in(b2c_standin, b2c_http, user)  # this browser is signed in at the stand-in
    edit = b2c_app(b2c_standin, b2c_http, EDIT)
    flow = edit.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI)
    page = b2c_http.get(flow["auth_uri"])
    assert "Edit your profile" in page.text and f'value="{user["displayName"]}"' in page.text
    result = edit.acquire_token_by_auth_code_flow(
        flow, query_of(only_form(b2c_standin, b2c_http, page.text, displayName="  Ingrid  S. Berg ")))
    assert result["id_token_claims"]["name"] == "Ingrid S. Berg" and result["id_token_claims"]["tfp"] == EDIT
    assert me(b2c_standin, b2c_http, result["access_token"]).json()["displayName"] == "Ingrid S. Berg"
    _, later = b2c_sign_in(b2c_standin, b2c_http, user)
    assert later["id_token_claims"]["name"] == "Ingrid S. Berg"
    # For this stand-in only: the shared directory, and so every other stand-in, keep the old name.
    assert USERS[2]["displayName"] == "Ingrid Solberg"


def test_b2c_edit_profile_cancel_or_a_blank_name_changes_nothing(b2c_standin, b2c_http):
    user = USERS[0]
    b2c_sign_in(b2c_standin, b2c_http, user)
    before = b2c_standin.find_user(user["id"])["displayName"]
    flow = b2c_app(b2c_standin, b2c_http, EDIT).initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI)
    blank = only_form(b2c_standin, b2c_http, b2c_http.get(flow["auth_uri"]).text, displayName="   ")
    assert blank.status_code == 400 and "Enter a display name." in blank.text
    cancelled = query_of(only_form(b2c_standin, b2c_http, blank.text, cancel="1"))
    assert cancelled == {"error": "access_denied", "state": flow["state"], "error_description":
                         "AADB2C90091: The user has cancelled entering self-asserted information."}
    assert b2c_standin.find_user(user["id"])["displayName"] == before


def test_b2c_edit_profile_without_a_session_asks_for_the_account_first(b2c_standin, b2c_http):
    flow = b2c_app(b2c_standin, b2c_http, EDIT).initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI)
    picker = b2c_http.get(flow["auth_uri"])
    assert "Pick an account" in picker.text and "Forgot your password?" not in picker.text
    page = only_form(b2c_standin, b2c_http, picker.text, user_id=USERS[1]["id"])
    assert page.status_code == 200 and "Edit your profile" in page.text
    assert f'value="{b2c_standin.find_user(USERS[1]["id"])["displayName"]}"' in page.text
    assert SESSION_COOKIE in b2c_http.cookies  # signed in here now


def test_b2c_edit_profile_form_posted_without_the_users_session_renames_nobody(b2c_standin, b2c_http):
    user = USERS[1]
    b2c_sign_in(b2c_standin, b2c_http, user)
    before = b2c_standin.find_user(user["id"])["displayName"]
    flow = b2c_app(b2c_standin, b2c_http, EDIT).initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI)
    page = b2c_http.get(flow["auth_uri"]).text
    b2c_http.cookies.clear()  # another site's form: SameSite=Lax keeps the cookie home
    refused = only_form(b2c_standin, b2c_http, page, displayName="Mallory")
    assert refused.status_code == 400 and "session here has ended" in refused.text
    assert b2c_standin.find_user(user["id"])["displayName"] == before


def test_b2c_password_reset_takes_a_new_password_twice_and_issues_a_code_for_that_account(b2c_standin, b2c_http):
    reset = b2c_app(b2c_standin, b2c_http, RESET)
    flow = reset.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI)
    page = b2c_http.get(flow["auth_uri"])
    assert "Reset your password" in page.text and 'type="password"' in page.text
    mismatch = only_form(b2c_standin, b2c_http, page.text, user_id=USERS[1]["id"],
                         new_password="Secret-1", confirm_password="Secret-2")
    assert mismatch.status_code == 400 and "do not match" in mismatch.text and "Secret-1" not in mismatch.text
    answer = query_of(only_form(b2c_standin, b2c_http, mismatch.text, user_id=USERS[1]["id"],
                                new_password="Secret-1", confirm_password="Secret-1"))
    result = reset.acquire_token_by_auth_code_flow(flow, answer)
    assert result["id_token_claims"]["oid"] == USERS[1]["id"] and result["id_token_claims"]["tfp"] == RESET
    assert me(b2c_standin, b2c_http, result["access_token"]).status_code == 200
    assert SESSION_COOKIE in b2c_http.cookies  # like B2C, a completed reset is a sign-in


def test_b2c_sign_out_asks_nothing_and_returns_to_a_registered_app(b2c_standin, b2c_http):
    b2c_sign_in(b2c_standin, b2c_http)
    end_session = b2c_standin.openid_configuration()["end_session_endpoint"]
    back = b2c_http.get(end_session, params={"post_logout_redirect_uri": "http://localhost:5000/"},
                        allow_redirects=False)
    assert back.status_code == 302 and back.headers["Location"] == "http://localhost:5000/"
    assert SESSION_COOKIE not in b2c_http.cookies
    # Signed out, the sign-up/sign-in flow asks for an account again.
    flow = b2c_app(b2c_standin, b2c_http).initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI)
    assert "Pick an account" in b2c_http.get(flow["auth_uri"]).text

    # The stand-in's own "Sign out everywhere" ends a B2C session the same way.
    b2c_sign_in(b2c_standin, b2c_http, USERS[1])
    home = b2c_http.get(b2c_standin.front_url + "/")
    assert b2c_standin.find_user(USERS[1]["id"])["displayName"] in home.text
    assert parse_page(home.text).forms[0]["action"] == urlsplit(end_session).path
    assert "You signed out of your account" in submit_only_form(b2c_standin, b2c_http, home.text).text
    assert SESSION_COOKIE not in b2c_http.cookies


def test_b2c_sign_up_sign_in_signs_a_browser_with_a_session_in_again_unless_prompt_is_login(b2c_standin, b2c_http):
    app, _ = b2c_sign_in(b2c_standin, b2c_http, USERS[1])
    for prompt in (None, "select_account"):  # B2C honours prompt=login only
        flow = app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI, prompt=prompt)
        result = app.acquire_token_by_auth_code_flow(flow, query_of(b2c_http.get(flow["auth_uri"],
                                                                                 allow_redirects=False)))
        assert result["id_token_claims"]["oid"] == USERS[1]["id"]
    flow = app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI, prompt="login")
    assert "Pick an account" in b2c_http.get(flow["auth_uri"]).text


def test_cli_with_b2c_prints_the_b2c_settings_instead_of_authority(tmp_path):
    env_file, ready = tmp_path / "b2c.env", tmp_path / "ready"
    process = subprocess.Popen(
        [sys.executable, "-m", "local_entra", "--b2c", "--quiet", "--front-port", "0", "--idp-port", "0",
         "--graph-port", "0", "--write-env", str(env_file), "--ready-file", str(ready)],
        cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: ready.exists() or process.poll() is not None, timeout=30, what="the stand-in to start")
        assert process.poll() is None, process.stderr.read()
        settings = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    finally:
        process.terminate()
        printed, _ = process.communicate(timeout=15)
    assert list(settings) == ["B2C_TENANT_NAME", "B2C_SIGNUP_SIGNIN_USER_FLOW", "B2C_EDIT_PROFILE_USER_FLOW",
                              "B2C_RESET_PASSWORD_USER_FLOW", "B2C_DOMAIN", "CLIENT_ID", "CLIENT_SECRET",
                              "ENDPOINT", "REQUESTS_CA_BUNDLE"]
    assert printed == env_file.read_text()
    assert re.fullmatch(r"127\.0\.0\.1:\d+", settings["B2C_DOMAIN"])
    assert (settings["B2C_SIGNUP_SIGNIN_USER_FLOW"], settings["B2C_EDIT_PROFILE_USER_FLOW"],
            settings["B2C_RESET_PASSWORD_USER_FLOW"]) == B2C_FLOWS
    assert local_entra_cli.parse_args([]).b2c is False


def test_local_entra_b2c_in_the_environment_turns_b2c_on_for_launchers(monkeypatch):
    monkeypatch.setenv("LOCAL_ENTRA_B2C", "1")
    assert local_entra_cli.parse_args([]).b2c is True
    assert not b2c.requested({"LOCAL_ENTRA_B2C": "0"}) and not b2c.requested({})
