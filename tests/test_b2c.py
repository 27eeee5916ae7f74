"""Azure AD B2C beyond sign-in, fast tier: edit profile, password reset (also from the
legacy "Forgot your password?"), custom domains, and the settings' official aliases."""

from __future__ import annotations

import json
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

import app_config
from app import create_app
from conftest import CLIENT_ID, GRAPH_ME, ME, _b64url, fast_config, make_jwt

TENANT = "contoso"
TENANT_ID = "775527ff-9a37-4307-8b3d-cc311f58d925"
FLOWS = {"susi": "B2C_1_signupsignin1", "edit": "B2C_1_profileediting1", "reset": "B2C_1_passwordreset1"}
ADELE = {"oid": "a1b2c3d4-0000-4000-8000-00000000ad01", "name": "Adele Vance", "emails": ["adele@contoso.example"]}


class FakeB2C:
    """Three user flows of one B2C tenant, each an authority of its own, mocked with `responses`."""

    def __init__(self, rsps, domain: str = f"{TENANT}.b2clogin.com"):
        self.rsps, self.domain = rsps, domain
        self.user = dict(ADELE)
        self.nonce = None
        self.tfp = None  # a flow name to put in id tokens instead of the right one
        self.errors: list[dict] = []
        self.issued_access_tokens: list[str] = []
        self.token_requests: list[tuple[str, dict]] = []
        for flow in FLOWS.values():
            base = self.authority(flow)
            discovery = {
                "issuer": self.issuer(flow), "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token", "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "jwks_uri": f"{base}/discovery/v2.0/keys", "response_types_supported": ["code"],
            }
            rsps.add(responses.GET, f"{base}/v2.0/.well-known/openid-configuration", json=discovery)
            rsps.add(responses.GET, f"{base}/.well-known/openid-configuration", json=discovery)
            rsps.add_callback(responses.POST, f"{base}/oauth2/v2.0/token",
                              callback=lambda request, flow=flow: self._token(flow, request))
        rsps.add(responses.GET, GRAPH_ME, json=ME)

    def authority(self, flow: str) -> str:
        return f"https://{self.domain}/{TENANT}.onmicrosoft.com/{flow}"

    def issuer(self, flow: str) -> str:
        # B2C's shape: one issuer for every flow of a tenant; the id token's `tfp` names the flow.
        return f"https://{self.domain}/{TENANT_ID}/v2.0/"

    def _token(self, flow, request):
        form = {k: v[0] for k, v in parse_qs(request.body).items()}
        self.token_requests.append((flow, form))
        if self.errors:
            return 400, {}, json.dumps(self.errors.pop(0))
        now = int(time.time())
        claims = {"aud": CLIENT_ID, "iss": self.issuer(flow), "sub": self.user["oid"], "tfp": flow,
                  "iat": now, "nbf": now, "exp": now + 3600, "ver": "1.0", **self.user}
        if form.get("grant_type") == "authorization_code" and self.nonce:
            claims["nonce"] = self.nonce
        answer = {
            "refresh_token": "rt-" + uuid.uuid4().hex, "id_token": make_jwt({**claims, "tfp": self.tfp or flow}),
            "client_info": _b64url(json.dumps({"uid": f"{self.user['oid']}-{flow.lower()}",
                                               "utid": TENANT_ID}).encode()),
        }
        if "User.Read" in form.get("scope", ""):  # B2C issues an access token only for an API's scope
            access_token = make_jwt({"scp": "User.Read", "oid": self.user["oid"], "jti": uuid.uuid4().hex})
            self.issued_access_tokens.append(access_token)
            answer.update(token_type="Bearer", scope="User.Read openid profile offline_access", expires_in=3600,
                          access_token=access_token)
        return 200, {}, json.dumps(answer)


def b2c_config(tmp_path, **extra):
    return fast_config(tmp_path, AUTHORITY="", B2C_TENANT_NAME=TENANT,
                       B2C_SIGNUP_SIGNIN_USER_FLOW=FLOWS["susi"], B2C_EDIT_PROFILE_USER_FLOW=FLOWS["edit"],
                       B2C_RESET_PASSWORD_USER_FLOW=FLOWS["reset"], CLIENT_CAPABILITIES=[], **extra)


@pytest.fixture
def b2c(tmp_path):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fake = FakeB2C(rsps)
        yield create_app(b2c_config(tmp_path)), fake


def follow_to(client, fake, response, flow: str, **answer):
    """The browser at `flow`'s authorize page, answered with `answer` (a code by default)."""
    location = response.headers["Location"]
    assert location.startswith(f"{fake.authority(flow)}/oauth2/v2.0/authorize"), location
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    fake.nonce = query.get("nonce")
    answer = answer or {"code": "code-" + uuid.uuid4().hex}
    return client.get("/getAToken", query_string={"state": query["state"], **answer}), query


def signed_in(app, fake):
    client = app.test_client()
    callback, _ = follow_to(client, fake, client.get("/login"), FLOWS["susi"])
    assert callback.status_code == 302, callback.get_data(as_text=True)[:400]
    return client


def header(client) -> str:
    return client.get("/").get_data(as_text=True)


