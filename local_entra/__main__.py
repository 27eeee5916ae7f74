"""Run the stand-in in the foreground: ``python -m local_entra [options]``.

Prints the settings an app needs as KEY=value lines (and can write them to
a file for a launcher), then serves until Ctrl-C or SIGTERM. ``--b2c`` serves the
tenant as Azure AD B2C and prints the B2C_* settings instead of AUTHORITY.
"""

import argparse
import logging
import os
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from . import b2c
from .assertions import make_self_signed_certificate
from .standin import StandIn

ENV_KEYS = ("AUTHORITY", "CLIENT_ID", "CLIENT_SECRET", "ENDPOINT", "REQUESTS_CA_BUNDLE")
# --b2c: the tenant and its user flows instead of AUTHORITY (the app builds each flow's authority).
B2C_ENV_KEYS = ("B2C_TENANT_NAME", "B2C_SIGNUP_SIGNIN_USER_FLOW", "B2C_EDIT_PROFILE_USER_FLOW",
                "B2C_RESET_PASSWORD_USER_FLOW", "B2C_DOMAIN", *ENV_KEYS[1:])
# What --make-client-certificate writes in its directory: the key and the certificate, one PEM.
MADE_CERTIFICATE_NAME = "client-certificate.pem"


def _port(name, default):
    """A default port that a launcher can move with LOCAL_ENTRA_<NAME>_PORT."""
    return int(os.environ.get(f"LOCAL_ENTRA_{name}_PORT", str(default)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m local_entra",
        description="Local stand-in for Microsoft Entra ID and Microsoft Graph /v1.0/me (loopback only).",
    )
    parser.add_argument("--front-port", type=int, default=_port("FRONT", 5001),
                        help="http port of the sign-in pages (default %(default)s)")
    parser.add_argument("--idp-port", type=int, default=_port("IDP", 5443),
                        help="https port of discovery, token and keys (default %(default)s)")
    parser.add_argument("--graph-port", type=int, default=_port("GRAPH", 5444),
                        help="https port of Graph /v1.0/me (default %(default)s)")
    parser.add_argument("--access-token-lifetime", type=int,
                        default=int(os.environ.get("LOCAL_ENTRA_ACCESS_TOKEN_LIFETIME", "3600")),
                        help="seconds; under 300 makes MSAL refresh on every call (default %(default)s)")
    parser.add_argument("--redirect-uri", action="append", dest="redirect_uris", metavar="URI",
                        help="a registered redirect URI (repeatable; default: http://localhost:5000/getAToken"
                             " and http://127.0.0.1:5000/getAToken)")
    parser.add_argument("--frontchannel-logout-uri", action="append", dest="frontchannel_logout_uris",
                        metavar="URI", default=[],
                        help="an app's front-channel logout URL, loaded with ?sid= when a session ends"
                             " (repeatable; default: none)")
    parser.add_argument("--client-certificate", action="append", dest="client_certificates", metavar="PATH",
                        default=[],
                        help="register the certificate in this PEM file with the app registration (repeatable):"
                             " client assertions signed with its key are accepted")
    parser.add_argument("--make-client-certificate", metavar="DIR",
                        help=f"make a key and a self-signed certificate in DIR/{MADE_CERTIFICATE_NAME} (or reuse"
                             " the one there), register it, and print CLIENT_CERTIFICATE_PATH instead of"
                             " CLIENT_SECRET")
    parser.add_argument("--b2c", action="store_true", default=b2c.requested(os.environ),
                        help="serve the tenant as Azure AD B2C (user flows for sign-up/sign-in, edit profile and"
                             " password reset) and print the B2C_* settings instead of AUTHORITY"
                             " (default: on when LOCAL_ENTRA_B2C=1)")
    parser.add_argument("--write-env", metavar="PATH", help="also write the KEY=value lines to PATH")
    parser.add_argument("--ready-file", metavar="PATH",
                        help="create PATH once every listener accepts connections (removed on exit)")
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    return parser.parse_args(argv)


def _write_atomically(path, text):
    # A launcher polling for the file must never read half of it.
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def made_client_certificate(directory):
    """DIR/client-certificate.pem: the one already there while it has a day left, else a new
    one (the app's .env keeps pointing at the same file across restarts)."""
    path = Path(directory).expanduser().absolute() / MADE_CERTIFICATE_NAME
    try:
        data = path.read_bytes()
        serialization.load_pem_private_key(data, None)
        certificate = x509.load_pem_x509_certificate(data)
        if certificate.not_valid_after_utc - datetime.now(UTC) > timedelta(days=1):
            return path, data
    except (OSError, ValueError, TypeError):
        pass  # missing, damaged or encrypted: make a new one
    path.parent.mkdir(parents=True, exist_ok=True)
    data = make_self_signed_certificate()
    # Written whole, readable by its owner only (it holds a private key), then put in place.
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.replace(draft, path)
    return path, data


def _client_certificates(args):
    """(PEM data to register, the path an app should use as CLIENT_CERTIFICATE_PATH or None)."""
    registered, app_path = [], None
    for name in args.client_certificates:
        path = Path(name).expanduser().absolute()
        data = path.read_bytes()
        x509.load_pem_x509_certificate(data)  # fails now, with the file's name, if it holds none
        registered.append(data)
        if app_path is None and b"PRIVATE KEY-----" in data:
            app_path = path
    if args.make_client_certificate:
        path, data = made_client_certificate(args.make_client_certificate)
        registered.append(data)
        app_path = path
    return registered, app_path


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s local_entra %(message)s")
    kwargs = {"redirect_uris": args.redirect_uris} if args.redirect_uris else {}
    try:
        certificates, certificate_path = _client_certificates(args)
    except (OSError, ValueError) as exc:
        print(f"local_entra: client certificate: {exc}", file=sys.stderr)
        return 2
    standin = StandIn(front_port=args.front_port, idp_port=args.idp_port, graph_port=args.graph_port,
                      access_token_lifetime=args.access_token_lifetime,
                      frontchannel_logout_uris=args.frontchannel_logout_uris,
                      client_certificates=certificates, b2c=args.b2c, **kwargs)
    try:
        standin.start()
    except OSError as exc:
        print(f"local_entra: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()
    # SIGTERM (a launcher or `kill`) takes the same clean path as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        settings = dict(standin.settings)
        keys = list(B2C_ENV_KEYS if args.b2c else ENV_KEYS)
        if certificates:
            # The app refuses a secret and a certificate together (the stand-in takes either).
            keys.remove("CLIENT_SECRET")
            if certificate_path is not None:
                settings["CLIENT_CERTIFICATE_PATH"] = str(certificate_path)
                keys.insert(keys.index("ENDPOINT"), "CLIENT_CERTIFICATE_PATH")
        lines = "".join(f"{key}={settings[key]}\n" for key in keys)
        print(lines, end="", flush=True)
        for thumbprint in standin.certificates.thumbprints:
            print(f"# registered client certificate: SHA-1 thumbprint {thumbprint}", file=sys.stderr, flush=True)
        if certificates and certificate_path is None:
            print("# set CLIENT_CERTIFICATE_PATH to the PEM file with that certificate and its private key",
                  file=sys.stderr, flush=True)
        if args.b2c:
            print(f"# Azure AD B2C user flows: {', '.join(standin.user_flows.values())}"
                  f" (sign-up/sign-in: {standin.authority})", file=sys.stderr, flush=True)
        print(f"# sign-in pages: {standin.front_url}  (registered redirect URIs: "
              f"{', '.join(standin.redirect_uris)})", file=sys.stderr, flush=True)
        if standin.frontchannel_logout_uris:
            print(f"# front-channel logout URIs: {', '.join(standin.frontchannel_logout_uris)}",
                  file=sys.stderr, flush=True)
        if args.write_env:
            _write_atomically(args.write_env, lines)
        if args.ready_file:
            _write_atomically(args.ready_file, f"{os.getpid()}\n")
        while not stop.wait(0.5):  # a timed wait keeps Ctrl-C responsive
            pass
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()
        if args.ready_file:
            Path(args.ready_file).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
