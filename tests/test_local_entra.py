"""The local Entra ID / Graph stand-in, driven over real loopback HTTP and TLS.

MSAL itself redeems the codes and refreshes the tokens, so these tests show
the stand-in speaks the protocol the app's libraries expect.
"""

import base64
import json
import re
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import msal
import pytest
import requests

from local_entra import USERS, StandIn
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


def sign_in(standin, http, msal_app, user=USERS[0]):
    flow = msal_app.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI)
    result = msal_app.acquire_token_by_auth_code_flow(flow, pick_account(standin, http, flow["auth_uri"], user))
    assert "access_token" in result, result
    return result


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
