"""A certificate instead of a client secret: the settings, what MSAL sends, and the stand-in's check.

The app reads CLIENT_CERTIFICATE_PATH once, at start-up; every way the file can be wrong is a
configuration problem (503, named on the page and at /healthz); a usable one makes every token
request carry a client assertion signed with its key and no secret. The second half checks the
local stand-in's verification of assertions the way Entra ID verifies them, without HTTP.
"""

from __future__ import annotations

import base64
import logging
import os
import time
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

import app_config
import client_credentials
from app import create_app
from conftest import CLIENT_ID, FakeEntra, fast_config
from local_entra.assertions import JWT_BEARER, AssertionRefused, CertificateCredentials

TOKEN_ENDPOINT = FakeEntra.token_endpoint


# --- test certificates, made with cryptography's builder ---------------------------------


@pytest.fixture(scope="session")
def rsa_keys():
    """Two RSA keys for the whole session: making one takes tens of milliseconds."""
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]


def make_certificate(key, *, subject="CN=flask-entra-sample", issuer=None, not_before=None, not_after=None,
                     ca=False) -> x509.Certificate:
    """A certificate for `key`, self-signed unless `issuer` is (certificate, its key)."""
    now = datetime.now(UTC)
    name = x509.Name.from_rfc4514_string(subject)
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    builder = (x509.CertificateBuilder()
               .subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before or now - timedelta(days=1))
               .not_valid_after(not_after or now + timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def key_pem(key, password: str | None = None, traditional: bool = False) -> bytes:
    encryption = (serialization.BestAvailableEncryption(password.encode()) if password
                  else serialization.NoEncryption())
    form = serialization.PrivateFormat.TraditionalOpenSSL if traditional else serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, form, encryption)


