"""Signing and checking the stand-in's JWTs (id tokens and Graph access tokens)."""

import base64
import hashlib
import json
import secrets

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

# Microsoft Graph's application id: the ``aud`` of every Graph access token.
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
GRAPH_AUDIENCES = (GRAPH_APP_ID, "https://graph.microsoft.com")
GRAPH_PREFIX = "https://graph.microsoft.com/"
# Scopes that ask for sign-in data rather than access to a resource. They are
# never put in an access token's ``scp``.
OIDC_SCOPES = {"openid", "profile", "email", "offline_access"}


def resource_scopes(scopes):
    """The scopes that ask for access to an API (the ones an access token is for)."""
    return [s for s in scopes if s.lower() not in OIDC_SCOPES]


def bare_scope(scope):
    """``https://graph.microsoft.com/User.Read`` -> ``User.Read``, as ``scp`` lists them."""
    return scope[len(GRAPH_PREFIX):] if scope.lower().startswith(GRAPH_PREFIX) else scope


def b64url(data):
    """Padding-less base64url, the encoding of JWT parts and of ``client_info``."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def client_info(oid, tenant_id):
    """The ``client_info`` MSAL uses to build the home account id ``<uid>.<utid>``."""
    return b64url(json.dumps({"uid": oid, "utid": tenant_id}).encode())


def pkce_s256(verifier):
    """The S256 code challenge of a PKCE code verifier (RFC 7636)."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


class SigningKey:
    """One RSA key per stand-in run.

    A fresh key each start means a token from an earlier run (or from another
    stand-in) fails signature checks, which is what a real tenant does with a
    foreign token.
    """

    def __init__(self):
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(8)
        self._public = self._private.public_key()

    def jwks(self):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._public))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    def sign(self, claims):
        return jwt.encode(claims, self._private, algorithm="RS256", headers={"kid": self.kid})

    def verify(self, token, audience, issuer, leeway=5):
        """Decode ``token`` or raise ``jwt.InvalidTokenError``.

        The small leeway absorbs clock skew only; an expired token must fail
        promptly so that the client's refresh path is exercised.
        """
        return jwt.decode(
            token,
            self._public,
            algorithms=["RS256"],
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={"require": ["exp", "iat", "aud", "iss"]},
        )
