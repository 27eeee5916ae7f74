"""A certificate instead of a client secret, for real: the app under gunicorn signs in against the
local stand-in, which checks every client assertion the way Microsoft Entra ID does."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import jwt
import msal
import pytest
import requests
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import client_credentials
from live import ROOT, AppServer, WebUser, wait_for
from local_entra import USERS, StandIn
from local_entra.assertions import JWT_BEARER, make_self_signed_certificate, thumbprint_of

pytestmark = pytest.mark.real

ADELE = USERS[0]
SNI_SUBJECT = "CN=flask-entra-sni"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """PEM files (key and certificate): one registered with the app, one that is not, and one
    issued by a CA that the app registration trusts for subject name and issuer auth."""
    directory = tmp_path_factory.mktemp("certificates")
    files = {"registered": make_self_signed_certificate("flask-entra-registered"),
             "unregistered": make_self_signed_certificate("flask-entra-unregistered")}
    ca = trustme.CA(organization_name="Test issuing CA", key_type=trustme.KeyType.RSA)
    # MSAL 1.39 sends the certificate alone in x5c, so the trusted issuer is its direct issuer.
    sni = ca.issue_cert("app.example.test", common_name=SNI_SUBJECT.removeprefix("CN="),
                        key_type=trustme.KeyType.RSA)
    files["sni"] = sni.private_key_and_cert_chain_pem.bytes()
    paths = {}
    for name, data in files.items():
        paths[name] = directory / f"{name}.pem"
        paths[name].write_bytes(data)
        paths[name].chmod(0o600)
    paths["ca"] = ca.cert_pem.bytes()
    return paths


@pytest.fixture(scope="module")
def entra(pki):
    server = StandIn(testing=True, client_certificates=[pki["registered"].read_bytes()],
                     trusted_certificate_subjects=[(pki["ca"], SNI_SUBJECT)]).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def apps(entra, pki, tmp_path_factory):
    """Three instances of the app, each with one certificate and no secret, started side by side."""
    settings = {
        "registered": {"CLIENT_CERTIFICATE_PATH": str(pki["registered"])},
        "sni": {"CLIENT_CERTIFICATE_PATH": str(pki["sni"]), "CLIENT_CERTIFICATE_SEND_X5C": "true"},
        "unregistered": {"CLIENT_CERTIFICATE_PATH": str(pki["unregistered"])},
    }
    servers = {name: AppServer(entra, tmp_path_factory.mktemp(f"app-{name}"), name=name,
                               env={"CLIENT_SECRET": "", **env})
               for name, env in settings.items()}
    with ThreadPoolExecutor(len(servers)) as pool:
        list(pool.map(AppServer.start, servers.values()))
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def fresh(entra):
    entra.reset_counters()
    yield entra
    entra.access_token_lifetime = 3600


def test_signs_in_and_calls_the_api_with_a_registered_certificate_and_no_secret(apps, fresh, pki):
    fresh.access_token_lifetime = 60  # the API call refreshes: that request authenticates too
    person = WebUser(apps["registered"].url)
    response = person.sign_in(ADELE, next_path="/call_downstream_api")
    assert response.status_code == 302 and response.headers["Location"] == "/call_downstream_api"
    profile = person.get("/call_downstream_api")
    assert profile.status_code == 200 and ADELE["displayName"] in profile.text

    sent = fresh.token_requests
    assert [r["grant_type"] for r in sent] == ["authorization_code", "refresh_token"]
    assert all(r["client_assertion_type"] == JWT_BEARER and not r["client_secret_sent"] for r in sent)
    checks = fresh.client_assertion_checks
    assert [(c["outcome"], c["found_by"], c["alg"]) for c in checks] == [("ok", "x5t", "RS256")] * 2
    assert {c["thumbprint"] for c in checks} == {thumbprint_of(pki["registered"].read_bytes())}


def test_signs_in_by_subject_name_and_issuer_when_the_certificate_is_sent(apps, fresh):
    person = WebUser(apps["sni"].url)
    assert person.sign_in(ADELE).status_code == 302
    assert person.get("/call_downstream_api").status_code == 200
    [check] = fresh.client_assertion_checks
    assert (check["outcome"], check["found_by"], check["alg"], check["x5c"]) == ("ok", "x5c", "PS256", 1)


def test_an_unregistered_certificate_ends_on_a_page_that_names_entras_error(apps, fresh):
    # Not a 500: a page that says the app's own credential was refused (signing in again
    # cannot help), with Entra's invalid_client and its AADSTS code; the log has it at ERROR.
    person = WebUser(apps["unregistered"].url)
    response = person.sign_in(ADELE)
    assert response.status_code == 502, response.text[:2000]
    assert "The app&#39;s credential was refused" in response.text and "Try signing in again" not in response.text
    assert "invalid_client" in response.text and "AADSTS700027" in response.text
    assert "ERROR" in apps["unregistered"].logs() and "AADSTS700027" in apps["unregistered"].logs()
    assert not person.is_signed_in()
    [check] = fresh.client_assertion_checks
    assert check["outcome"] == "AADSTS700027" and check["found_by"] is None


def _assertion(pem: bytes, audience: str, client_id: str, **claims) -> str:
    key = serialization.load_pem_private_key(pem, None)
    certificate = x509.load_pem_x509_certificate(pem)
    now = int(time.time())
    body = {"aud": audience, "iss": client_id, "sub": client_id, "exp": now + 300, "iat": now,
            "jti": str(uuid.uuid4()), **claims}
    x5t = base64.urlsafe_b64encode(bytes.fromhex(thumbprint_of(certificate))).decode()
    return jwt.encode(body, key, algorithm="RS256", headers={"x5t": x5t})


def test_the_token_endpoint_answers_each_refused_assertion_with_entras_error(entra, pki):
    pem, endpoint, client_id = pki["registered"].read_bytes(), entra.token_endpoint, entra.client_id
    ca_bundle = entra.settings["REQUESTS_CA_BUNDLE"]

    def post(**form):
        body = {"grant_type": "authorization_code", "code": "not-a-code", "client_id": client_id,
                "redirect_uri": "http://localhost:5000/getAToken", **form}
        return requests.post(endpoint, data=body, verify=ca_bundle, timeout=10)

    def with_assertion(assertion, **form):
        return post(client_assertion_type=JWT_BEARER, client_assertion=assertion, **form)

    now = int(time.time())
    for assertion, code in (
            (_assertion(pem, endpoint, client_id, exp=now - 300, iat=now - 900), 700024),
            (_assertion(pem, f"{entra.authority}/oauth2/token", client_id), 700023),
            (_assertion(pem, endpoint, "another-app"), 700021),
            (_assertion(pki["unregistered"].read_bytes(), endpoint, client_id), 700027)):
        response = with_assertion(assertion)
        assert response.status_code == 401
        body = response.json()
        assert body["error"] == "invalid_client" and body["error_codes"] == [code], body
        assert body["error_description"].startswith(f"AADSTS{code}:")

    both = with_assertion(_assertion(pem, endpoint, client_id), client_secret=entra.client_secret)
    assert both.status_code == 400 and both.json()["error"] == "invalid_request"
    wrong_type = post(client_assertion_type="urn:example:other", client_assertion="x")
    assert wrong_type.status_code == 400 and wrong_type.json()["error"] == "invalid_request"
    # Client authenticated (by certificate, or by the secret, which keeps working): the code is what fails.
    assert with_assertion(_assertion(pem, endpoint, client_id)).json()["error"] == "invalid_grant"
    assert post(client_secret=entra.client_secret).json()["error"] == "invalid_grant"


def test_make_client_certificate_starts_a_stand_in_that_accepts_the_file_it_prints(tmp_path, monkeypatch):
    ready, env_file = tmp_path / "ready", tmp_path / "env"
    process = subprocess.Popen(
        [sys.executable, "-m", "local_entra", "--front-port", "0", "--idp-port", "0", "--graph-port", "0", "--quiet",
         "--make-client-certificate", str(tmp_path / "certs"), "--ready-file", str(ready),
         "--write-env", str(env_file)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: ready.exists() or process.poll() is not None, timeout=30, what="the stand-in")
        assert process.poll() is None, process.stderr.read()
        settings = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        assert "CLIENT_SECRET" not in settings
        assert settings["CLIENT_CERTIFICATE_PATH"] == str(tmp_path / "certs" / "client-certificate.pem")
        config = {"CLIENT_CERTIFICATE_PATH": settings["CLIENT_CERTIFICATE_PATH"], "CLIENT_CERTIFICATE_SEND_X5C": False}
        assert client_credentials.read_configured_certificate(config).problem is None

        # MSAL itself, with what the app would give it, redeems a (made-up) code: the stand-in
        # accepts the client assertion and refuses only the code.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", settings["REQUESTS_CA_BUNDLE"])
        application = msal.ConfidentialClientApplication(
            settings["CLIENT_ID"], authority=settings["AUTHORITY"], instance_discovery=False,
            client_credential=client_credentials.client_credential(config))
        flow = application.initiate_auth_code_flow(["User.Read"], redirect_uri="http://localhost:5000/getAToken")
        result = application.acquire_token_by_auth_code_flow(flow, {"code": "not-a-code", "state": flow["state"]})
        assert result["error"] == "invalid_grant", result
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    assert "registered client certificate: SHA-1 thumbprint" in stderr
    assert process.returncode == 0 and not ready.exists()
    assert os.stat(tmp_path / "certs" / "client-certificate.pem").st_mode & 0o777 == 0o600
