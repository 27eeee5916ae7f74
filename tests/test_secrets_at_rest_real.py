"""Secrets at rest, on real stores: after a sign-in and an API call, no token (raw or any
JWT segment) and no personal data in any Redis value or session file; instances restarted
with a rotated SECRET_KEY keep everybody signed in with the old key as a fallback, and
without it sign them out cleanly (no 5xx)."""

from __future__ import annotations

import re

import pytest
import redis
from test_scale_out import signed_in_as

from live import AppServer, WebUser
from local_entra import USERS

ADELE = USERS[0]
OLD_KEY = "old-secret-key-0123456789abcdefghijklmnopqrstuvwxyz"
NEW_KEY = "new-secret-key-ZYXWVUTSRQPONMLKJIHGFEDCBA-9876543210"
# What a token or a piece of one looks like in plain bytes: a JWT's base64url JSON header or
# body ("eyJ" is '{"'), or three dot-separated base64url segments.
TOKEN_SHAPED = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}|[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{8,}")


def personal(user: dict) -> list[bytes]:
    return [user["displayName"].encode(), user["userPrincipalName"].encode(), user["id"].encode()]


def assert_nothing_readable(values: list[bytes]) -> None:
    assert values, "nothing was stored"
    for value in values:
        assert not TOKEN_SHAPED.search(value), value[:200]
        for secret in personal(ADELE):
            assert secret not in value




@pytest.mark.redis
def test_no_token_or_personal_data_in_any_redis_value_and_a_rotation_signs_nobody_out(
        stand_in, fresh_stand_in, redis_server, tmp_path):
    env = {"SESSION_TYPE": "redis", "REDIS_URL": redis_server.url}
    with AppServer(stand_in, tmp_path / "before", env={**env, "SECRET_KEY": OLD_KEY}) as before:
        person = WebUser(before.url)
        assert person.sign_in(ADELE).status_code == 302
        assert person.get("/call_downstream_api").status_code == 200
        client = redis.Redis.from_url(redis_server.url)
        assert_nothing_readable([client.dump(key) or b"" for key in client.scan_iter()])
        port = before.port

    # Every instance restarted with a new key, the old one as a fallback: still signed in.
    rotated = AppServer(stand_in, tmp_path / "rotated", port=port,
                        env={**env, "SECRET_KEY": NEW_KEY, "SECRET_KEY_FALLBACKS": OLD_KEY})
    with rotated:
        assert signed_in_as(person.get("/").text, ADELE)
        assert person.get("/call_downstream_api").status_code == 200

    # Restarted again without the old key: the sessions it sealed open no more.
    dropped = AppServer(stand_in, tmp_path / "dropped", port=port, env={**env, "SECRET_KEY": NEW_KEY})
    with dropped:
        home = person.get("/")
        assert home.status_code == 200 and not signed_in_as(home.text, ADELE)
        assert person.get("/call_downstream_api").status_code == 302  # to sign in, no error
        assert " 500 " not in dropped.logs() and "Traceback" not in dropped.logs()


@pytest.mark.real
def test_no_token_or_personal_data_in_any_session_file(stand_in, fresh_stand_in, tmp_path):
    with AppServer(stand_in, tmp_path / "files") as app:
        person = WebUser(app.url)
        assert person.sign_in(ADELE).status_code == 302
        assert person.get("/call_downstream_api").status_code == 200
        files = [p for p in (tmp_path / "files" / "sessions").iterdir() if p.is_file()]
        assert_nothing_readable([p.read_bytes() for p in files])
