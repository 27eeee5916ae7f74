"""The app's credential at Microsoft Entra ID: CLIENT_SECRET, or a certificate.

Many organisations allow no client secrets. With CLIENT_CERTIFICATE_PATH set, MSAL proves
the app's identity with a client assertion (a JWT signed with the certificate's private
key, RFC 7523) instead. The PEM file is read once, at start-up (`read_configured_certificate`):
what is wrong with it becomes a configuration problem (`app_config.problems`), what the
configuration page may show of it is its `CertificateSummary` (thumbprints and dates,
never the key), and `client_credential` turns it into what MSAL takes.
"""

from __future__ import annotations

import logging
import re
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

logger = logging.getLogger(__name__)

# A certificate file is a few KB; anything this big is not one, and is not read whole.
MAX_FILE_BYTES = 1024 * 1024
# MSAL signs client assertions with RS256 or PS256: an RSA key, and no weak one.
MIN_RSA_KEY_BITS = 2048
# Warn in the log this long before the certificate expires: Entra ID refuses it after that.
EXPIRY_WARNING = timedelta(days=30)

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)
_PORTAL = "Microsoft Entra admin center > App registrations > your app > Certificates & secrets > Certificates"
_CONVERT = ("A .pfx/.p12 file converts with: openssl pkcs12 -in cert.pfx -out cert.pem "
            "(then set CLIENT_CERTIFICATE_PASSWORD to the PEM pass phrase you chose).")
_RENEW = f"Upload a new certificate under {_PORTAL}, then point CLIENT_CERTIFICATE_PATH at its PEM file."


@dataclass(frozen=True)
class CertificateSummary:
    """What anybody may see of the certificate: it identifies it in the portal, and says
    when it stops working. Nothing here is secret."""

    subject: str
    sha1_thumbprint: str  # upper-case hex, as the portal's Thumbprint column shows it
    sha256_thumbprint: str
    not_valid_before: datetime
    not_valid_after: datetime

    @property
    def expires(self) -> str:
        return _when(self.not_valid_after)

    @property
    def valid_from(self) -> str:
        return _when(self.not_valid_before)


@dataclass(frozen=True)
class ClientCertificate:
    """The certificate and its private key, ready for MSAL."""

    summary: CertificateSummary
    chain_pem: str  # the certificate first, then the rest of the file's certificates
    # Unencrypted PKCS#8, in memory only; never shown, logged or repr'd.
    private_key_pem: str = field(repr=False)


@dataclass(frozen=True)
class CertificateReading:
    """The outcome of reading CLIENT_CERTIFICATE_PATH once: the certificate when the file
    holds a usable one (or one that is merely out of date: its summary still helps), and
    what is wrong, as (setting, message, where to look)."""

    path: str
    certificate: ClientCertificate | None = None
    problem: tuple[str, str, str] | None = None

    @property
    def summary(self) -> CertificateSummary | None:
        return self.certificate.summary if self.certificate else None


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def summarize(certificate: x509.Certificate) -> CertificateSummary:
    return CertificateSummary(
        subject=certificate.subject.rfc4514_string() or "(no subject)",
        # SHA-1 is what Entra ID's x5t and the portal use; it identifies, it protects nothing.
        sha1_thumbprint=certificate.fingerprint(hashes.SHA1()).hex().upper(),  # noqa: S303
        sha256_thumbprint=certificate.fingerprint(hashes.SHA256()).hex().upper(),
        not_valid_before=certificate.not_valid_before_utc,
        not_valid_after=certificate.not_valid_after_utc,
    )


