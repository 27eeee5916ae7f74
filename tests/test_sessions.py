"""The embedded filesystem session store: failures surface as 503s, never as silent loss."""

from __future__ import annotations

import os
import shutil
import time
import types

import pytest
from cachelib.file import FileSystemCache

import sessions
from app import create_app
from conftest import AuthActions, fast_config


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


def test_every_rewrite_of_a_session_file_is_read_even_with_the_same_size_at_once(tmp_path, monkeypatch):
    # Same length every time, written back to back: inode numbers get reused (the file is
    # replaced by a new one each time), and a file system with coarse timestamps (some
    # kernels: a few ms) gives them all the same modification time, as simulated here.
    write = FileSystemCache.set

    def write_with_a_coarse_clock(self, key, *args, **kwargs):
        written = write(self, key, *args, **kwargs)
        os.utime(self._get_filename(key), ns=(1_700_000_000_000_000_000,) * 2)
        return written

    monkeypatch.setattr(FileSystemCache, "set", write_with_a_coarse_clock)
    writer = sessions._RecentlyReadFileSystemCache(str(tmp_path), threshold=0)
    reader = sessions._RecentlyReadFileSystemCache(str(tmp_path), threshold=0)
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
    monkeypatch.setattr(sessions, "time", types.SimpleNamespace(time=lambda: later, time_ns=time.time_ns))
    assert cache.get("session:one") is None


def test_each_request_gets_its_own_copy_of_a_remembered_session(tmp_path):
    cache = sessions._RecentlyReadFileSystemCache(str(tmp_path), threshold=0)
    assert cache.set("session:one", {"claims": {"name": "A"}}, timeout=60)
    cache.get("session:one")["claims"]["name"] = "changed in one request only"
    assert cache.get("session:one") == {"claims": {"name": "A"}}


@pytest.mark.parametrize("content", [b"", b"\x00\x00", b"\x00\x00\x00\x00not a pickle", b"\xff" * 64])
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