def test_b2c_sign_in_shows_the_name_and_offers_edit_profile(b2c):
    app, fake = b2c
    client = signed_in(app, fake)
    page = header(client)
    assert "Signed in as <strong>Adele Vance</strong>" in page and "Edit profile" in page


def test_without_a_name_claim_the_first_email_is_shown(b2c):
    app, fake = b2c
    fake.user.pop("name")
    assert "Signed in as <strong>adele@contoso.example</strong>" in header(signed_in(app, fake))


def test_edit_profile_updates_the_claims_in_place_keeps_the_tokens_and_goes_back(b2c):
    app, fake = b2c
    client = signed_in(app, fake)
    assert client.get("/call_downstream_api").status_code == 200
    token_before = fake.issued_access_tokens[-1]
    start = client.get("/profile/edit", query_string={"next": "/call_downstream_api"})
    fake.user["name"] = "Adele V. (edited)"
    callback, query = follow_to(client, fake, start, FLOWS["edit"])
    assert query["login_hint"] == "adele@contoso.example"
    assert callback.status_code == 302 and callback.headers["Location"] == "/call_downstream_api"
    assert "Signed in as <strong>Adele V. (edited)</strong>" in header(client)
    assert client.get("/call_downstream_api").status_code == 200
    graph = [c for c in fake.rsps.calls if c.request.url.startswith(GRAPH_ME)]
    assert graph[-1].request.headers["Authorization"] == f"Bearer {token_before}"  # the tokens it had


def test_cancelling_edit_profile_leaves_the_user_signed_in_as_before(b2c):
    app, fake = b2c
    client = signed_in(app, fake)
    start = client.get("/profile/edit", query_string={"next": "/call_downstream_api"})
    callback, _ = follow_to(client, fake, start, FLOWS["edit"], error="access_denied",
                            error_description="AADB2C90091: The user has cancelled entering self-asserted information.")
    assert callback.status_code == 302 and callback.headers["Location"] == "/call_downstream_api"
    assert "Signed in as <strong>Adele Vance</strong>" in header(client)
    assert client.get("/call_downstream_api").status_code == 200


def test_an_edit_profile_answer_for_another_user_is_refused_and_changes_nothing(b2c):
    app, fake = b2c
    client = signed_in(app, fake)
    start = client.get("/profile/edit")
    fake.user = {"oid": "ffffffff-0000-4000-8000-00000000ffff", "name": "Mallory", "emails": ["m@x"]}
    callback, _ = follow_to(client, fake, start, FLOWS["edit"])
    assert callback.status_code == 400
    page = header(client)
    assert "Signed in as <strong>Adele Vance</strong>" in page and "Mallory" not in page


def test_edit_profile_needs_a_signed_in_user(b2c):
    app, _fake = b2c
    response = app.test_client().get("/profile/edit")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")


def test_forgot_your_password_goes_to_the_reset_flow_and_ends_signed_in(b2c):
    app, fake = b2c
    client = app.test_client()
    forgot, _ = follow_to(client, fake, client.get("/login", query_string={"next": "/call_downstream_api"}),
                          FLOWS["susi"], error="access_denied",
                          error_description="AADB2C90118: The user has forgotten their password.")
    assert forgot.status_code == 302 and forgot.headers["Location"].startswith("/password/reset")
    reset = client.get(forgot.headers["Location"])
    callback, _ = follow_to(client, fake, reset, FLOWS["reset"])
    assert callback.status_code == 302 and callback.headers["Location"] == "/call_downstream_api"
    assert "Signed in as <strong>Adele Vance</strong>" in header(client)
    assert client.get_cookie("session")  # a signed-in session, stored server-side


def test_the_reset_page_can_be_opened_directly(b2c):
    app, fake = b2c
    client = app.test_client()
    assert "Forgot your password?" in header(client)
    callback, _ = follow_to(client, fake, client.get("/password/reset"), FLOWS["reset"])
    assert callback.status_code == 302 and "Signed in as" in header(client)


def test_any_other_b2c_error_is_shown_as_a_sign_in_error(b2c):
    app, fake = b2c
    client = app.test_client()
    callback, _ = follow_to(client, fake, client.get("/login"), FLOWS["susi"], error="access_denied",
                            error_description="AADB2C90091: The user has cancelled.")
    assert callback.status_code == 403 and "AADB2C90091" in callback.get_data(as_text=True)


def test_an_id_token_from_another_user_flow_is_refused(b2c):
    app, fake = b2c
    client = app.test_client()
    fake.tfp = FLOWS["edit"]  # the sign-in flow's token endpoint answers with another flow's id token
    callback, _ = follow_to(client, fake, client.get("/login"), FLOWS["susi"])
    assert callback.status_code == 400 and "Sign-in refused" in callback.get_data(as_text=True)
    assert "Signed in as" not in header(client)


def test_without_the_user_flows_there_are_no_such_routes(tmp_path, fake_entra):
    client = create_app(fast_config(tmp_path)).test_client()
    assert client.get("/profile/edit").status_code == 404
    assert client.get("/password/reset").status_code == 404