def _public_key_info(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class _Refused(Exception):
    """A problem with the certificate file, phrased for the configuration page."""

    def __init__(self, message: str, where: str = "", key: str = "CLIENT_CERTIFICATE_PATH",
                 certificate: ClientCertificate | None = None):
        super().__init__(message)
        self.problem = (key, message, where)
        self.certificate = certificate


def read_certificate(path: str, password: str = "", *, now: datetime | None = None) -> CertificateReading:
    """Read and check a PEM file with a private key and its certificate (and possibly the
    rest of its chain). Never raises for a bad file: the reading names the problem."""
    file = Path(path).expanduser()
    shown = str(file.absolute())
    try:
        data, mode = _read_file(file, shown)
        key_block, certificates = _split_pem(data, shown)
        private_key, encrypted = _load_private_key(key_block, password, shown)
        certificate = _pair(private_key, certificates, shown)
        _check_usable(private_key, certificate, now or datetime.now(UTC), shown)
    except _Refused as refused:
        return CertificateReading(path, refused.certificate, refused.problem)
    _log_reading(certificate.summary, shown, now or datetime.now(UTC), unencrypted_and_readable=(
        not encrypted and bool(mode & stat.S_IROTH)))
    return CertificateReading(path, certificate)


def _read_file(file: Path, shown: str) -> tuple[bytes, int]:
    try:
        with file.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
        mode = file.stat().st_mode
    except FileNotFoundError:
        raise _Refused(f"names {shown}, which does not exist.",
                       f"The PEM file with the certificate you uploaded under {_PORTAL}, and its private key. "
                       "Relative paths start in the app's working directory.") from None
    except IsADirectoryError:
        raise _Refused(f"names {shown}, which is a directory, not a file.",
                       "Name the PEM file itself, e.g. certs/app.pem.") from None
    except OSError as exc:
        raise _Refused(f"names {shown}, which can't be read: {exc.strerror or exc}.",
                       "The user the app runs as needs read access to it (and nobody else should have it).") from None
    if len(data) > MAX_FILE_BYTES:
        raise _Refused(f"names {shown}, which is too big to be a certificate file.", _CONVERT)
    return data, mode


def _split_pem(data: bytes, shown: str) -> tuple[bytes, list[x509.Certificate]]:
    """(the one private key's PEM block, the certificates)."""
    blocks = [(match.group(1).decode(), match.group(0)) for match in _PEM_BLOCK.finditer(data)]
    if not blocks:
        raise _Refused(f"names {shown}, which is not a PEM file (no -----BEGIN ...----- block in it).", _CONVERT)
    keys = [block for label, block in blocks if label.endswith("PRIVATE KEY")]
    certificate_blocks = [block for label, block in blocks if label in ("CERTIFICATE", "X509 CERTIFICATE")]
    if not certificate_blocks:
        raise _Refused(f"names {shown}, which holds no certificate (-----BEGIN CERTIFICATE-----).",
                       "Put the certificate in the same file as its private key, certificate after key.")
    if not keys:
        raise _Refused(f"names {shown}, which holds no private key (-----BEGIN PRIVATE KEY-----).",
                       "The app signs with the private key, so the file needs it as well as the certificate. "
                       + _CONVERT)
    if len(keys) > 1:
        raise _Refused(f"names {shown}, which holds {len(keys)} private keys.",
                       "Keep only the private key of the certificate uploaded to the app registration.")
    try:
        return keys[0], [x509.load_pem_x509_certificate(block) for block in certificate_blocks]
    except ValueError:
        raise _Refused(f"names {shown}, in which a certificate is damaged.", _CONVERT) from None


def _load_private_key(block: bytes, password: str, shown: str):
    """(the private key, whether the file had it encrypted)."""
    encrypted = b"ENCRYPTED" in block.split(b"\n", 2)[0] or b"Proc-Type: 4,ENCRYPTED" in block
    needs_password = _Refused(f"is not set, but the private key in {shown} is encrypted.",
                              "The pass phrase the key was encrypted with.", key="CLIENT_CERTIFICATE_PASSWORD")
    if encrypted and not password:
        raise needs_password
    if password and not encrypted:
        logger.warning("CLIENT_CERTIFICATE_PASSWORD is set, but the private key in %s is not encrypted", shown)
    try:
        return serialization.load_pem_private_key(block, password.encode() if encrypted else None), encrypted
    except ValueError:
        if encrypted:
            raise _Refused(f"does not decrypt the private key in {shown} (wrong pass phrase, or a damaged key).",
                           "The pass phrase the key was encrypted with.", key="CLIENT_CERTIFICATE_PASSWORD") from None
        raise _Refused(f"names {shown}, whose private key is damaged.", _CONVERT) from None
    except TypeError:  # encrypted after all, in a way the first line did not show
        raise needs_password from None
    except UnsupportedAlgorithm:
        raise _Refused(f"names {shown}, whose private key is of a kind this app can't read.", _CONVERT) from None


def _pair(private_key, certificates: list[x509.Certificate], shown: str) -> ClientCertificate:
    """The certificate whose public key is the private key's (the others are its chain)."""
    key_info = _public_key_info(private_key.public_key())
    mine = [c for c in certificates if _public_key_info(c.public_key()) == key_info]
    if not mine:
        listed = ", ".join(summarize(c).sha1_thumbprint for c in certificates)
        raise _Refused(f"names {shown}, whose private key does not belong to its certificate "
                       f"(SHA-1 thumbprint {listed}).",
                       "The key and the certificate must be a pair: export both from the same place "
                       "(e.g. Key Vault, or the .pfx you uploaded the certificate from).")
    leaf = mine[0]
    chain = [leaf, *(c for c in certificates if c is not leaf)]
    return ClientCertificate(
        summary=summarize(leaf),
        chain_pem="".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain),
        # Decrypted once, here: MSAL given a pass phrase would decrypt it again for every
        # application identity builds (one per sign-in and per token look-up).
        private_key_pem=private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
    )