def cert_pem(*certificates) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def decode_b64url(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


@pytest.fixture
def certificate_file(tmp_path, rsa_keys):
    """A PEM file with the first RSA key and its self-signed certificate: (path, certificate)."""
    certificate = make_certificate(rsa_keys[0])
    path = tmp_path / "app.pem"
    path.write_bytes(key_pem(rsa_keys[0]) + cert_pem(certificate))
    path.chmod(0o600)
    return path, certificate


def certificate_app(tmp_path, path, **overrides):
    return create_app(fast_config(tmp_path, CLIENT_SECRET="", CLIENT_CERTIFICATE_PATH=str(path), **overrides))


def sent_assertion(fake_entra, index: int = -1) -> tuple[dict, dict, str]:
    """(header, claims, raw) of the client assertion in a recorded token request."""
    form = fake_entra.token_requests[index]
    assertion = form["client_assertion"]
    return jwt.get_unverified_header(assertion), jwt.decode(assertion, options={"verify_signature": False}), assertion


# --- what MSAL sends ------------------------------------------------------------------------


def test_with_a_certificate_the_token_request_carries_a_signed_client_assertion_and_no_secret(
        tmp_path, fake_entra, certificate_file):
    from conftest import AuthActions

    path, certificate = certificate_file
    client = certificate_app(tmp_path, path).test_client()
    AuthActions(client, fake_entra).sign_in()
    assert "Signed in as" in client.get("/").get_data(as_text=True)

    form = fake_entra.token_requests[-1]
    assert form["grant_type"] == "authorization_code"
    assert form["client_assertion_type"] == JWT_BEARER
    assert "client_secret" not in form
    header, claims, assertion = sent_assertion(fake_entra)
    # RS256, the certificate named by its SHA-1 thumbprint; the certificate itself not sent.
    assert header["alg"] == "RS256"
    assert decode_b64url(header["x5t"]) == certificate.fingerprint(hashes.SHA1())  # noqa: S303
    assert "x5c" not in header and "x5t#S256" not in header
    assert claims["aud"] == TOKEN_ENDPOINT
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["jti"]
    assert time.time() < claims["exp"] <= time.time() + 600
    # Signed with the certificate's key.
    jwt.decode(assertion, certificate.public_key(), algorithms=["RS256"], audience=TOKEN_ENDPOINT)


def test_send_x5c_signs_ps256_names_the_sha256_thumbprint_and_sends_the_certificate(tmp_path, fake_entra, rsa_keys):
    from conftest import AuthActions

    ca_key, app_key = rsa_keys
    ca = make_certificate(ca_key, subject="CN=Test issuing CA", ca=True)
    leaf = make_certificate(app_key, subject="CN=flask-entra-sni", issuer=(ca, ca_key))
    path = tmp_path / "chain.pem"
    path.write_bytes(key_pem(app_key) + cert_pem(leaf, ca))
    client = certificate_app(tmp_path, path, CLIENT_CERTIFICATE_SEND_X5C=True).test_client()
    AuthActions(client, fake_entra).sign_in()

    header, claims, assertion = sent_assertion(fake_entra)
    assert header["alg"] == "PS256"
    assert decode_b64url(header["x5t#S256"]) == leaf.fingerprint(hashes.SHA256())
    assert "x5t" not in header
    # MSAL 1.39 sends the certificate alone, not the rest of the chain in the file.
    assert [x509.load_der_x509_certificate(base64.b64decode(c)) for c in header["x5c"]] == [leaf]
    assert claims["iss"] == claims["sub"] == CLIENT_ID and claims["aud"] == TOKEN_ENDPOINT
    jwt.decode(assertion, leaf.public_key(), algorithms=["PS256"], audience=TOKEN_ENDPOINT)
    assert "client_secret" not in fake_entra.token_requests[-1]


def test_an_encrypted_key_and_its_password_sign_like_any_other_key(tmp_path, fake_entra, rsa_keys):
    from conftest import AuthActions

    certificate = make_certificate(rsa_keys[0])
    path = tmp_path / "encrypted.pem"
    path.write_bytes(cert_pem(certificate) + key_pem(rsa_keys[0], password="pass phrase"))
    client = certificate_app(tmp_path, path, CLIENT_CERTIFICATE_PASSWORD="pass phrase").test_client()
    AuthActions(client, fake_entra).sign_in()
    _, _, assertion = sent_assertion(fake_entra)
    jwt.decode(assertion, certificate.public_key(), algorithms=["RS256"], audience=TOKEN_ENDPOINT)


def test_refreshing_a_token_authenticates_with_the_certificate_too(tmp_path, fake_entra, certificate_file):
    from conftest import AuthActions

    path, certificate = certificate_file
    fake_entra.access_token_lifetime = 60  # under MSAL's 5-minute margin: every call refreshes
    client = certificate_app(tmp_path, path).test_client()
    AuthActions(client, fake_entra).sign_in()
    assert client.get("/call_downstream_api").status_code == 200
    form = fake_entra.token_requests[-1]
    assert form["grant_type"] == "refresh_token"
    assert form["client_assertion_type"] == JWT_BEARER and "client_secret" not in form
    jwt.decode(form["client_assertion"], certificate.public_key(), algorithms=["RS256"], audience=TOKEN_ENDPOINT)


def test_the_certificate_file_is_read_once_at_start_up(tmp_path, fake_entra, certificate_file):
    from conftest import AuthActions

    path, _ = certificate_file
    client = certificate_app(tmp_path, path).test_client()
    path.unlink()  # a rotation replacing the file takes effect at the next start, not mid-flight
    AuthActions(client, fake_entra).sign_in()
    assert fake_entra.token_requests[-1]["client_assertion_type"] == JWT_BEARER


def test_the_client_secret_is_still_sent_when_no_certificate_is_set(client, auth, fake_entra):
    auth.sign_in()
    form = fake_entra.token_requests[-1]
    assert form["client_secret"] and "client_assertion" not in form


@pytest.mark.parametrize("order", ["key first", "certificate first", "traditional RSA key after its chain"])
def test_key_and_certificates_may_come_in_any_order(tmp_path, rsa_keys, order):
    ca_key, app_key = rsa_keys
    ca = make_certificate(ca_key, subject="CN=Test issuing CA", ca=True)
    leaf = make_certificate(app_key, issuer=(ca, ca_key))
    path = tmp_path / "any-order.pem"
    path.write_bytes({
        "key first": key_pem(app_key) + cert_pem(leaf, ca),
        "certificate first": cert_pem(leaf) + key_pem(app_key),
        "traditional RSA key after its chain": cert_pem(ca, leaf) + key_pem(app_key, traditional=True),
    }[order])
    reading = client_credentials.read_certificate(str(path))
    assert reading.problem is None
    assert reading.summary.sha1_thumbprint == leaf.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303
    assert x509.load_pem_x509_certificates(reading.certificate.chain_pem.encode())[0] == leaf
    credential = client_credentials.client_credential(
        {"CLIENT_CERTIFICATE_PATH": str(path), "CLIENT_CERTIFICATE_SEND_X5C": False})
    assert credential["thumbprint"] == reading.summary.sha1_thumbprint
    assert credential["private_key"].startswith("-----BEGIN PRIVATE KEY-----")


# --- settings and their problems --------------------------------------------------------------


def test_load_reads_the_certificate_settings():
    config = app_config.load({"CLIENT_CERTIFICATE_PATH": " certs/app.pem ", "CLIENT_CERTIFICATE_PASSWORD": "pw",
                              "CLIENT_CERTIFICATE_SEND_X5C": "TRUE"})
    assert config["CLIENT_CERTIFICATE_PATH"] == "certs/app.pem"
    assert config["CLIENT_CERTIFICATE_PASSWORD"] == "pw"
    assert config["CLIENT_CERTIFICATE_SEND_X5C"] is True
    assert app_config.load({})["CLIENT_CERTIFICATE_SEND_X5C"] is False
    assert app_config.load({"CLIENT_CERTIFICATE_SEND_X5C": "false"})["CLIENT_CERTIFICATE_SEND_X5C"] is False


def test_a_certificate_replaces_the_client_secret(certificate_file):
    path, _ = certificate_file
    config = app_config.load({"CLIENT_ID": "id", "AUTHORITY": "https://login.microsoftonline.com/t",
                              "CLIENT_CERTIFICATE_PATH": str(path)})
    assert app_config.problems(config) == []


def _problem_files(tmp_path, keys):
    """Each broken certificate file: name -> (settings, key named, words in its message)."""
    key, other_key = keys
    good = make_certificate(key)
    now = datetime.now(UTC)
    expired = make_certificate(key, not_before=now - timedelta(days=400), not_after=now - timedelta(days=1))
    future = make_certificate(key, not_before=now + timedelta(days=2), not_after=now + timedelta(days=400))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    files = {
        "not-pem.pem": good.public_bytes(serialization.Encoding.DER),
        "no-key.pem": cert_pem(good),
        "no-certificate.pem": key_pem(key),
        "mismatch.pem": key_pem(other_key) + cert_pem(good),
        "encrypted.pem": key_pem(key, password="right") + cert_pem(good),
        "expired.pem": key_pem(key) + cert_pem(expired),
        "future.pem": key_pem(key) + cert_pem(future),
        "ec.pem": key_pem(ec_key) + cert_pem(make_certificate(ec_key)),
        "two-keys.pem": key_pem(key) + key_pem(other_key) + cert_pem(good),
        "good.pem": key_pem(key) + cert_pem(good),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "a-directory.pem").mkdir()
    path = str(tmp_path)
    return {
        "missing file": ({"CLIENT_CERTIFICATE_PATH": f"{path}/nowhere.pem"},
                         "CLIENT_CERTIFICATE_PATH", "does not exist"),
        "a directory": ({"CLIENT_CERTIFICATE_PATH": f"{path}/a-directory.pem"},
                        "CLIENT_CERTIFICATE_PATH", "is a directory"),
        "unreadable": ({"CLIENT_CERTIFICATE_PATH": f"{path}/good.pem/inside"},
                       "CLIENT_CERTIFICATE_PATH", "can't be read"),
        "not PEM": ({"CLIENT_CERTIFICATE_PATH": f"{path}/not-pem.pem"}, "CLIENT_CERTIFICATE_PATH", "not a PEM file"),
        "no private key": ({"CLIENT_CERTIFICATE_PATH": f"{path}/no-key.pem"},
                           "CLIENT_CERTIFICATE_PATH", "holds no private key"),
        "no certificate": ({"CLIENT_CERTIFICATE_PATH": f"{path}/no-certificate.pem"},
                           "CLIENT_CERTIFICATE_PATH", "holds no certificate"),
        "two private keys": ({"CLIENT_CERTIFICATE_PATH": f"{path}/two-keys.pem"},
                             "CLIENT_CERTIFICATE_PATH", "holds 2 private keys"),
        "key and certificate not a pair": ({"CLIENT_CERTIFICATE_PATH": f"{path}/mismatch.pem"},
                                           "CLIENT_CERTIFICATE_PATH", "does not belong to its certificate"),
        "encrypted key, no password": ({"CLIENT_CERTIFICATE_PATH": f"{path}/encrypted.pem"},
                                       "CLIENT_CERTIFICATE_PASSWORD", "is not set, but the private key"),
        "encrypted key, wrong password": ({"CLIENT_CERTIFICATE_PATH": f"{path}/encrypted.pem",
                                           "CLIENT_CERTIFICATE_PASSWORD": "wrong"},
                                          "CLIENT_CERTIFICATE_PASSWORD", "does not decrypt"),
        "expired": ({"CLIENT_CERTIFICATE_PATH": f"{path}/expired.pem"}, "CLIENT_CERTIFICATE_PATH",
                    f"expired on {expired.not_valid_after_utc:%Y-%m-%d}"),
        "not yet valid": ({"CLIENT_CERTIFICATE_PATH": f"{path}/future.pem"}, "CLIENT_CERTIFICATE_PATH",
                          f"not valid until {future.not_valid_before_utc:%Y-%m-%d}"),
        "not an RSA key": ({"CLIENT_CERTIFICATE_PATH": f"{path}/ec.pem"}, "CLIENT_CERTIFICATE_PATH",
                           "not an RSA key"),
        "a secret as well": ({"CLIENT_CERTIFICATE_PATH": f"{path}/good.pem", "CLIENT_SECRET": "s3cret"},
                             "CLIENT_SECRET", "contradicts CLIENT_CERTIFICATE_PATH"),
        "send_x5c neither true nor false": ({"CLIENT_CERTIFICATE_PATH": f"{path}/good.pem",
                                             "CLIENT_CERTIFICATE_SEND_X5C": "maybe"},
                                            "CLIENT_CERTIFICATE_SEND_X5C", "must be true or false"),
        "a password but no certificate": ({"CLIENT_SECRET": "s3cret", "CLIENT_CERTIFICATE_PASSWORD": "pw"},
                                          "CLIENT_CERTIFICATE_PATH", "is not set, but CLIENT_CERTIFICATE_PASSWORD"),
    }


PROBLEM_CASES = ["missing file", "a directory", "unreadable", "not PEM", "no private key", "no certificate",
                 "two private keys", "key and certificate not a pair", "encrypted key, no password",
                 "encrypted key, wrong password", "expired", "not yet valid", "not an RSA key", "a secret as well",
                 "send_x5c neither true nor false", "a password but no certificate"]


@pytest.mark.parametrize("case", PROBLEM_CASES)
def test_each_certificate_problem_gives_the_configuration_page_naming_it(tmp_path, rsa_keys, case, caplog):
    settings, key, words = _problem_files(tmp_path, rsa_keys)[case]
    with caplog.at_level(logging.WARNING):
        app = create_app(fast_config(tmp_path, **{"CLIENT_SECRET": "", **settings}))
    client = app.test_client()

    response = client.get("/")
    page = response.get_data(as_text=True)
    assert response.status_code == 503
    found = [p for p in app.extensions["config_problems"] if p.key == key]
    assert found and words in found[0].message, app.extensions["config_problems"]
    assert f"<code>{key}</code>" in page
    assert not any(line.decode() in page for k in rsa_keys for line in key_pem(k).splitlines()[1:-1])
    assert client.get("/login").status_code == 503
    health = client.get("/healthz")
    assert health.status_code == 503 and key in health.json["configuration"]
    if key in ("CLIENT_CERTIFICATE_PATH", "CLIENT_CERTIFICATE_PASSWORD") and case != "a password but no certificate":
        # What is wrong with the file is logged at start-up too, for whoever reads logs, not pages.
        assert any(key in r.getMessage() and words in r.getMessage() for r in caplog.records), caplog.text


def test_configuration_page_shows_the_certificates_thumbprints_and_expiry_never_its_key(tmp_path, rsa_keys):
    now = datetime.now(UTC)
    expired = make_certificate(rsa_keys[0], not_before=now - timedelta(days=400), not_after=now - timedelta(days=3))
    path = tmp_path / "expired.pem"
    private_pem = key_pem(rsa_keys[0])
    path.write_bytes(private_pem + cert_pem(expired))
    client = certificate_app(tmp_path, path).test_client()

    page = client.get("/").get_data(as_text=True)
    sha1 = expired.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303
    sha256 = expired.fingerprint(hashes.SHA256()).hex().upper()
    assert sha1 in page and sha256 in page
    assert f"{expired.not_valid_after_utc:%Y-%m-%d %H:%M} UTC" in page
    key_body = b"".join(private_pem.splitlines()[1:-1]).decode()
    assert "PRIVATE KEY" not in page and key_body[:40] not in page and key_body[-40:] not in page
    health = client.get("/healthz").get_data(as_text=True)
    assert sha1 not in health and sha256 not in health and "PRIVATE" not in health


def test_a_usable_certificate_is_summarised_on_the_page_when_something_else_is_missing(
        tmp_path, certificate_file):
    path, certificate = certificate_file
    app = certificate_app(tmp_path, path, AUTHORITY="")
    response = app.test_client().get("/")
    page = response.get_data(as_text=True)
    assert response.status_code == 503 and "<code>AUTHORITY</code>" in page
    assert [p.key for p in app.extensions["config_problems"]] == ["AUTHORITY"]
    assert certificate.fingerprint(hashes.SHA1()).hex().upper() in page  # noqa: S303


def test_a_certificate_expiring_soon_is_logged_at_start_up(tmp_path, rsa_keys, caplog):
    soon = make_certificate(rsa_keys[0], not_after=datetime.now(UTC) + timedelta(days=5))
    path = tmp_path / "soon.pem"
    path.write_bytes(key_pem(rsa_keys[0]) + cert_pem(soon))
    with caplog.at_level(logging.WARNING):
        reading = client_credentials.read_certificate(str(path))
    assert reading.problem is None
    assert any("expires on" in r.getMessage() and reading.summary.sha1_thumbprint in r.getMessage()
               for r in caplog.records)


def test_nothing_of_the_key_or_the_password_reaches_the_logs(tmp_path, rsa_keys, caplog, fake_entra):
    from conftest import AuthActions

    certificate = make_certificate(rsa_keys[0])
    path = tmp_path / "encrypted.pem"
    path.write_bytes(key_pem(rsa_keys[0], password="hunter2-pass-phrase") + cert_pem(certificate))
    with caplog.at_level(logging.DEBUG):
        client = certificate_app(tmp_path, path, CLIENT_CERTIFICATE_PASSWORD="hunter2-pass-phrase").test_client()
        AuthActions(client, fake_entra).sign_in()
    plain_key = key_pem(rsa_keys[0]).decode()
    text = caplog.text
    assert "hunter2-pass-phrase" not in text and "PRIVATE KEY" not in text
    assert plain_key.splitlines()[5] not in text
    assert repr(client_credentials.read_certificate(str(path), "hunter2-pass-phrase")).count("PRIVATE") == 0


# --- the stand-in's check of a client assertion, as Entra ID's ---------------------------------


def assertion_for(key, certificate=None, *, alg="RS256", header=None, **claims) -> str:
    now = int(time.time())
    body = {"aud": TOKEN_ENDPOINT, "iss": CLIENT_ID, "sub": CLIENT_ID, "exp": now + 600, "iat": now,
            "jti": str(uuid.uuid4())}
    body.update(claims)
    headers = {}
    if certificate is not None:
        headers["x5t"] = b64url(certificate.fingerprint(hashes.SHA1()))  # noqa: S303
    headers.update(header or {})
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg, headers=headers)


