"""The embedded filesystem session store: failures surface as 503s, never as silent loss."""

from __future__ import annotations

import os
import shutil
import threading

import flask
import pytest
import responses

from app import create_app
from conftest import ME, AuthActions, fast_config, home_page_shows_signed_in, session_cookie


def test_healthz_reports_a_working_store(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "session_store": "ok"}


def test_unwritable_session_directory_gives_503_pages_and_healthz_says_why(tmp_path, fake_entra):
    app = create_app(fast_config(tmp_path))
    client = app.test_client()
    AuthActions(client, fake_entra).sign_in()
    directory = tmp_path / "sessions"
    shutil.rmtree(directory)
    directory.write_text("not a directory any more")

    health = client.get("/healthz")
    assert health.status_code == 503 and health.json["status"] == "unavailable"
    # The read already fails (the session file's path is under a file now); either way the reason is named.
    assert health.json["session_store"].split(":")[0] in ("NotADirectoryError", "OSError")

    # Starting a sign-in stores nothing (it travels in its own cookie); finishing it must
    # store the signed-in session, and says so when it can't.
    params = AuthActions(client, fake_entra).start()
    callback = client.get("/getAToken", query_string={"code": "c", "state": params["state"]})
    assert callback.status_code == 503
    assert "Sessions unavailable" in callback.get_data(as_text=True)
    assert "Location" not in callback.headers and session_cookie(callback) is None


# --- several workers on one session directory ------------------------------------------


def two_workers(tmp_path, fake_entra):
    """Two app instances on one session directory, like two gunicorn workers."""
    config = fast_config(tmp_path)
    return create_app(config).test_client(), create_app(config).test_client()


def test_a_sign_out_on_one_worker_is_seen_at_once_by_a_worker_that_read_the_session(tmp_path, fake_entra):
    first, second = two_workers(tmp_path, fake_entra)
    AuthActions(first, fake_entra).sign_in()
    second.set_cookie("session", first.get_cookie("session").value)
    assert "Signed in as" in first.get("/").get_data(as_text=True)  # read, so remembered
    assert "Signed in as" in second.get("/").get_data(as_text=True)

    assert AuthActions(second, fake_entra).sign_out().status_code == 303

    home = first.get("/").get_data(as_text=True)
    assert "Signed in as" not in home and "Sign in" in home


@pytest.mark.parametrize("content", [b"", b"\x00\x00", b"\x00" * 4, b"\x00\x00\x00\x00not a pickle", b"\xff" * 64,
                                     b"\x00\x00\x00\x00\x80\x05\x95\x10", b"\x00\x00\x00\x00\x80\x05}q\x00(X"])
def test_a_corrupt_session_file_means_signed_out_not_a_500(tmp_path, fake_entra, content):
    app = create_app(fast_config(tmp_path))
    client = app.test_client()
    AuthActions(client, fake_entra).sign_in()
    interface = app.session_interface
    path = interface.cache._get_filename(interface._get_store_id(client.get_cookie("session").value))
    assert "Signed in as" in client.get("/").get_data(as_text=True)
    with open(path, "wb") as file:
        file.write(content)

    home = client.get("/")
    assert home.status_code == 200
    assert "Signed in as" not in home.get_data(as_text=True)
    assert client.get("/call_downstream_api").status_code == 302  # to sign in, nothing else


# --- a request in flight while another one deletes its session -------------------------
# A browser's other tab: its request read the signed-in session and refreshes a token (so
# it writes the session) while this tab signs out, or signs in anew. Its write comes last.

BOB = {"oid": "00000000-0000-0000-0000-0000000000bb", "name": "Bob", "preferred_username": "bob@x"}


class OtherTab:
    """GET `path` in a thread, held at the token endpoint's first refresh until finish()."""

    def __init__(self, client, fake_entra, path="/call_downstream_api"):
        self.held, self.release = threading.Event(), threading.Event()
        answer = fake_entra._token

        def token(request):
            body = request.body if isinstance(request.body, bytes) else request.body.encode()
            if b"grant_type=refresh_token" in body and not self.held.is_set():
                self.held.set()
                self.release.wait(timeout=30)
            return answer(request)

        fake_entra.rsps.remove(responses.POST, fake_entra.token_endpoint)
        fake_entra.rsps.add_callback(responses.POST, fake_entra.token_endpoint, callback=token)
        self.outcome: dict = {}
        self.thread = threading.Thread(target=self._get, args=(client, path))
        self.thread.start()
        assert self.held.wait(timeout=30), "the other tab's request did not refresh a token"

    def _get(self, client, path):
        try:
            self.outcome["response"] = client.get(path)
        except BaseException as exc:  # handed to the test's thread, raised by finish()
            self.outcome["error"] = exc

    def finish(self):
        self.release.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome["response"]


