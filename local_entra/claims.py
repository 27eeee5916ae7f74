"""The OIDC ``claims`` request parameter, as Entra ID reads it, and the claims challenges
the stand-in sends for Conditional Access (CAE revocation, MFA step-up).

Clients send ``claims`` as a JSON string on authorize and token requests. MSAL merges
two things into it: the client's capabilities (``xms_cc``, "cp1" = "I can handle a
claims challenge") and the challenge a resource or Entra sent back. Anything that is
not valid JSON is treated as no claims at all, as a lenient server would.
"""

import base64
import json

CLIENT_CAPABILITY_CAE = "cp1"

# An access-token claim private to the stand-in: the CAE challenge (its nbf value)
# that the token's grant answered. After a CAE event Graph accepts a CAE-capable
# token only if this is at least the event's instant.
CAE_ANSWERED_CLAIM = "local_entra_cae_nbf"

# A fixed Conditional Access policy id, so tests can recognise the step-up challenge.
STEP_UP_POLICY_ID = "8d3f2c1e-5b7a-4e96-a0c4-2f61d9b7e835"


def _access_token_part(raw):
    """The ``access_token`` member of a claims request, or {}."""
    try:
        requested = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    part = requested.get("access_token") if isinstance(requested, dict) else None
    return part if isinstance(part, dict) else {}


def _member(raw, name):
    value = _access_token_part(raw).get(name)
    return value if isinstance(value, dict) else {}


def declares_cae(raw):
    """True when the client declared the "cp1" capability (it can answer a CAE challenge)."""
    values = _member(raw, "xms_cc").get("values")
    return isinstance(values, list) and CLIENT_CAPABILITY_CAE in values


def answered_nbf(raw):
    """The ``access_token.nbf`` value a client echoes back from a CAE challenge, as an int, or None.

    Graph sends the value as a string; accept a number too.
    """
    value = _member(raw, "nbf").get("value")
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def policy_ids(raw):
    """The Conditional Access policy ids (``capolids``) a sign-in request claims to satisfy."""
    values = _member(raw, "capolids").get("values")
    return {v for v in values if isinstance(v, str)} if isinstance(values, list) else set()


def cae_challenge(revoked_at):
    """The claims Graph asks for after a CAE event, spelled (spacing included) as Graph does."""
    return '{"access_token":{"nbf":{"essential":true, "value":"' + str(int(revoked_at)) + '"}}}'


def cae_challenge_header_value(revoked_at):
    """The ``claims`` parameter of Graph's WWW-Authenticate: standard base64, padded."""
    return base64.b64encode(cae_challenge(revoked_at).encode()).decode("ascii")


def step_up_challenge():
    """The claims Entra's token endpoint returns when a policy needs MFA (compact JSON, as Entra's)."""
    return json.dumps(
        {"access_token": {"capolids": {"essential": True, "values": [STEP_UP_POLICY_ID]}}},
        separators=(",", ":"),
    )