@pytest.fixture
def registration(rsa_keys):
    """An app registration with one certificate uploaded: (credentials, key, certificate)."""
    certificate = make_certificate(rsa_keys[0])
    return CertificateCredentials([cert_pem(certificate)], record_checks=True), rsa_keys[0], certificate


def verify(credentials, assertion):
    return credentials.verify(assertion, client_id=CLIENT_ID, audience=TOKEN_ENDPOINT)


def refusal(credentials, assertion) -> str:
    with pytest.raises(AssertionRefused) as refused:
        verify(credentials, assertion)
    assert refused.value.error == "invalid_client" and refused.value.status == 401
    return refused.value.description


def test_stand_in_accepts_an_assertion_signed_by_a_registered_certificate_by_either_thumbprint(registration):
    credentials, key, certificate = registration
    assert verify(credentials, assertion_for(key, certificate))["sub"] == CLIENT_ID
    by_sha256 = assertion_for(key, alg="PS256",
                              header={"x5t#S256": b64url(certificate.fingerprint(hashes.SHA256()))})
    assert verify(credentials, by_sha256)["iss"] == CLIENT_ID
    assert [c["found_by"] for c in credentials.checks] == ["x5t", "x5t#S256"]
    # MSAL pads its base64url thumbprint; Entra ID takes it either way.
    padded = base64.urlsafe_b64encode(certificate.fingerprint(hashes.SHA1())).decode()  # noqa: S303
    verify(credentials, assertion_for(key, header={"x5t": padded}))


