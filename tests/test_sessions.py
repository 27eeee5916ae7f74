"""The embedded filesystem session store: failures surface as 503s, never as silent loss."""

from __future__ import annotations

import os
import shutil
import threading
import time
import types

import flask
import pytest
import responses
from cachelib.file import FileSystemCache

import sessions
from app import create_app
from conftest import ME, AuthActions, fast_config, session_cookie, signed_in


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

    login = client.get("/login")  # starting a sign-in must be stored to be of any use
    assert login.status_code == 503
    assert "Sessions unavailable" in login.get_data(as_text=True)
    assert "Location" not in login.headers


# --- the file store's in-memory copy of recently read files (a performance measure) -------


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


@pytest.mark.parametrize("stamps", ["write stamps", "no table"])
def test_every_rewrite_of_a_session_file_is_read_even_with_the_same_size_at_once(tmp_path, monkeypatch, stamps):
    # Same length every time, written back to back: inode numbers get reused (the file is
    # replaced by a new one each time), and a file system with coarse timestamps gives
    # them all the same modification time, as simulated here: nothing may depend on them.
    # "no table": as on a file system where the table of write stamps cannot be mapped.
    write = FileSystemCache.set

    def write_with_a_coarse_clock(self, key, *args, **kwargs):
        written = write(self, key, *args, **kwargs)
        os.utime(self._get_filename(key), ns=(1_700_000_000_000_000_000,) * 2)
        return written

    monkeypatch.setattr(FileSystemCache, "set", write_with_a_coarse_clock)
    writer = sessions._RecentlyReadFileSystemCache(str(tmp_path), threshold=0)
    reader = sessions._RecentlyReadFileSystemCache(str(tmp_path), threshold=0)
    if stamps == "no table":
        writer._stamps = reader._stamps = None
    for version in range(0, 300, 2):  # the reader misses every other version
        assert writer.set("session:one", {"token_cache": f"{version:06d}"}, timeout=3600)
        value = {"token_cache": f"{version + 1:06d}"}
        assert writer.set("session:one", value, timeout=3600)
        assert reader.get("session:one") == value


def test_a_remembered_session_still_expires(tmp_path, monkeypatch):
    cache = sessions._RecentlyReadFileSystemCache(str(tmp_path), threshold=0)
    assert cache.set("session:one", {"a": 1}, timeout=60)
    assert cache.get("session:one") == {"a": 1}
    later = time.time() + 61
    monkeypatch.setattr(sessions, "time", types.SimpleNamespace(time=lambda: later, time_ns=time.time_ns,
                                                                monotonic=time.monotonic))
    assert cache.get("session:one") is None


def test_each_request_gets_its_own_copy_of_a_remembered_session(tmp_path):
    cache = sessions._RecentlyReadFileSystemCache(str(tmp_path), threshold=0)
    assert cache.set("session:one", {"claims": {"name": "A"}}, timeout=60)
    cache.get("session:one")["claims"]["name"] = "changed in one request only"
    assert cache.get("session:one") == {"claims": {"name": "A"}}


def test_reading_a_remembered_session_makes_no_system_call(tmp_path, monkeypatch):
    cache = sessions._RecentlyReadFileSystemCache(str(tmp_path), threshold=0)
    assert cache.set("session:one", {"a": 1}, timeout=60)
    assert cache.get("session:one") == {"a": 1}
    calls = []
    for name in ("stat", "open", "fstat"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _real=real, _name=name, **k: (calls.append(_name), _real(*a, **k))[1])
    for _ in range(100):
        assert cache.get("session:one") == {"a": 1}
    assert calls == []


def test_a_change_by_another_worker_is_seen_at_once_and_one_by_hand_within_a_second(tmp_path):
    worker = sessions._RecentlyReadFileSystemCache(str(tmp_path), threshold=0)
    other = sessions._RecentlyReadFileSystemCache(str(tmp_path), threshold=0)
    assert other.set("session:one", {"v": 1}, timeout=60)
    assert worker.get("session:one") == {"v": 1}
    assert other.set("session:one", {"v": 2}, timeout=60)
    assert worker.get("session:one") == {"v": 2}
    other.delete("session:one")
    assert worker.get("session:one") is None

    assert other.set("session:two", {"v": 1}, timeout=60)
    assert worker.get("session:two") == {"v": 1}
    os.remove(worker._get_filename("session:two"))  # behind the cache's back: no write stamp
    time.sleep(worker.reread_seconds + 0.05)
    assert worker.get("session:two") is None


def test_sweeps_and_clear_leave_the_table_of_write_stamps_alone(tmp_path):
    cache = sessions._RecentlyReadFileSystemCache(str(tmp_path), threshold=0)
    stamps = [p for p in tmp_path.iterdir() if p.name.startswith("write-stamps")]
    assert len(stamps) == 1
    assert cache.set("session:one", {"a": 1}, timeout=1)
    assert cache.get("session:one") == {"a": 1}  # remembered
    cache._remove_expired(time.time() + 3600)
    assert stamps[0].exists()
    assert cache.set("session:two", {"b": 2}, timeout=60)
    other_worker = sessions._RecentlyReadFileSystemCache(str(tmp_path), threshold=0)
    assert other_worker.get("session:two") == {"b": 2}
    cache.clear()
    assert stamps[0].exists()
    assert cache.get("session:two") is None and other_worker.get("session:two") is None  # at once


def test_without_a_table_of_write_stamps_every_read_reads_the_file(tmp_path, monkeypatch):
    def cannot_map(*args, **kwargs):
        raise OSError("no mmap here")

    monkeypatch.setattr(sessions.mmap, "mmap", cannot_map)
    cache = sessions._RecentlyReadFileSystemCache(str(tmp_path), threshold=0)
    assert cache._stamps is None
    assert cache.set("session:one", {"a": 1}, timeout=60)
    assert cache.get("session:one") == {"a": 1}
    os.remove(cache._get_filename("session:one"))  # by hand: no stamp, no table anyway
    assert cache.get("session:one") is None


def test_the_cache_works_with_cachelib_s_default_threshold(tmp_path):
    cache = sessions._RecentlyReadFileSystemCache(str(tmp_path))  # writes its file counter at once
    assert cache.set("session:one", {"a": 1}, timeout=60) and cache.get("session:one") == {"a": 1}


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
    # Damaged by hand, not through the cache: noticed at the next stat (at most a second on).
    interface.cache._remembered.clear()

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
    assert client.get_cookie("session") is None and not signed_in(client)
    kept_the_old_cookie = app.test_client()
    kept_the_old_cookie.set_cookie("session", old_sid)
    assert not signed_in(kept_the_old_cookie)


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
    assert not signed_in(kept_the_old_cookie)


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
    old_sid = client.get_cookie("session").value
    interface = app.session_interface
    with app.test_request_context("/getAToken", headers={"Cookie": f"session={old_sid}"}):
        duplicate = interface.open_session(app, flask.request)  # the same callback, sent twice
        assert "_auth_flow" in duplicate
        assert auth.callback(code="c", state=params["state"]).status_code == 302  # the other one wins
        duplicate.pop("_auth_flow")  # its code is spent: its failed sign-in forgets the flow
        response = app.response_class("Sign-in failed", status=400)
        interface.save_session(app, duplicate, response)
    assert session_cookie(response) is None  # a deletion would sign the browser out again
    assert signed_in(client)


def test_sign_out_still_deletes_the_cookie(client, auth):
    auth.sign_in()
    response = auth.sign_out()
    assert "Expires=Thu, 01 Jan 1970" in session_cookie(response)
