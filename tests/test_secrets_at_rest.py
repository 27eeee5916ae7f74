"""Sessions sealed at rest: no token readable in the store or the pending sign-in's cookie;
a key rotation with SECRET_KEY_FALLBACKS signs nobody out; a record no key opens is no session."""

from __future__ import annotations

import base64
import logging

import pytest

from app import create_app
from conftest import SECRET_KEY, AuthActions, fast_config, home_page_shows_signed_in, pending_cookie
from session_encryption import SessionCipher, Unreadable

NEW_KEY = "rotated-secret-key-ABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789"


def stored_value(app, client) -> bytes:
    interface = app.session_interface
    return interface.cache.get(interface._get_store_id(client.get_cookie("session").value))


def jwt_segments(tokens) -> set[str]:
    return {segment for token in tokens for segment in token.split(".") if len(segment) > 8}


def test_a_sealed_value_opens_only_for_its_own_record_and_only_unaltered():
    cipher = SessionCipher(SECRET_KEY)
    sealed = cipher.seal(b"payload", "session:one")
    assert cipher.open(sealed, "session:one") == (b"payload", False)
    with pytest.raises(Unreadable):
        cipher.open(sealed, "session:two")  # moved to another session id
    for position in (0, 5, len(sealed) - 1):
        altered = bytearray(sealed)
        altered[position] ^= 1
        with pytest.raises(Unreadable):
            cipher.open(bytes(altered), "session:one")
    with pytest.raises(Unreadable):
        SessionCipher(NEW_KEY).open(sealed, "session:one")


def test_the_encryption_key_is_derived_not_the_signing_key():
    from session_encryption import derive_key

    assert derive_key(SECRET_KEY) != SECRET_KEY.encode()[:32] and len(derive_key(SECRET_KEY)) == 32


def test_no_token_is_readable_in_the_stored_session_or_the_pending_cookie(app, client, auth, fake_entra):
    login = client.get("/login")
    sealed_cookie = base64.urlsafe_b64decode(client.get_cookie("signin_pending").value + "==")
    assert pending_cookie(login)
    auth.sign_in()
    assert client.get("/call_downstream_api").status_code == 200
    stored = stored_value(app, client)
    secrets = jwt_segments(fake_entra.issued_access_tokens + fake_entra.issued_id_tokens)
    secrets |= set(fake_entra.issued_refresh_tokens) | {fake_entra.user["preferred_username"]}
    for value in (stored, sealed_cookie):
        for secret in secrets:
            assert secret.encode() not in value
    assert b"code_verifier" not in sealed_cookie and b"_token_cache" not in stored


def test_a_tampered_stored_session_is_no_session_and_no_error(app, client, auth, caplog):
    auth.sign_in()
    interface = app.session_interface
    store_id = interface._get_store_id(client.get_cookie("session").value)
    sealed = bytearray(interface.cache.get(store_id))
    sealed[-3] ^= 0xFF
    interface.cache.set(store_id, bytes(sealed))
    with caplog.at_level(logging.WARNING):
        home = client.get("/")
    assert home.status_code == 200 and "Signed in as" not in home.get_data(as_text=True)
    warnings = [r for r in caplog.records if "no key opens" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert client.get("/call_downstream_api").status_code == 302  # to sign in


def test_a_key_rotation_with_the_old_key_as_fallback_signs_nobody_out(tmp_path, fake_entra):
    before = create_app(fast_config(tmp_path))
    client = before.test_client()
    auth = AuthActions(client, fake_entra)
    auth.sign_in()
    token_from_the_old_page = auth.csrf_token()

    after = create_app(fast_config(tmp_path, SECRET_KEY=NEW_KEY, SECRET_KEY_FALLBACKS=[SECRET_KEY]))
    rotated = after.test_client()
    rotated.set_cookie("session", client.get_cookie("session").value)
    assert home_page_shows_signed_in(rotated)
    assert rotated.get("/call_downstream_api").status_code == 200
    # A write (here: sign-out from a page rendered before the rotation) uses the new key;
    # the form signed with the old key is still accepted.
    response = rotated.post("/logout", data={"csrf_token": token_from_the_old_page})
    assert response.status_code == 303


def test_a_session_read_with_an_old_key_is_written_back_with_the_current_one(tmp_path, fake_entra):
    before = create_app(fast_config(tmp_path))
    client = before.test_client()
    AuthActions(client, fake_entra).sign_in()
    after = create_app(fast_config(tmp_path, SECRET_KEY=NEW_KEY, SECRET_KEY_FALLBACKS=[SECRET_KEY]))
    rotated = after.test_client()
    rotated.set_cookie("session", client.get_cookie("session").value)
    AuthActions(rotated, fake_entra).start()  # a signed-in session changed: written back
    store_id = after.session_interface._get_store_id(client.get_cookie("session").value)
    SessionCipher(NEW_KEY).open(after.session_interface.cache.get(store_id), store_id)  # opens: new key


def test_without_the_old_key_users_are_signed_out_cleanly(tmp_path, fake_entra, caplog):
    before = create_app(fast_config(tmp_path))
    client = before.test_client()
    auth = AuthActions(client, fake_entra)
    auth.sign_in()
    token = auth.csrf_token()
    after = create_app(fast_config(tmp_path, SECRET_KEY=NEW_KEY)).test_client()
    after.set_cookie("session", client.get_cookie("session").value)
    assert after.get("/").status_code == 200 and not home_page_shows_signed_in(after)
    assert after.get("/call_downstream_api").status_code == 302
    # A sign-out from a page rendered with the dropped key: nobody is signed in, no error.
    assert after.post("/logout", data={"csrf_token": token}).status_code == 303


def test_a_pending_sign_in_sealed_with_a_dropped_key_is_a_fresh_start(tmp_path, fake_entra):
    before = create_app(fast_config(tmp_path))
    client = before.test_client()
    params = AuthActions(client, fake_entra).start()
    after = create_app(fast_config(tmp_path, SECRET_KEY=NEW_KEY)).test_client()
    after.set_cookie("signin_pending", client.get_cookie("signin_pending").value)
    response = after.get("/getAToken", query_string={"code": "c", "state": params["state"]})
    assert response.status_code == 400 and "Sign-in could not be completed" in response.get_data(as_text=True)