def test_stand_in_accepts_a_reused_jti_as_entra_id_does(registration):
    credentials, key, certificate = registration
    assertion = assertion_for(key, certificate)
    verify(credentials, assertion)
    verify(credentials, assertion)


def test_stand_in_refuses_a_certificate_once_it_is_removed_from_the_registration(registration):
    credentials, key, certificate = registration
    credentials.unregister(certificate.fingerprint(hashes.SHA1()).hex())  # noqa: S303
    assert "The key was not found" in refusal(credentials, assertion_for(key, certificate))


@pytest.mark.parametrize(("case", "code"), [
    ("unregistered certificate", "AADSTS700027"),
    ("signed with another key", "AADSTS700027"),
    ("HS256", "AADSTS700027"),
    ("expired", "AADSTS700024"),
    ("not yet valid", "AADSTS700024"),
    ("another audience", "AADSTS700023"),
    ("audience as a list", "AADSTS50027"),
    ("another issuer", "AADSTS700021"),
    ("another subject", "AADSTS700021"),
    ("no jti", "AADSTS50027"),
    ("no exp", "AADSTS50027"),
    ("not a JWT", "AADSTS50027"),
])
def test_stand_in_refuses_each_bad_assertion_with_entras_error(registration, rsa_keys, case, code):
    credentials, key, certificate = registration
    other = make_certificate(rsa_keys[1])
    now = int(time.time())
    assertion = {
        "unregistered certificate": lambda: assertion_for(rsa_keys[1], other),
        "signed with another key": lambda: assertion_for(rsa_keys[1], certificate),
        "HS256": lambda: jwt.encode({"aud": TOKEN_ENDPOINT}, "k" * 32, algorithm="HS256",
                                    headers={"x5t": b64url(certificate.fingerprint(hashes.SHA1()))}),  # noqa: S303
        "expired": lambda: assertion_for(key, certificate, exp=now - 120, iat=now - 720),
        "not yet valid": lambda: assertion_for(key, certificate, nbf=now + 600, exp=now + 1200),
        "another audience": lambda: assertion_for(key, certificate, aud="https://login.example.test/other/token"),
        "audience as a list": lambda: assertion_for(key, certificate, aud=[TOKEN_ENDPOINT]),
        "another issuer": lambda: assertion_for(key, certificate, iss="someone-else"),
        "another subject": lambda: assertion_for(key, certificate, sub="someone-else"),
        "no jti": lambda: assertion_for(key, certificate, jti=None),
        "no exp": lambda: assertion_for(key, certificate, exp=None),
        "not a JWT": lambda: "not-a-jwt",
    }[case]()
    description = refusal(credentials, assertion)
    assert description.startswith(f"{code}:"), description
    assert credentials.checks[-1]["outcome"] == code


