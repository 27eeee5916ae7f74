"""The embedded filesystem session store: failures surface as 503s, never as silent loss."""

from __future__ import annotations

import shutil

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
    assert "OSError" in health.json["session_store"]

    login = client.get("/login")  # starting a sign-in must be stored to be of any use
    assert login.status_code == 503
    assert "Sessions unavailable" in login.get_data(as_text=True)
    assert "Location" not in login.headers
