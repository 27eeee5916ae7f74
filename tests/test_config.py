"""Settings: read once, every authority shape, and a page that says what is missing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import app_config
from app import create_app
from conftest import fast_config


def unconfigured(tmp_path, **config):
    return create_app({"TESTING": True, "SECRET_KEY": "k" * 8 + "0123456789abcdefghijklmnopqrstuv",
                       "SESSION_FILE_DIR": str(tmp_path / "s"), **config}).test_client()


@pytest.mark.parametrize("path", ["/", "/login", "/call_downstream_api", "/getAToken", "/logout"])
def test_missing_configuration_shows_a_page_naming_the_keys(tmp_path, path):
    response = unconfigured(tmp_path).get(path)
    page = response.get_data(as_text=True)
    assert response.status_code == 503
    for key in ("CLIENT_ID", "CLIENT_SECRET", "AUTHORITY"):
        assert f"<code>{key}</code>" in page
    assert "Application (client) ID" in page and "Certificates &amp; secrets" in page


def test_healthz_reports_missing_configuration(tmp_path):
    response = unconfigured(tmp_path).get("/healthz")
    assert response.status_code == 503
    assert response.json["configuration"] == ["CLIENT_ID", "CLIENT_SECRET", "AUTHORITY"]


def test_placeholder_values_from_the_sample_count_as_missing():
    config = app_config.load({"CLIENT_ID": "<client id>", "CLIENT_SECRET": "Enter_the_Client_Secret_Here",
                              "AUTHORITY": "https://login.microsoftonline.com/<tenant id>"})
    assert [p.key for p in app_config.problems(config)] == ["CLIENT_ID", "CLIENT_SECRET", "AUTHORITY"]


def test_defaults_follow_the_contract():
    config = app_config.load({})
    assert config["REDIRECT_PATH"] == "/getAToken"
    assert config["SCOPE"] == ["User.Read"]
    assert config["ENDPOINT"] == "https://graph.microsoft.com/v1.0/me"
    assert config["SESSION_TYPE"] == "filesystem"


def test_scope_is_space_separated():
    assert app_config.load({"SCOPE": "User.Read  Mail.Read"})["SCOPE"] == ["User.Read", "Mail.Read"]


BASE = {"CLIENT_ID": "id", "CLIENT_SECRET": "secret"}


@pytest.mark.parametrize("env", [
    {"AUTHORITY": "https://login.microsoftonline.com/contoso.onmicrosoft.com"},
    {"OIDC_AUTHORITY": "https://contoso.ciamlogin.com/contoso.onmicrosoft.com/v2.0"},
    {"B2C_TENANT_NAME": "contoso", "B2C_SIGNUP_SIGNIN_USER_FLOW": "B2C_1_signupsignin1"},
])
def test_each_authority_shape_is_accepted(env):
    assert app_config.problems(app_config.load({**BASE, **env})) == []


def test_b2c_pair_builds_the_b2clogin_authority():
    config = app_config.load({**BASE, "B2C_TENANT_NAME": "contoso", "B2C_SIGNUP_SIGNIN_USER_FLOW": "B2C_1_susi"})
    assert app_config.b2c_authority(config) == "https://contoso.b2clogin.com/contoso.onmicrosoft.com/B2C_1_susi"


@pytest.mark.parametrize(("env", "key", "words"), [
    ({"AUTHORITY": "https://login.microsoftonline.com/t", "OIDC_AUTHORITY": "https://x.ciamlogin.com/x"},
     "AUTHORITY", "contradicts"),
    ({"B2C_TENANT_NAME": "contoso"}, "B2C_SIGNUP_SIGNIN_USER_FLOW", "needs both"),
    ({"AUTHORITY": "http://login.microsoftonline.com/t"}, "AUTHORITY", "https"),
    ({"AUTHORITY": "https://login.microsoftonline.com"}, "AUTHORITY", "tenant path"),
    ({"AUTHORITY": "https://login.microsoftonline.com/t", "REDIRECT_PATH": "getAToken"}, "REDIRECT_PATH", "path"),
    ({"AUTHORITY": "https://login.microsoftonline.com/t", "REDIRECT_PATH": "/login"}, "REDIRECT_PATH", "own routes"),
    ({"AUTHORITY": "https://login.microsoftonline.com/t", "ENDPOINT": "http://graph.example/me"}, "ENDPOINT", "https"),
    ({"AUTHORITY": "https://login.microsoftonline.com/t", "SESSION_TYPE": "memcached"}, "SESSION_TYPE", "one of"),
    ({"AUTHORITY": "https://login.microsoftonline.com/t", "SESSION_TYPE": "redis"}, "REDIS_URL", "not set"),
    ({"AUTHORITY": "https://login.microsoftonline.com/t", "SESSION_LIFETIME_SECONDS": "0"},
     "SESSION_LIFETIME_SECONDS", "at least 60"),
    ({"AUTHORITY": "https://login.microsoftonline.com/t", "PENDING_SIGN_IN_LIFETIME_SECONDS": "-5"},
     "PENDING_SIGN_IN_LIFETIME_SECONDS", "at least 60"),
    ({"AUTHORITY": "https://login.microsoftonline.com/t", "DOWNSTREAM_POOL_SIZE": "0"},
     "DOWNSTREAM_POOL_SIZE", "at least 1"),
    ({"AUTHORITY": "https://login.microsoftonline.com/t", "PROXY_COUNT": "-1"}, "PROXY_COUNT", "at least 0"),
])
def test_contradictory_or_invalid_settings_are_named(env, key, words):
    found = app_config.problems(app_config.load({**BASE, **env}))
    assert [p.key for p in found] == [key]
    assert words in found[0].message


def test_custom_redirect_path_is_the_route_that_completes_sign_in(tmp_path, fake_entra):
    from conftest import AuthActions

    client = create_app(fast_config(tmp_path, REDIRECT_PATH="/auth/callback")).test_client()
    auth = AuthActions(client, fake_entra, redirect_path="/auth/callback")
    assert auth.start()["redirect_uri"] == "http://localhost/auth/callback"
    auth.sign_in()
    assert "Signed in as" in client.get("/").get_data(as_text=True)
    assert client.get("/getAToken").status_code == 404


@pytest.mark.parametrize("key", ["", "short", "a" * 64])
def test_production_refuses_to_start_without_a_strong_secret_key(tmp_path, key):
    config = fast_config(tmp_path, TESTING=False, SECRET_KEY=key)
    with pytest.raises(RuntimeError, match=r"secrets\.token_hex"):
        create_app(config)


def test_local_development_makes_one_secret_key_shared_by_workers(tmp_path):
    config = fast_config(tmp_path, SECRET_KEY="", RUN_FROM_CLI=True)
    first, second = create_app(config), create_app(config)
    assert len(first.config["SECRET_KEY"]) >= 32
    assert first.config["SECRET_KEY"] == second.config["SECRET_KEY"]


def test_env_sample_documents_every_setting():
    sample = (Path(__file__).parent.parent / ".env.sample").read_text()
    documented = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", sample, flags=re.M))
    aliases = set(app_config.B2C_FLOW_ALIASES.values())  # the official sample's names, read too
    read = _keys_read_by_load() - {"FLASK_RUN_FROM_CLI"} - aliases  # and flask run's own variable
    assert "CLIENT_ID" in read and "SECRET_KEY" in read
    assert read <= documented, f"undocumented: {read - documented}"
    assert all(alias in sample for alias in aliases)


class _RecordingEnvironment(dict):
    def __init__(self):
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.asked.add(key)
        return super().__getitem__(key)


def _keys_read_by_load() -> set[str]:
    """The environment variables app_config.load() asks for (whatever way it asks)."""
    environ = _RecordingEnvironment()
    app_config.load(environ)
    return environ.asked