def test_stand_in_refuses_a_registered_certificate_once_it_has_expired(rsa_keys):
    now = datetime.now(UTC)
    expired = make_certificate(rsa_keys[0], not_before=now - timedelta(days=30), not_after=now - timedelta(days=1))
    credentials = CertificateCredentials([expired])
    assert "The key used is expired" in refusal(credentials, assertion_for(rsa_keys[0], expired))


def test_stand_in_names_the_thumbprint_it_could_not_find(registration, rsa_keys):
    credentials, _, _ = registration
    other = make_certificate(rsa_keys[1])
    description = refusal(credentials, assertion_for(rsa_keys[1], other))
    assert "The key was not found" in description
    assert other.fingerprint(hashes.SHA1()).hex().upper() in description  # noqa: S303


@pytest.fixture
def sni(rsa_keys):
    """Subject name and issuer authentication: a CA, an intermediate, and a leaf for CN=flask-entra-sni."""
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = make_certificate(ca_key, subject="CN=Test root CA", ca=True)
    intermediate_key = rsa_keys[1]
    intermediate = make_certificate(intermediate_key, subject="CN=Test issuing CA", issuer=(ca, ca_key), ca=True)
    leaf = make_certificate(rsa_keys[0], subject="CN=flask-entra-sni", issuer=(intermediate, intermediate_key))
    return ca, intermediate, leaf, rsa_keys[0]