def _check_usable(private_key, certificate: ClientCertificate, now: datetime, shown: str) -> None:
    summary = certificate.summary
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise _Refused(f"names {shown}, whose key is not an RSA key.",
                       "Microsoft Entra ID certificate credentials are signed with RS256 or PS256: "
                       "make an RSA certificate (2048 bits or more).", certificate=certificate)
    if private_key.key_size < MIN_RSA_KEY_BITS:
        raise _Refused(f"names {shown}, whose RSA key has only {private_key.key_size} bits.",
                       f"Make a new certificate with a key of at least {MIN_RSA_KEY_BITS} bits.",
                       certificate=certificate)
    if now < summary.not_valid_before:
        raise _Refused(f"names a certificate (SHA-1 thumbprint {summary.sha1_thumbprint}) that is not valid "
                       f"until {summary.valid_from}.", "Check this machine's clock, or wait. " + _RENEW,
                       certificate=certificate)
    if now >= summary.not_valid_after:
        raise _Refused(f"names a certificate (SHA-1 thumbprint {summary.sha1_thumbprint}) that expired on "
                       f"{summary.expires}.", _RENEW, certificate=certificate)


def _log_reading(summary: CertificateSummary, shown: str, now: datetime, *, unencrypted_and_readable: bool) -> None:
    logger.info("Client certificate %s: %s, SHA-1 thumbprint %s, valid until %s",
                shown, summary.subject, summary.sha1_thumbprint, summary.expires)
    if summary.not_valid_after - now < EXPIRY_WARNING:
        logger.warning("Client certificate %s (SHA-1 thumbprint %s) expires on %s: sign-in stops working then. %s",
                       shown, summary.sha1_thumbprint, summary.expires, _RENEW)
    if unencrypted_and_readable:
        logger.warning("Client certificate %s holds an unencrypted private key that other users of this "
                       "machine can read: chmod 600 it", shown)


def read_configured_certificate(config) -> CertificateReading | None:
    """Read CLIENT_CERTIFICATE_PATH, if set; the app does this once, at start-up, and keeps
    the reading as config["CLIENT_CERTIFICATE"]."""
    path = config.get("CLIENT_CERTIFICATE_PATH")
    if not path:
        return None
    reading = read_certificate(path, config.get("CLIENT_CERTIFICATE_PASSWORD") or "")
    if reading.problem:  # the configuration page says so too; the log is where operators look first
        logger.warning("Configuration: %s %s %s", *reading.problem)
    return reading


def configured_certificate(config) -> CertificateReading | None:
    """The reading kept at start-up, or a fresh one for a config that has none yet."""
    reading = config.get("CLIENT_CERTIFICATE")
    if isinstance(reading, CertificateReading) and reading.path == config.get("CLIENT_CERTIFICATE_PATH"):
        return reading
    return read_configured_certificate(config)


def client_credential(config) -> str | dict:
    """What MSAL takes as `client_credential`: CLIENT_SECRET, or the certificate.

    MSAL 1.39 signs the client assertion with RS256 and names the certificate by its SHA-1
    thumbprint (x5t) when given "thumbprint"; given "public_certificate" instead, it signs
    with PS256, names it by its SHA-256 thumbprint (x5t#S256) and sends the certificate
    itself (x5c), which subject name/issuer authentication needs. An empty string when the
    certificate is unusable: the configuration page then answers every request anyway.
    """
    reading = configured_certificate(config)
    if reading is None:
        return config.get("CLIENT_SECRET") or ""
    if reading.certificate is None:
        return ""
    certificate = reading.certificate
    if config.get("CLIENT_CERTIFICATE_SEND_X5C") is True:
        return {"private_key": certificate.private_key_pem, "public_certificate": certificate.chain_pem}
    return {"private_key": certificate.private_key_pem, "thumbprint": certificate.summary.sha1_thumbprint}
