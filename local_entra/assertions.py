"""Client authentication with a certificate: the client assertion checked as Entra ID checks it.

A confidential client may prove who it is with a JWT signed by its certificate's private key
(RFC 7523, ``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer``)
instead of a secret. Entra ID finds the certificate in two ways:

* registered: uploaded to the app registration (Certificates & secrets), named in the
  assertion's header by its SHA-1 (``x5t``) or SHA-256 (``x5t#S256``) thumbprint;
* subject name and issuer ("SNI"): the app registration trusts certificates with a given
  subject from a given issuer, and the assertion carries the certificate itself (``x5c``),
  which must chain to that issuer.

Then the signature, ``iss`` == ``sub`` == client id, ``aud`` == the token endpoint, ``exp``
and ``nbf`` are checked, and ``jti`` must be there. A reused ``jti`` is accepted, as it must
be at Entra ID: MSAL Python sends one assertion with every token request for 9 minutes.
"""

import base64
import binascii
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# The algorithms MSAL signs assertions with (RS256 with x5t, PS256 with x5t#S256).
ALGORITHMS = ("RS256", "PS256")
# Seconds of clock difference forgiven on exp, nbf and iat.
LEEWAY = 60
# Checks remembered for tests (testing mode), per stand-in: bounded for the benchmark.
CHECK_LIMIT = 1000
MAX_X5C = 5  # a leaf and a few intermediates; Entra's own limit is not documented
DOCS = "Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials ."


class AssertionRefused(Exception):
    """An OAuth error for the token endpoint to answer (``error``, ``description``, ``status``)."""

    def __init__(self, description, error="invalid_client", status=401):
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


@dataclass(frozen=True)
class RegisteredCertificate:
    certificate: x509.Certificate
    sha1: bytes
    sha256: bytes

    @classmethod
    def of(cls, certificate):
        return cls(certificate, certificate.fingerprint(hashes.SHA1()),  # noqa: S303 - x5t is SHA-1
                   certificate.fingerprint(hashes.SHA256()))

    @property
    def thumbprint(self):
        """Upper-case SHA-1 hex: how the portal and Entra's error messages name a certificate."""
        return self.sha1.hex().upper()

    @property
    def window(self):
        c = self.certificate
        return (f"Start={c.not_valid_before_utc:%m/%d/%Y %H:%M:%S}, "
                f"End={c.not_valid_after_utc:%m/%d/%Y %H:%M:%S}")