def x5c_header(*certificates) -> dict:
    return {"x5c": [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in certificates],
            "x5t#S256": b64url(certificates[0].fingerprint(hashes.SHA256()))}


def test_stand_in_accepts_x5c_that_chains_to_a_trusted_issuer_with_the_trusted_subject(sni):
    ca, intermediate, leaf, key = sni
    credentials = CertificateCredentials(trusted_subjects=[(cert_pem(ca), "CN=flask-entra-sni")], record_checks=True)
    verify(credentials, assertion_for(key, alg="PS256", header=x5c_header(leaf, intermediate)))
    # Trusting the intermediate itself: the leaf alone (what MSAL 1.39 sends) chains to it.
    by_intermediate = CertificateCredentials(trusted_subjects=[(intermediate, "flask-entra-sni")])
    verify(by_intermediate, assertion_for(key, alg="PS256", header=x5c_header(leaf)))
    assert credentials.checks[-1]["found_by"] == "x5c"


@pytest.mark.parametrize("case", ["x5c not allowed", "untrusted issuer", "another subject", "missing intermediate",
                                  "x5t#S256 of another certificate"])
def test_stand_in_refuses_x5c_it_does_not_trust(sni, rsa_keys, case):
    ca, intermediate, leaf, key = sni
    trusted = {
        "x5c not allowed": [],
        "untrusted issuer": [(make_certificate(rsa_keys[1], subject="CN=Other CA", ca=True), "CN=flask-entra-sni")],
        "another subject": [(ca, "CN=someone-else")],
        "missing intermediate": [(ca, "CN=flask-entra-sni")],
        "x5t#S256 of another certificate": [(ca, "CN=flask-entra-sni")],
    }[case]
    header = x5c_header(leaf) if case == "missing intermediate" else x5c_header(leaf, intermediate)
    if case == "x5t#S256 of another certificate":
        header["x5t#S256"] = b64url(ca.fingerprint(hashes.SHA256()))
    credentials = CertificateCredentials(trusted_subjects=trusted)
    assert refusal(credentials, assertion_for(key, alg="PS256", header=header)).startswith("AADSTS700027:")


def test_made_client_certificate_is_what_the_app_and_the_stand_in_accept(tmp_path):
    from local_entra.__main__ import made_client_certificate

    path, data = made_client_certificate(tmp_path / "certs")
    assert os.stat(path).st_mode & 0o777 == 0o600
    reading = client_credentials.read_certificate(str(path))
    assert reading.problem is None
    again, _ = made_client_certificate(tmp_path / "certs")
    assert again == path and client_credentials.read_certificate(str(again)).summary == reading.summary
    credentials = CertificateCredentials([data])
    key = serialization.load_pem_private_key(data, None)
    certificate = x509.load_pem_x509_certificate(data)
    verify(credentials, assertion_for(key, certificate))
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
