"""Every setting of the app, read once from the environment.

`load()` turns an environment (normally `os.environ` after `.env` is loaded) into a
plain dict of Flask config keys; `problems()` lists what is missing or contradictory
so that the app can show a configuration page instead of failing. Nothing else in the
app reads `os.environ` (but for requests' own REQUESTS_CA_BUNDLE, in `http_pool.py`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import load_dotenv

import client_credentials

PROJECT_DIR = Path(__file__).resolve().parent
DOTENV_PATH = PROJECT_DIR / ".env"

GRAPH_ME = "https://graph.microsoft.com/v1.0/me"

# Values copied from templates and never replaced: treat them as unset.
_PLACEHOLDER_MARKERS = ("enter_the", "<", "your_", "your-", "xxxxxxxx", "changeme")

# Routes the app owns: REDIRECT_PATH must not shadow one of them.
RESERVED_PATHS = {"/", "/login", "/logout", "/call_downstream_api", "/healthz", "/profile/edit", "/password/reset"}

SESSION_TYPES = ("filesystem", "redis")

# A SECRET_KEY shorter than this is guessable enough to forge CSRF tokens.
MIN_SECRET_KEY_LENGTH = 32


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration, phrased for the person who fixes it."""

    key: str
    message: str
    where: str = ""


def load_dotenv_file(path: Path = DOTENV_PATH) -> bool:
    """Load `.env` into the process environment without overriding what is already set.

    `flask run` does this on its own; gunicorn does not, so `create_app()` calls it too.
    """
    return load_dotenv(path, override=False) if path.is_file() else False


def _clean(value: str | None) -> str:
    value = (value or "").strip()
    if any(marker in value.lower() for marker in _PLACEHOLDER_MARKERS):
        return ""
    return value


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def _flag(environ, key: str) -> bool | str:
    """True or False; any other value is kept as it is, for problems() to name."""
    raw = (environ.get(key) or "").strip()
    if raw.lower() in _TRUE:
        return True
    return False if raw.lower() in _FALSE else raw