@dataclass(frozen=True)
class TrustedSubject:
    """One ``trustedCertificateSubjects`` entry of an app manifest: an issuer (a CA
    certificate: a root or an intermediate) and the subject its certificate must have."""

    issuer: x509.Certificate
    subject: str

    def matches(self, certificate):
        wanted = self.subject.strip()
        names = {certificate.subject.rfc4514_string()}
        names |= {f"CN={a.value}" for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
        names |= {a.value for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
        return wanted in names


def load_certificate(pem_or_cert):
    """An ``x509.Certificate`` from one, or from PEM text/bytes (its first certificate:
    a file with a key and a chain names the leaf first)."""
    if isinstance(pem_or_cert, x509.Certificate):
        return pem_or_cert
    data = pem_or_cert.encode() if isinstance(pem_or_cert, str) else bytes(pem_or_cert)
    return x509.load_pem_x509_certificate(data)


def _b64url_decode(value):
    if not isinstance(value, str):
        raise ValueError("not a string")
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _when(epoch):
    try:
        return datetime.fromtimestamp(float(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
    except (TypeError, ValueError, OverflowError, OSError):
        return "1970-01-01T00:00:00.0000000Z"


class CertificateCredentials:
    """An app registration's certificate credentials, and the check of a client assertion."""

    def __init__(self, certificates=(), trusted_subjects=(), record_checks=False):
        self._lock = threading.Lock()
        self._registered = ()
        self._trusted = ()
        self._checks = deque(maxlen=CHECK_LIMIT) if record_checks else None
        for certificate in certificates:
            self.register(certificate)
        for issuer, subject in trusted_subjects:
            self.trust_subject(issuer, subject)

    # -- the app registration ----------------------------------------------------------
    def register(self, pem_or_cert):
        """Upload a certificate (its public part) to the app registration. Returns its thumbprint."""
        registered = RegisteredCertificate.of(load_certificate(pem_or_cert))
        with self._lock:  # copy on write: a check in flight reads one consistent tuple
            self._registered = (*[r for r in self._registered if r.sha256 != registered.sha256], registered)
        return registered.thumbprint

    def unregister(self, thumbprint):
        with self._lock:
            self._registered = tuple(r for r in self._registered if r.thumbprint != thumbprint.upper())

    def trust_subject(self, issuer, subject):
        """Allow subject name and issuer authentication: certificates issued (directly or
        through the x5c's intermediates) by ``issuer`` with this subject (``CN=...``)."""
        trusted = TrustedSubject(load_certificate(issuer), subject)
        with self._lock:
            self._trusted = (*self._trusted, trusted)

    @property
    def thumbprints(self):
        return [r.thumbprint for r in self._registered]

    @property
    def checks(self):
        """Each assertion checked (testing mode): how its key was found, and the outcome."""
        with self._lock:
            return [dict(c) for c in self._checks or ()]

    def clear_checks(self):
        with self._lock:
            if self._checks is not None:
                self._checks.clear()

    # -- the check ---------------------------------------------------------------------
    def verify(self, assertion, *, client_id, audience, now=None):
        """The assertion's claims, or ``AssertionRefused`` with Entra ID's error for it."""
        check = {"found_by": None, "thumbprint": None, "alg": None, "x5c": 0}
        try:
            claims = self._verify(assertion, client_id, audience, time.time() if now is None else now, check)
        except AssertionRefused as refused:
            check["outcome"] = refused.description.split(":", 1)[0]
            self._record(check)
            raise
        check["outcome"] = "ok"
        self._record(check)
        return claims

    def _record(self, check):
        if self._checks is not None:
            with self._lock:
                self._checks.append(check)

    def _verify(self, assertion, client_id, audience, now, check):
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise AssertionRefused("AADSTS50027: JWT token is invalid or malformed.") from None
        alg = check["alg"] = header.get("alg")
        if alg not in ALGORITHMS:
            raise AssertionRefused(f"AADSTS700027: Client assertion failed signature validation. [Reason - The"
                                   f" signing algorithm '{alg}' is not supported; use RS256 or PS256.]")
        chain = self._x5c(header, check)
        key_owner = self._find_registered(header, check)
        if key_owner is None:
            key_owner = self._subject_name_issuer(chain, header, check, now)
        check["thumbprint"] = key_owner.thumbprint
        certificate = key_owner.certificate
        if check["found_by"] != "x5c" and not (
                certificate.not_valid_before_utc.timestamp() <= now < certificate.not_valid_after_utc.timestamp()):
            raise _signature_refused("The key used is expired", key_owner, found_key=True)
        try:
            # Only the signature and the claims' presence: the rest is checked below, to
            # answer each failure with Entra's code and words.
            claims = jwt.decode(
                assertion, certificate.public_key(), algorithms=[alg],
                options={"require": ["aud", "exp", "iss", "sub", "jti"], "verify_aud": False, "verify_iat": False,
                         "verify_nbf": False, "verify_exp": False},
            )
        except jwt.InvalidSignatureError:
            raise _signature_refused("The provided signature value did not match the expected signature value",
                                     key_owner, found_key=True) from None
        except jwt.MissingRequiredClaimError as missing:
            raise AssertionRefused(f"AADSTS50027: JWT token is invalid or malformed. The '{missing.claim}'"
                                   " claim is missing.") from None
        except jwt.PyJWTError as exc:
            raise AssertionRefused(f"AADSTS50027: JWT token is invalid or malformed. {exc}") from None
        if not isinstance(claims["aud"], str):  # Entra refuses a list, even one that holds the endpoint
            raise AssertionRefused("AADSTS50027: JWT token is invalid or malformed. The 'aud' claim is not a"
                                   " single value.")
        if claims["aud"] != audience:
            raise AssertionRefused(f"AADSTS700023: Client assertion audience claim does not match Realm issuer."
                                   f" The expected audience is '{audience}'. {DOCS}")
        self._check_lifetime(claims, now)
        if claims.get("iss") != client_id or claims.get("sub") != client_id:
            raise AssertionRefused("AADSTS700021: Client assertion application identifier doesn't match"
                                   f" 'client_id' parameter. {DOCS}")
        if not isinstance(claims.get("jti"), str) or not claims["jti"]:
            raise AssertionRefused("AADSTS50027: JWT token is invalid or malformed. The 'jti' claim is empty.")
        return claims

    @staticmethod
    def _check_lifetime(claims, now):
        # Checked here rather than by PyJWT, to answer with Entra's message and its times.
        exp, nbf = claims.get("exp"), claims.get("nbf")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (exp, *(
            () if nbf is None else (nbf,))))
        if not numbers or now > exp + LEEWAY or (nbf is not None and now + LEEWAY < nbf):
            raise AssertionRefused(
                f"AADSTS700024: Client assertion is not within its valid time range. Current time:"
                f" {_when(now)}, assertion valid from {_when(nbf or 0)}, expiry time of assertion"
                f" {_when(exp)}. {DOCS}")

    @staticmethod
    def _x5c(header, check):
        """The x5c chain as certificates, leaf first (empty when there is none)."""
        x5c = header.get("x5c")
        if x5c is None:
            return []
        if not isinstance(x5c, list) or not x5c or len(x5c) > MAX_X5C:
            raise AssertionRefused("AADSTS50027: JWT token is invalid or malformed. The x5c header is not a"
                                   " list of certificates.")
        try:
            chain = [x509.load_der_x509_certificate(base64.b64decode(entry, validate=False)) for entry in x5c]
        except (ValueError, TypeError, binascii.Error):
            raise AssertionRefused("AADSTS50027: JWT token is invalid or malformed. A certificate in x5c can't"
                                   " be read.") from None
        check["x5c"] = len(chain)
        return chain

    def _find_registered(self, header, check):
        for name, digest in (("x5t#S256", "sha256"), ("x5t", "sha1")):
            if name not in header:
                continue
            try:
                wanted = _b64url_decode(header[name])
            except (ValueError, binascii.Error):
                raise AssertionRefused(f"AADSTS50027: JWT token is invalid or malformed. The {name} header"
                                       " is not base64url.") from None
            for registered in self._registered:
                if getattr(registered, digest) == wanted:
                    check["found_by"] = name
                    return registered
        return None

    def _subject_name_issuer(self, chain, header, check, now):
        """The x5c leaf, when the app registration trusts its subject and it chains to that issuer."""
        not_found = (
            "AADSTS700027: The certificate with identifier used to sign the client assertion is not registered on"
            " application. [Reason - The key was not found., Thumbprint of key used by client:"
            f" '{self._shown_thumbprint(header)}']")
        if not chain:
            raise AssertionRefused(not_found + " Alternatively, subject name and issuer authentication may be"
                                               " configured on the app: send the certificate in x5c.")
        if not self._trusted:
            raise AssertionRefused(not_found + " The app registration does not allow subject name and issuer"
                                               " authentication (x5c).")
        leaf = RegisteredCertificate.of(chain[0])
        for name, digest in (("x5t#S256", leaf.sha256), ("x5t", leaf.sha1)):
            try:
                named = name in header and _b64url_decode(header[name]) == digest
            except (ValueError, binascii.Error):
                named = False
            if name in header and not named:
                raise AssertionRefused(not_found + f" The {name} header does not name the certificate in x5c.")
        candidates = [trusted for trusted in self._trusted if trusted.matches(chain[0])]
        if not candidates:
            raise _signature_refused(f"The subject of the certificate in x5c ({chain[0].subject.rfc4514_string()})"
                                     " is not one the app registration trusts", leaf)
        failures = []
        for trusted in candidates:
            verifier = (PolicyBuilder().store(Store([trusted.issuer]))
                        .time(datetime.fromtimestamp(now, UTC))
                        # The issuer's CA certificate is held to the Web PKI's rules; the
                        # client's own certificate only to what x509 checks for every certificate
                        # (its signature, its validity, its issuer's constraints).
                        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                                            ee_policy=ExtensionPolicy.permit_all())
                        .build_client_verifier())
            try:
                verifier.verify(chain[0], chain[1:])
            except VerificationError as exc:
                failures.append(str(exc))
                continue
            check["found_by"] = "x5c"
            return leaf
        raise _signature_refused(f"The certificate in x5c does not chain to a trusted issuer ({'; '.join(failures)})",
                                 leaf)

    @staticmethod
    def _shown_thumbprint(header):
        for name in ("x5t", "x5t#S256"):
            try:
                return _b64url_decode(header[name]).hex().upper()
            except (KeyError, ValueError, binascii.Error):
                continue
        return ""


def _signature_refused(reason, owner, *, found_key=False):
    """AADSTS700027 in Entra's words: the reason, the certificate's thumbprint and, for a
    registered one, its validity (Entra's "Found key")."""
    found = f", Found key '{owner.window}'" if found_key else ""
    return AssertionRefused(f"AADSTS700027: Client assertion failed signature validation. [Reason - {reason}.,"
                            f" Thumbprint of key used by client: '{owner.thumbprint}'{found}]")


def make_self_signed_certificate(common_name="Local stand-in client", days=365, key_size=2048):
    """A new RSA key and a self-signed certificate for it, as one PEM (key first): what an
    app needs in CLIENT_CERTIFICATE_PATH, and what the stand-in registers."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem + certificate.public_bytes(serialization.Encoding.PEM)


def thumbprint_of(pem_or_cert):
    """Upper-case SHA-1 hex of a certificate."""
    return RegisteredCertificate.of(load_certificate(pem_or_cert)).thumbprint
