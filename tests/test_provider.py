"""Any OpenID Provider: what the app sends and shows depends on which provider and API it
talks to (provider.py), fast tier."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

import provider
from app import create_app
from conftest import CLIENT_ID, AuthActions, FakeEntra, fast_config, make_jwt

OKTA = "https://example.okta.com/oauth2/default"


@pytest.mark.parametrize(("settings", "entra"), [
    ({"AUTHORITY": "https://login.microsoftonline.com/contoso.onmicrosoft.com"}, True),
    ({"AUTHORITY": "https://login.microsoftonline.us/tenant"}, True),
    ({"AUTHORITY": "https://login.chinacloudapi.cn/tenant"}, True),
    ({"AUTHORITY": "https://127.0.0.1:5443/tenant"}, True),  # the local stand-in
    ({"OIDC_AUTHORITY": "https://contoso.ciamlogin.com/contoso.onmicrosoft.com/v2.0"}, True),
    ({"B2C_TENANT_NAME": "contoso", "B2C_SIGNUP_SIGNIN_USER_FLOW": "B2C_1_susi"}, True),
    ({"OIDC_AUTHORITY": OKTA}, False),
    ({"OIDC_AUTHORITY": "https://127.0.0.1:9443/oidc"}, False),  # a provider on this machine
    ({"OIDC_AUTHORITY": "https://login.microsoftonline.com.evil.example/x"}, False),
])
def test_which_authorities_are_microsoft_entra(settings, entra):
    assert provider.is_entra(settings) is entra
    b2c = "B2C_TENANT_NAME" in settings
    assert provider.provider_name(settings) == ("Azure AD B2C" if b2c else "Microsoft Entra ID") if entra else (
        provider.provider_name(settings) not in ("Microsoft Entra ID", "Azure AD B2C"))


@pytest.mark.parametrize(("discovery", "prompt"), [
    ({"prompt_values_supported": ["none", "login", "consent", "select_account"]}, "select_account"),
    ({"prompt_values_supported": ["none", "login", "consent"]}, None),
    ({}, None),
    ({"prompt_values_supported": "select_account"}, None),  # not a list: not trusted
])
def test_select_account_is_sent_only_where_the_provider_supports_it(discovery, prompt):
    assert provider.sign_in_prompt({"OIDC_AUTHORITY": OKTA}, lambda: discovery) == prompt
    looked_up = []
    entra = provider.sign_in_prompt({"AUTHORITY": "https://login.microsoftonline.com/t"}, looked_up.append)
    assert entra == "select_account" and not looked_up  # Entra needs no look-up


@pytest.mark.parametrize(("claims", "shown"), [
    ({"name": "Adele Vance", "preferred_username": "adele@x", "sub": "s"}, "Adele Vance"),
    ({"preferred_username": "adele@x", "sub": "s"}, "adele@x"),
    ({"email": "a@example.com", "sub": "s"}, "a@example.com"),
    ({"emails": ["b2c@example.com"], "sub": "s"}, "b2c@example.com"),  # Azure AD B2C
    ({"sub": "248289761001"}, "248289761001"),
    ({"name": None, "sub": "s"}, "s"),
    ({"name": "  ", "sub": "s"}, "s"),
    ({}, "you"),
])
def test_the_user_is_shown_by_the_best_claim_present_never_none(claims, shown):
    assert provider.user_display_name(claims) == shown


@pytest.mark.parametrize(("endpoint", "settings", "name"), [
    ("https://graph.microsoft.com/v1.0/me", {"AUTHORITY": "https://login.microsoftonline.com/t"}, "Microsoft Graph"),
    ("https://127.0.0.1:5444/v1.0/me", {"AUTHORITY": "https://127.0.0.1:5443/t"}, "Microsoft Graph"),
    ("https://example.okta.com/oauth2/default/v1/userinfo", {"OIDC_AUTHORITY": OKTA}, "the API"),
    ("https://127.0.0.1:9443/oidc/me", {"OIDC_AUTHORITY": "https://127.0.0.1:9443/oidc"}, "the API"),
])
def test_the_api_is_called_microsoft_graph_only_when_it_is(endpoint, settings, name):
    assert provider.api_name({**settings, "ENDPOINT": endpoint}) == name


# --- a provider that is not Entra ID, end to end through the app (mocked) --------------------


class FakeProvider(FakeEntra):
    """A provider with Okta-like paths whose discovery lists no select_account."""

    def __init__(self, rsps, issuer: str = OKTA, prompts=("none", "login", "consent")):
        self.issuer = issuer
        self.token_endpoint = f"{issuer}/v1/token"
        self.authorize_endpoint = f"{issuer}/v1/authorize"
        self.end_session_endpoint = f"{issuer}/v1/logout"
        self.userinfo = f"{issuer}/v1/userinfo"
        super().__init__(rsps)
        discovery = {
            "issuer": issuer, "authorization_endpoint": self.authorize_endpoint,
            "token_endpoint": self.token_endpoint, "end_session_endpoint": self.end_session_endpoint,
            "jwks_uri": f"{issuer}/v1/keys", "userinfo_endpoint": self.userinfo,
            "prompt_values_supported": list(prompts), "response_types_supported": ["code"],
        }
        rsps.add(responses.GET, f"{issuer}/.well-known/openid-configuration", json=discovery)
        rsps.add(responses.GET, self.userinfo, json={"sub": "00u1", "email": "a@example.com",
                                                    "groups": ["x", "y"], "address": {"country": "NZ"}})

    def _token(self, request):
        status, headers, body = super()._token(request)
        answer = json.loads(body)
        if "id_token" in answer:  # only sub, as providers do by default (profile at userinfo)
            claims = {"aud": CLIENT_ID, "iss": self.issuer, "sub": "00u1", "iat": 1, "exp": 4102444800}
            if self.nonce and "code" in request.body:
                claims["nonce"] = self.nonce
            answer["id_token"] = self.last_id_token = make_jwt(claims)
            answer.pop("client_info", None)  # Entra's own parameter
        return status, headers, json.dumps(answer)


@pytest.fixture
def okta(tmp_path):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fake = FakeProvider(rsps)
        app = create_app(fast_config(tmp_path, AUTHORITY="", OIDC_AUTHORITY=OKTA, ENDPOINT=fake.userinfo,
                                     CLIENT_CAPABILITIES=[]))
        yield app, fake


def sign_in(app, fake):
    client = app.test_client()
    response = client.get("/login")
    query = {k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()}
    fake.nonce = query["nonce"]
    callback = client.get("/getAToken", query_string={"code": "c", "state": query["state"]})
    assert callback.status_code == 302, callback.get_data(as_text=True)[:500]
    return client, query


def test_a_provider_without_select_account_gets_no_prompt(okta):
    app, fake = okta
    _client, query = sign_in(app, fake)
    assert "prompt" not in query


def test_the_consent_link_keeps_prompt_consent(okta):
    app, _fake = okta
    response = app.test_client().get("/login", query_string={"prompt": "consent"})
    assert parse_qs(urlsplit(response.headers["Location"]).query)["prompt"] == ["consent"]


def test_pages_name_the_provider_by_its_host_and_the_user_by_sub(okta):
    app, fake = okta
    client, _ = sign_in(app, fake)
    home = client.get("/").get_data(as_text=True)
    assert "Signed in as <strong>00u1</strong>" in home and "None" not in home
    assert "example.okta.com" in home and "Microsoft Entra ID" not in home and "Call the API" in home


def test_a_non_graph_answer_is_shown_as_a_key_value_list(okta):
    app, fake = okta
    client, _ = sign_in(app, fake)
    page = client.get("/call_downstream_api").get_data(as_text=True)
    assert "<dt>email</dt><dd>a@example.com</dd>" in page
    assert "<dt>groups</dt><dd>x, y</dd>" in page
    assert "<dt>address</dt><dd>{&#34;country&#34;: &#34;NZ&#34;}</dd>" in page
    assert "Display name" not in page and "Microsoft Graph" not in page


def test_sign_out_sends_client_id_and_id_token_hint_to_other_providers(okta):
    app, fake = okta
    client, _ = sign_in(app, fake)
    token = {"csrf_token": AuthActions(client, fake).csrf_token()}
    location = client.post("/logout", data=token).headers["Location"]
    query = parse_qs(urlsplit(location).query)
    assert location.startswith(fake.end_session_endpoint)
    assert query["client_id"] == [CLIENT_ID] and query["post_logout_redirect_uri"] == ["http://localhost/"]
    assert query["id_token_hint"] == [fake.last_id_token]
    assert "logout_hint" not in query


def test_an_oidc_authority_without_a_path_is_explained(tmp_path, fake_entra):
    app = create_app(fast_config(tmp_path, AUTHORITY="", OIDC_AUTHORITY="https://example.okta.com"))
    page = app.test_client().get("/").get_data(as_text=True)
    assert "OIDC_AUTHORITY" in page and "has no path after the host" in page and "/oauth2/default" in page


def test_a_prompt_in_the_query_string_is_sent_only_where_the_provider_supports_it(okta):
    app, _fake = okta  # its discovery lists none, login and consent
    client = app.test_client()
    location = client.get("/login", query_string={"prompt": "select_account"}).headers["Location"]
    assert "prompt" not in parse_qs(urlsplit(location).query)
    location = client.get("/login", query_string={"prompt": "login"}).headers["Location"]
    assert parse_qs(urlsplit(location).query)["prompt"] == ["login"]