def _int(environ, key: str, default: int, unreadable: list[str]) -> int:
    """The whole number the setting holds; a value that is none (`8h`, `one`) is named in
    `unreadable` for problems() to report, and the default stands in meanwhile."""
    raw = (environ.get(key) or "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        unreadable.append(key)
        return default


def load(environ=None) -> dict:
    """Read every setting of the contract (see `.env.sample`) into Flask config keys."""
    environ = os.environ if environ is None else environ
    scope = (environ.get("SCOPE") or "").split() or ["User.Read"]
    unreadable: list[str] = []  # settings that should be whole numbers and are not
    b2c_tenant = _clean(environ.get("B2C_TENANT_NAME"))
    b2c_flows = {ours: _b2c_setting(environ, ours, alias) for ours, alias in B2C_FLOW_ALIASES.items()}
    return {
        "CLIENT_ID": _clean(environ.get("CLIENT_ID")),
        "CLIENT_SECRET": _clean(environ.get("CLIENT_SECRET")),
        # Instead of CLIENT_SECRET: a PEM file with the private key and its certificate (and
        # possibly the rest of its chain), read once at start-up (client_credentials.py).
        "CLIENT_CERTIFICATE_PATH": _clean(environ.get("CLIENT_CERTIFICATE_PATH")),
        "CLIENT_CERTIFICATE_PASSWORD": (environ.get("CLIENT_CERTIFICATE_PASSWORD") or "").strip(),
        # Send the certificate with every client assertion (x5c): what subject name/issuer
        # authentication needs.
        "CLIENT_CERTIFICATE_SEND_X5C": _flag(environ, "CLIENT_CERTIFICATE_SEND_X5C"),
        "AUTHORITY": _clean(environ.get("AUTHORITY")).rstrip("/"),
        "OIDC_AUTHORITY": _clean(environ.get("OIDC_AUTHORITY")).rstrip("/"),
        "B2C_TENANT_NAME": b2c_tenant,
        **{key: value for key, (value, _name) in b2c_flows.items()},
        # Which names the B2C flows were read from: ours, or the official sample's aliases.
        "B2C_SETTING_NAMES_USED": {key: name for key, (value, name) in b2c_flows.items() if value},
        # B2C's host: <tenant>.b2clogin.com, or a custom domain (host or host:port).
        "B2C_DOMAIN": _clean(environ.get("B2C_DOMAIN")).strip("/").lower(),
        "REDIRECT_PATH": (environ.get("REDIRECT_PATH") or "/getAToken").strip(),
        # Where the identity provider's signed-out page signs users out of this app too.
        "FRONTCHANNEL_LOGOUT_PATH": (environ.get("FRONTCHANNEL_LOGOUT_PATH") or "/logout/frontchannel").strip(),
        "SCOPE": scope,
        # Client capabilities declared to MSAL; "cp1": the app handles claims challenges (CAE).
        # Set to an empty value to declare none.
        "CLIENT_CAPABILITIES": (environ.get("CLIENT_CAPABILITIES", "cp1") or "").split(),
        "ENDPOINT": (environ.get("ENDPOINT") or GRAPH_ME).strip(),
        # The identity provider's name on pages, when it is not Microsoft Entra ID (default:
        # its host name).
        "PROVIDER_NAME": (environ.get("PROVIDER_NAME") or "").strip(),
        "SECRET_KEY": (environ.get("SECRET_KEY") or "").strip(),
        # Older keys, still accepted for reading (sessions, CSRF tokens) after a rotation.
        "SECRET_KEY_FALLBACKS": [k.strip() for k in (environ.get("SECRET_KEY_FALLBACKS") or "").split(",")
                                 if k.strip()],
        "SESSION_TYPE": (environ.get("SESSION_TYPE") or "filesystem").strip().lower(),
        "REDIS_URL": (environ.get("REDIS_URL") or "").strip(),
        # Where the embedded filesystem store keeps sessions (default: instance/sessions).
        "SESSION_FILE_DIR": (environ.get("SESSION_FILE_DIR") or "").strip(),
        "SESSION_KEY_PREFIX": (environ.get("SESSION_KEY_PREFIX") or "msal-flask:session:").strip(),
        # A signed-in session lives this long after its last change (a token refresh
        # writes it again); a sign-in that was started and never finished, much less.
        "SESSION_LIFETIME_SECONDS": _int(environ, "SESSION_LIFETIME_SECONDS", 8 * 3600, unreadable),
        "PENDING_SIGN_IN_LIFETIME_SECONDS": _int(environ, "PENDING_SIGN_IN_LIFETIME_SECONDS", 3600, unreadable),
        # How many reverse proxies stand in front (Azure App Service: 1). 0 trusts no
        # X-Forwarded-* header, so a client cannot spoof its scheme or host.
        "PROXY_COUNT": _int(environ, "PROXY_COUNT", 0, unreadable),
        # Host names the app answers to (Flask's TRUSTED_HOSTS); any other Host header gets
        # a 400, so nobody can make the app build its redirect URIs on their host name.
        "TRUSTED_HOSTS": [h.strip() for h in (environ.get("TRUSTED_HOSTS") or "").split(",") if h.strip()] or None,
        # Size of the connection pool to the downstream API: at least the worker's threads.
        "DOWNSTREAM_POOL_SIZE": _int(environ, "DOWNSTREAM_POOL_SIZE", 16, unreadable),
        "LOG_LEVEL": (environ.get("LOG_LEVEL") or "INFO").strip().upper(),
        "UNREADABLE_SETTINGS": unreadable,
        # `flask run` sets this; it marks local development, where a random SECRET_KEY is fine.
        "RUN_FROM_CLI": environ.get("FLASK_RUN_FROM_CLI") == "true",
    }


# Azure AD B2C user flows: our setting -> the official sample's name for it (ours wins).
B2C_FLOW_ALIASES = {
    "B2C_SIGNUP_SIGNIN_USER_FLOW": "SIGNUPSIGNIN_USER_FLOW",
    "B2C_EDIT_PROFILE_USER_FLOW": "EDITPROFILE_USER_FLOW",
    "B2C_RESET_PASSWORD_USER_FLOW": "RESETPASSWORD_USER_FLOW",
}


def _b2c_setting(environ, ours: str, alias: str) -> tuple[str, str]:
    """(value, the name it was read from)."""
    value = _clean(environ.get(ours))
    if value:
        return value, ours
    value = _clean(environ.get(alias))
    return value, (alias if value else ours)


def b2c_authority(config, flow_key: str = "B2C_SIGNUP_SIGNIN_USER_FLOW") -> str:
    """The authority of one Azure AD B2C user flow: https://<B2C_DOMAIN>/<tenant>.onmicrosoft.com/<flow>."""
    tenant, flow = config.get("B2C_TENANT_NAME"), config.get(flow_key)
    if not (tenant and flow):
        return ""
    domain = config.get("B2C_DOMAIN") or f"{tenant}.b2clogin.com"
    return f"https://{domain}/{tenant}.onmicrosoft.com/{flow}"


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def uses_local_stand_in(config) -> bool:
    """True when Entra ID's authority (AUTHORITY, or B2C's) is on this machine: the local
    stand-in. An OIDC_AUTHORITY on this machine is some other provider run locally."""
    authority = "" if config.get("OIDC_AUTHORITY") else (config.get("AUTHORITY") or b2c_authority(config))
    return bool(authority) and is_loopback_url(authority)


def is_local_development(config) -> bool:
    authority = config.get("OIDC_AUTHORITY") or config.get("AUTHORITY") or b2c_authority(config)
    return bool(config.get("TESTING") or config.get("RUN_FROM_CLI") or (authority and is_loopback_url(authority)))


def _https_with_path(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "https" and bool(parts.hostname) and parts.path.strip("/") != ""


def problems(config) -> list[Problem]:
    """Everything that keeps sign-in from working, each with where to find the value."""
    found: list[Problem] = []
    portal = "Microsoft Entra admin center > Identity > Applications > App registrations > your app"
    if not config.get("CLIENT_ID"):
        found.append(Problem(
            "CLIENT_ID", "is not set.",
            f"{portal} > Overview > Application (client) ID."))
    found += _credential_problems(config, portal)

    has_authority = bool(config.get("AUTHORITY"))
    has_oidc = bool(config.get("OIDC_AUTHORITY"))
    b2c_tenant, b2c_flow = config.get("B2C_TENANT_NAME"), config.get("B2C_SIGNUP_SIGNIN_USER_FLOW")
    has_b2c = bool(b2c_tenant or b2c_flow)
    shapes = [name for name, present in (
        ("AUTHORITY", has_authority), ("OIDC_AUTHORITY", has_oidc),
        ("B2C_TENANT_NAME/B2C_SIGNUP_SIGNIN_USER_FLOW", has_b2c)) if present]
    if not shapes:
        found.append(Problem(
            "AUTHORITY", "is not set (nor OIDC_AUTHORITY, nor the B2C pair).",
            "Workforce tenant: AUTHORITY=https://login.microsoftonline.com/<Directory (tenant) ID> "
            f"({portal} > Overview). External ID: "
            "OIDC_AUTHORITY=https://<tenant>.ciamlogin.com/<tenant>.onmicrosoft.com/v2.0. "
            "Azure AD B2C: B2C_TENANT_NAME and B2C_SIGNUP_SIGNIN_USER_FLOW."))
    elif len(shapes) > 1:
        found.append(Problem(
            shapes[0], f"contradicts {', '.join(shapes[1:])}: set exactly one authority shape.",
            "Keep the one that matches your tenant type and remove the others from .env."))
    elif has_b2c and not (b2c_tenant and b2c_flow):
        missing = "B2C_TENANT_NAME" if not b2c_tenant else "B2C_SIGNUP_SIGNIN_USER_FLOW"
        found.append(Problem(
            missing, "is not set: Azure AD B2C needs both the tenant name and the user flow.",
            "Azure AD B2C > User flows: the sign-up and sign-in flow's name, e.g. B2C_1_signupsignin1."))
    elif has_b2c:
        found += _b2c_problems(config)
    else:
        key = "OIDC_AUTHORITY" if has_oidc else "AUTHORITY"
        value = config.get(key, "")
        if has_oidc and urlsplit(value).scheme == "https" and urlsplit(value).hostname and not _https_with_path(value):
            found.append(Problem(
                key, f"{value} has no path after the host, and MSAL refuses an authority without one.",
                "Use the issuer with its path, e.g. https://<tenant>.ciamlogin.com/<tenant>.onmicrosoft.com/v2.0, "
                "https://<org>.okta.com/oauth2/default or https://<host>/realms/<realm> (Keycloak). "
                "A provider whose issuer has no path cannot be used through MSAL (see the README's providers)."))
        elif not _https_with_path(value):
            found.append(Problem(
                key, "must be an https URL with a tenant path, such as https://login.microsoftonline.com/<tenant>.",
                "MSAL refuses any other authority."))

    redirect_path = config.get("REDIRECT_PATH", "")
    if not redirect_path.startswith("/") or redirect_path.startswith("//") or "?" in redirect_path:
        found.append(Problem("REDIRECT_PATH", "must be a path such as /getAToken.",
                             "It must match the redirect URI registered under Authentication > Web."))
    elif redirect_path.rstrip("/") in RESERVED_PATHS or redirect_path == "/":
        found.append(Problem("REDIRECT_PATH", f"{redirect_path} is one of the app's own routes.",
                             "Use /getAToken, and register http://localhost:5000/getAToken."))

    frontchannel_path = config.get("FRONTCHANNEL_LOGOUT_PATH", "")
    if (not frontchannel_path.startswith("/") or frontchannel_path.startswith("//") or "?" in frontchannel_path
            or frontchannel_path.rstrip("/") in (*RESERVED_PATHS, redirect_path.rstrip("/"))):
        found.append(Problem("FRONTCHANNEL_LOGOUT_PATH", "must be a path of its own such as /logout/frontchannel.",
                             "Register http://localhost:5000/logout/frontchannel as the app registration's "
                             "Front-channel logout URL (Authentication)."))

    endpoint = config.get("ENDPOINT", "")
    parts = urlsplit(endpoint)
    if not parts.hostname or parts.scheme not in ("https", "http") or (
            parts.scheme == "http" and not is_loopback_url(endpoint)):
        found.append(Problem("ENDPOINT", "must be an https URL (the token is sent to it).",
                             f"Microsoft Graph: {GRAPH_ME}"))

    for key, smallest, why in (
            ("SESSION_LIFETIME_SECONDS", 60, "How long a signed-in session lasts; 28800 is 8 hours."),
            ("PENDING_SIGN_IN_LIFETIME_SECONDS", 60, "How long a started sign-in may take; 3600 is an hour."),
            ("DOWNSTREAM_POOL_SIZE", 1, "Connections kept to the downstream API per process; 16 is plenty."),
            ("PROXY_COUNT", 0, "The number of reverse proxies in front of the app; 0 when there is none.")):
        value = config.get(key)
        if key in (config.get("UNREADABLE_SETTINGS") or ()) or (isinstance(value, int) and value < smallest):
            # 0 would mean "never expires" to the file store and an error to Redis.
            found.append(Problem(key, f"must be a whole number of at least {smallest}.", why))

    session_type = config.get("SESSION_TYPE")
    if session_type not in SESSION_TYPES:
        found.append(Problem("SESSION_TYPE", f"must be one of {', '.join(SESSION_TYPES)}.", ""))
    elif session_type == "redis" and not config.get("REDIS_URL"):
        found.append(Problem("REDIS_URL", "is not set, but SESSION_TYPE=redis.",
                             "redis://host:6379/0, or rediss://<name>.redis.cache.windows.net:6380/0 "
                             "with the access key as password for Azure Cache for Redis."))
    return found


def _credential_problems(config, portal: str) -> list[Problem]:
    """CLIENT_SECRET, or a certificate instead of it: exactly one, and a usable one."""
    found: list[Problem] = []
    has_secret, has_certificate = bool(config.get("CLIENT_SECRET")), bool(config.get("CLIENT_CERTIFICATE_PATH"))
    if not has_secret and not has_certificate:
        found.append(Problem(
            "CLIENT_SECRET", "is not set (nor CLIENT_CERTIFICATE_PATH, for a certificate instead).",
            f"{portal} > Certificates & secrets > New client secret; copy its Value (not its Secret ID). "
            "Or upload a certificate there and set CLIENT_CERTIFICATE_PATH to its PEM file with the private key."))
    elif has_secret and has_certificate:
        found.append(Problem(
            "CLIENT_SECRET", "contradicts CLIENT_CERTIFICATE_PATH: set one client credential, not both.",
            "Remove CLIENT_SECRET to sign in with the certificate (and delete the secret under "
            "Certificates & secrets once nothing uses it), or remove CLIENT_CERTIFICATE_PATH."))
    send_x5c = config.get("CLIENT_CERTIFICATE_SEND_X5C", False)
    if not isinstance(send_x5c, bool):
        found.append(Problem("CLIENT_CERTIFICATE_SEND_X5C", "must be true or false.",
                             "true only if the app registration uses subject name and issuer "
                             "authentication (trustedCertificateSubjects in its manifest)."))
    if not has_certificate:
        # Somebody meant to use a certificate: say so rather than only "CLIENT_SECRET is not set".
        stray = [key for key, value in (("CLIENT_CERTIFICATE_PASSWORD", config.get("CLIENT_CERTIFICATE_PASSWORD")),
                                        ("CLIENT_CERTIFICATE_SEND_X5C", send_x5c is True)) if value]
        if stray:
            found.append(Problem("CLIENT_CERTIFICATE_PATH", f"is not set, but {' and '.join(stray)} is.",
                                 "Set it to the PEM file with the certificate's private key and the "
                                 "certificate, or remove the other CLIENT_CERTIFICATE_ settings."))
        return found
    reading = client_credentials.configured_certificate(config)
    if reading is not None and reading.problem:
        found.append(Problem(*reading.problem))
    return found


def _b2c_problems(config) -> list[Problem]:
    found = []
    domain = config.get("B2C_DOMAIN") or ""
    if domain and not _https_with_path(f"https://{domain}/x"):
        found.append(Problem("B2C_DOMAIN", "must be a host name, or host:port, such as login.contoso.com.",
                             "Azure AD B2C > Custom domains."))
    if domain and not domain.endswith(".b2clogin.com"):
        # MSAL recognises a B2C authority on another host only by the flow's name.
        for key in B2C_FLOW_ALIASES:
            flow = config.get(key) or ""
            if flow and not flow.lower().startswith("b2c_1"):
                found.append(Problem(key, f"{flow} must start with B2C_1 on a custom domain (MSAL's rule for "
                                          "recognising Azure AD B2C there).",
                                     "Rename the user flow (B2C_1_...) or the custom policy (B2C_1A_...)."))
    return found


def secret_key_problem(secret_key: str) -> str | None:
    """Why a SECRET_KEY is unfit for production, or None when it is fit."""
    if not secret_key:
        return "SECRET_KEY is not set."
    if len(secret_key) < MIN_SECRET_KEY_LENGTH or len(set(secret_key)) < 8 or _clean(secret_key) == "":
        return f"SECRET_KEY is too weak (use at least {MIN_SECRET_KEY_LENGTH} random characters)."
    return None


SIGNING_KEY_ADVICE = (
    "Generate one with: python -c 'import secrets; print(secrets.token_hex(32))' "
    "and set it as SECRET_KEY in the environment or in .env."
)


def secret_key_for(config, instance_path: str) -> str:
    """The SECRET_KEY to run with: the configured one, or in local development only, one
    random key kept in the instance folder, so that every worker process and every
    restart agree on it. Anywhere else a missing or weak key stops the start."""
    key = config.get("SECRET_KEY") or ""
    problem = secret_key_problem(key)
    if problem is None:
        return key
    if not is_local_development(config):
        raise RuntimeError(f"Refusing to start: {problem} {SIGNING_KEY_ADVICE}")
    # Written whole, then linked into place: a worker never reads a half-written key, and
    # the first worker's key wins.
    key_file = Path(instance_path) / "dev_secret_key"
    if not key_file.exists():
        draft = key_file.with_name(f".dev_secret_key.{os.getpid()}")
        draft.write_text(secrets.token_hex(32), encoding="ascii")
        draft.chmod(0o600)
        with contextlib.suppress(FileExistsError):
            os.link(draft, key_file)
        draft.unlink()
    return key_file.read_text(encoding="ascii").strip()
