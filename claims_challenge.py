"""Claims challenges in `WWW-Authenticate` (Continuous Access Evaluation, RFC 9110 §11.6.1).

MSAL has no parser for them: Graph's CAE 401 says what a new token must carry in a
Bearer challenge's `claims` parameter, and this module reads it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

# RFC 9110 §11.6.1: challenges are a scheme token followed by auth-params (name=token or
# name="quoted string"), separated by commas, several challenges in one header.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # noqa: S105 (an HTTP token, not a password)
_PARAM = re.compile(rf'({_TOKEN})[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^\s,"]*)')
_SCHEME = re.compile(_TOKEN)
_SEPARATORS = re.compile(r"[\s,]*")
MAX_HEADER_LENGTH = 16 * 1024


def claims_challenge_from(www_authenticate: str | None) -> str | None:
    """The claims (a JSON object, as text) that a Bearer challenge asks for, or None.

    Graph's CAE shape: `Bearer realm="", authorization_uri="...", error="insufficient_claims",
    claims="<base64 of a JSON object>"`. Tolerated: several challenges in one header, quoted
    values with commas, base64 with or without padding, URL-safe or not, and the claims as
    plain JSON. Anything else is no challenge (the 401 is then a plain one).
    """
    if not www_authenticate or len(www_authenticate) > MAX_HEADER_LENGTH:
        return None
    for params in _bearer_challenges(www_authenticate):
        if params.get("error") == "insufficient_claims" and params.get("claims"):
            claims = _decode_claims(params["claims"])
            if claims is not None:
                return claims
    return None


def _bearer_challenges(header: str):
    """The auth-params of each Bearer challenge in a WWW-Authenticate header (a linear scan:
    every step consumes at least one character)."""
    challenges: list[tuple[str, dict]] = []
    position = 0
    while position < len(header):
        position = _SEPARATORS.match(header, position).end()
        if position >= len(header):
            break
        param = _PARAM.match(header, position)
        if param and challenges:
            name, value = param.group(1).lower(), param.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            challenges[-1][1].setdefault(name, value)
            position = param.end()
            continue
        scheme = _SCHEME.match(header, position)
        if scheme:
            challenges.append((scheme.group(0).lower(), {}))
            position = scheme.end()
        else:
            position += 1  # not a token: skip it
    return [params for scheme, params in challenges if scheme == "bearer"]


def _decode_claims(value: str) -> str | None:
    value = value.strip()
    if value.startswith("{"):
        candidates = [value]
    else:
        padded = value + "=" * (-len(value) % 4)
        candidates = []
        for decode in (base64.urlsafe_b64decode, base64.b64decode):
            try:
                candidates.append(decode(padded).decode("utf-8"))
            except (binascii.Error, ValueError):
                continue
    for text in candidates:
        try:
            parsed = json.loads(text)
        except ValueError:
            continue
        if isinstance(parsed, dict) and parsed:
            return json.dumps(parsed, separators=(",", ":"))
    return None