# --- settings -------------------------------------------------------------------------------


def test_the_official_sample_s_names_are_read_and_ours_win():
    config = app_config.load({"B2C_TENANT_NAME": "contoso", "SIGNUPSIGNIN_USER_FLOW": "B2C_1_theirs",
                              "B2C_SIGNUP_SIGNIN_USER_FLOW": "B2C_1_ours", "EDITPROFILE_USER_FLOW": "B2C_1_edit"})
    assert config["B2C_SIGNUP_SIGNIN_USER_FLOW"] == "B2C_1_ours"
    assert config["B2C_EDIT_PROFILE_USER_FLOW"] == "B2C_1_edit"
    assert config["B2C_SETTING_NAMES_USED"] == {"B2C_SIGNUP_SIGNIN_USER_FLOW": "B2C_SIGNUP_SIGNIN_USER_FLOW",
                                                "B2C_EDIT_PROFILE_USER_FLOW": "EDITPROFILE_USER_FLOW"}


def test_the_configuration_page_says_which_names_were_used(tmp_path, fake_entra):
    config = fast_config(tmp_path, AUTHORITY="", CLIENT_ID="", B2C_TENANT_NAME="contoso",
                         B2C_SIGNUP_SIGNIN_USER_FLOW="B2C_1_x",
                         B2C_SETTING_NAMES_USED={"B2C_SIGNUP_SIGNIN_USER_FLOW": "SIGNUPSIGNIN_USER_FLOW"})
    page = create_app(config).test_client().get("/").get_data(as_text=True)
    assert "SIGNUPSIGNIN_USER_FLOW" in page


@pytest.mark.parametrize(("domain", "expected"), [
    ("", "https://contoso.b2clogin.com/contoso.onmicrosoft.com/B2C_1_susi"),
    ("login.contoso.com", "https://login.contoso.com/contoso.onmicrosoft.com/B2C_1_susi"),
    ("127.0.0.1:5443", "https://127.0.0.1:5443/contoso.onmicrosoft.com/B2C_1_susi"),
])
def test_the_authority_is_built_on_the_b2c_domain(domain, expected):
    config = {"B2C_TENANT_NAME": "contoso", "B2C_SIGNUP_SIGNIN_USER_FLOW": "B2C_1_susi", "B2C_DOMAIN": domain}
    assert app_config.b2c_authority(config) == expected


def test_on_a_custom_domain_every_flow_must_start_with_b2c_1():
    config = app_config.load({"CLIENT_ID": "x", "CLIENT_SECRET": "y", "B2C_TENANT_NAME": "contoso",
                              "B2C_DOMAIN": "login.contoso.com", "B2C_SIGNUP_SIGNIN_USER_FLOW": "SignUpSignIn",
                              "B2C_EDIT_PROFILE_USER_FLOW": "B2C_1A_edit"})
    keys = [p.key for p in app_config.problems(config)]
    assert keys == ["B2C_SIGNUP_SIGNIN_USER_FLOW"]


def test_a_flow_on_a_custom_domain_works_end_to_end(tmp_path):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fake = FakeB2C(rsps, domain="login.contoso.example")
        app = create_app(b2c_config(tmp_path, B2C_DOMAIN="login.contoso.example"))
        client = signed_in(app, fake)
        assert "Signed in as <strong>Adele Vance</strong>" in header(client)


def test_an_expired_b2c_id_token_is_renewed_without_an_access_token(b2c, monkeypatch):
    app, fake = b2c
    client = signed_in(app, fake)
    import identity.web

    monkeypatch.setattr(identity.web, "_is_valid", lambda claims: False)  # as if it expired
    fake.user["name"] = "Adele (renewed)"
    assert "Signed in as <strong>Adele (renewed)</strong>" in header(client)
    _flow, form = fake.token_requests[-1]
    assert form["grant_type"] == "refresh_token" and "User.Read" not in form["scope"]


def test_a_damaged_reset_callback_keeps_the_flow_for_the_genuine_one(b2c):
    app, fake = b2c
    client = app.test_client()
    damaged, query = follow_to(client, fake, client.get("/password/reset"), FLOWS["reset"],
                               code="c1", client_info="!")
    assert damaged.status_code == 400
    genuine = client.get("/getAToken", query_string={"state": query["state"], "code": "c2"})
    assert genuine.status_code == 302
    assert [flow for flow, _ in fake.token_requests] == [FLOWS["reset"]]  # redeemed where it belongs


def test_a_reset_flow_that_returns_no_id_token_offers_sign_in(b2c):
    app, fake = b2c
    client = app.test_client()
    start = client.get("/password/reset", query_string={"next": "/call_downstream_api"})
    real = fake._token

    def without_id_token(flow, request):
        status, headers, body = real(flow, request)
        answer = json.loads(body)
        answer.pop("id_token", None)
        return status, headers, json.dumps(answer)

    fake._token = without_id_token
    callback, _ = follow_to(client, fake, start, FLOWS["reset"])
    assert callback.status_code == 302
    assert callback.headers["Location"].startswith("/login?next=/call_downstream_api")
    assert "Signed in as" not in header(client)