def session_file(app, sid: str) -> str:
    interface = app.session_interface
    return interface.cache._get_filename(interface._get_store_id(sid))


def test_a_request_in_flight_during_sign_out_does_not_sign_the_browser_back_in(app, client, auth, fake_entra):
    fake_entra.access_token_lifetime = 60  # under MSAL's 5-minute margin: each API call refreshes
    auth.sign_in()
    old_sid = client.get_cookie("session").value
    other_tab = OtherTab(client, fake_entra)  # one browser: both tabs share the cookie jar

    assert auth.sign_out().status_code == 303
    assert not os.path.exists(session_file(app, old_sid))
    late = other_tab.finish()

    assert late.status_code == 200 and ME["jobTitle"] in late.get_data(as_text=True)
    assert session_cookie(late) is None  # no Set-Cookie bringing the old id back
    assert not os.path.exists(session_file(app, old_sid))
    assert client.get_cookie("session") is None and not home_page_shows_signed_in(client)
    kept_the_old_cookie = app.test_client()
    kept_the_old_cookie.set_cookie("session", old_sid)
    assert not home_page_shows_signed_in(kept_the_old_cookie)


def test_a_request_in_flight_during_a_new_sign_in_does_not_bring_back_the_old_session(app, client, auth,
                                                                                      fake_entra):
    fake_entra.access_token_lifetime = 60
    auth.sign_in()
    old_sid = client.get_cookie("session").value
    other_tab = OtherTab(client, fake_entra)

    fake_entra.user = BOB  # someone else signs in in this browser: regenerate() drops the old id
    auth.sign_in()
    new_sid = client.get_cookie("session").value
    assert new_sid != old_sid and not os.path.exists(session_file(app, old_sid))
    late = other_tab.finish()

    assert late.status_code == 200
    # No Set-Cookie at all: one that deleted the cookie would sign Bob out again.
    assert session_cookie(late) is None
    assert not os.path.exists(session_file(app, old_sid))
    assert client.get_cookie("session").value == new_sid
    assert "Signed in as <strong>Bob</strong>" in client.get("/").get_data(as_text=True)
    with client.session_transaction() as session:
        assert ME["userPrincipalName"] not in session["_token_cache"]
    kept_the_old_cookie = app.test_client()
    kept_the_old_cookie.set_cookie("session", old_sid)
    assert not home_page_shows_signed_in(kept_the_old_cookie)


def test_a_token_refresh_of_a_session_still_stored_is_written_back(app, client, auth, fake_entra):
    fake_entra.access_token_lifetime = 60
    auth.sign_in()
    sid = client.get_cookie("session").value
    for _ in range(2):
        response = client.get("/call_downstream_api")
        assert response.status_code == 200
        assert session_cookie(response) is not None  # the refreshed tokens were stored
    refreshes = [r for r in fake_entra.token_requests if r["grant_type"] == "refresh_token"]
    # The second refresh used the refresh token that the first one stored.
    assert refreshes[1]["refresh_token"] == fake_entra.issued_refresh_tokens[-2]
    assert client.get_cookie("session").value == sid and os.path.exists(session_file(app, sid))


def test_the_losing_duplicate_of_a_sign_in_callback_sends_no_cookie_deletion(app, client, auth):
    params = auth.start()
    pending = client.get_cookie("signin_pending").value
    interface = app.session_interface
    with app.test_request_context("/getAToken", headers={"Cookie": f"signin_pending={pending}"}):
        duplicate = interface.open_session(app, flask.request)  # the same callback, sent twice
        assert "_auth_flow" in duplicate
        assert auth.callback(code="c", state=params["state"]).status_code == 302  # the other one wins
        duplicate.pop("_auth_flow")  # its code is spent: its failed sign-in forgets the flow
        response = app.response_class("Sign-in failed", status=400)
        interface.save_session(app, duplicate, response)
    assert session_cookie(response) is None  # a deletion would sign the browser out again
    assert home_page_shows_signed_in(client)


def test_sign_out_still_deletes_the_cookie(client, auth):
    auth.sign_in()
    response = auth.sign_out()
    assert "Expires=Thu, 01 Jan 1970" in session_cookie(response)
