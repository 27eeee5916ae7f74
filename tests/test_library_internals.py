"""Where the app depends on a library's private names: one test each, so that an upgrade
that changes one fails here, by name, instead of going silent.

Each test matches one row of the README's "Where we depend on library internals".
"""

from __future__ import annotations

import hashlib
import inspect
import typing

import cachelib.file
import flask.globals
import flask_session.base
import identity.web
import msal
import msal.throttled_http_client

import entra_auth
import sessions
from conftest import ISSUER

# --- identity ------------------------------------------------------------------------


def test_identity_keeps_the_signed_in_user_the_flow_and_the_token_cache_under_these_keys(client, auth):
    assert identity.web.Auth._USER == sessions.SIGNED_IN_KEY == "_logged_in_user"
    assert identity.web.Auth._AUTH_FLOW == "_auth_flow"
    assert identity.web.Auth._TOKEN_CACHE == "_token_cache"
    assert identity.web.Auth._Auth__NEXT_LINK == entra_auth.NEXT_LINK_KEY
    auth.start(next_path="/call_downstream_api")
    with client.session_transaction() as session:
        assert session["_auth_flow"][entra_auth.NEXT_LINK_KEY] == "/call_downstream_api"
    auth.sign_in()
    with client.session_transaction() as session:
        assert session["_logged_in_user"]["name"] and session["_token_cache"]


def test_identity_builds_every_msal_app_through_build_msal_app_with_our_http_client(app, client, auth, fake_entra):
    parameters = inspect.signature(identity.web.Auth._build_msal_app).parameters
    assert list(parameters) == ["self", "client_credential", "cache"]
    auth.sign_in()
    # The code redemption went through our client (timeouts, answer shape checks).
    assert app.extensions["auth"].http_client.token_requests == 1


def test_identity_passes_every_accepted_id_token_through_save_user_into_session():
    source = inspect.getsource(identity.web.Auth)
    assert source.count("self._save_user_into_session(") == 2  # at sign-in and after a refresh


def test_identity_get_token_for_user_delegates_to_get_token_for_user_with_force_refresh():
    parameters = inspect.signature(identity.web.Auth._get_token_for_user).parameters
    assert list(parameters) == ["self", "scopes", "force_refresh"]


# --- MSAL ------------------------------------------------------------------------------


def test_msal_keeps_the_discovered_issuer_on_its_authority(app, client, auth):
    auth.sign_in()
    assert app.extensions["auth"]._issuer == ISSUER  # read from msal's authority._issuer


def test_msal_keys_every_auth_code_redemption_throttle_record_alike():
    # The record HttpCacheWithoutSharedThrottle refuses to keep: MSAL's key for a token
    # request with no refresh token (every sign-in's code redemption) hashes None.
    client = msal.throttled_http_client.ThrottledHttpClient(_AlwaysUnavailable(), http_cache={})
    cache = client._expiring_mapping
    client.post("https://idp.example/token", data={"grant_type": "authorization_code", "code": "one"})
    keys = [k for k in cache if "429/5xx" in k]
    assert keys and all(k.endswith(entra_auth.HttpCacheWithoutSharedThrottle.SHARED_KEY_END) for k in keys)
    assert entra_auth.HttpCacheWithoutSharedThrottle.SHARED_KEY_END.startswith(
        f"hash={hashlib.sha256(b'None').hexdigest()}")


class _AlwaysUnavailable:
    class _Response:
        status_code = 503
        text = ""
        headers: typing.ClassVar[dict] = {"Retry-After": "5"}

    def post(self, *args, **kwargs):
        return self._Response()

    def get(self, *args, **kwargs):
        return self._Response()

    def close(self):
        pass


# --- Flask-Session ----------------------------------------------------------------------


def test_flask_session_saves_through_upsert_session_and_deletes_through_delete_session():
    save = inspect.getsource(flask_session.base.ServerSideSessionInterface.save_session)
    assert "self._upsert_session(app.permanent_session_lifetime, session, store_id)" in save
    regenerate = inspect.getsource(flask_session.base.ServerSideSessionInterface.regenerate)
    assert "self._delete_session(self._get_store_id(session.sid))" in regenerate
    assert "self._generate_sid(self.sid_length)" in regenerate


def test_flask_session_regenerate_and_store_ids_are_what_sessions_py_builds_on(app, client, auth):
    # sessions.py opens sessions itself, through _retrieve_session_data and _get_store_id.
    client.set_cookie("session", "planted-by-someone-else")
    auth.sign_in()
    sid = client.get_cookie("session").value
    assert sid != "planted-by-someone-else"
    assert app.session_interface._get_store_id(sid) == app.config["SESSION_KEY_PREFIX"] + sid


# --- cachelib -------------------------------------------------------------------------


def test_cachelib_names_files_and_sweeps_expired_ones_with_these_methods(tmp_path):
    cache = cachelib.file.FileSystemCache(str(tmp_path), threshold=0)
    assert cache.set("k", 1, timeout=1)
    assert cache._get_filename("k").startswith(str(tmp_path))
    assert inspect.signature(cache._remove_expired).parameters.keys() == {"now"}


# --- Flask ----------------------------------------------------------------------------


def test_flask_leaves_no_url_adapter_when_the_host_is_not_trusted(tmp_path, fake_entra):
    from app import create_app
    from conftest import fast_config

    app = create_app(fast_config(tmp_path, TRUSTED_HOSTS=["app.example"]))
    with app.test_request_context("/", headers={"Host": "evil.example"}):
        assert flask.globals.request_ctx.url_adapter is None


def test_identity_log_in_keeps_the_flow_under_the_keys_entra_auth_writes():
    assert identity.web.Auth._EXPLICITLY_REQUESTED_SCOPES == "identity.web.explicitly_requested_scopes"
    complete = inspect.getsource(identity.web.Auth.complete_log_in)
    assert "auth_flow[self._EXPLICITLY_REQUESTED_SCOPES]" in complete  # the ungranted-scope check
    assert "flow.get(self.__NEXT_LINK)" in complete


def test_identity_loads_and_saves_the_token_cache_through_these_methods():
    assert list(inspect.signature(identity.web.Auth._load_cache).parameters) == ["self"]
    assert list(inspect.signature(identity.web.Auth._save_cache).parameters) == ["self", "cache"]
    source = inspect.getsource(identity.web.Auth._get_token_for_user)
    assert "self._load_cache()" in source and "self._save_cache(cache)" in source


def test_identity_keeps_its_settings_in_these_attributes():
    auth = identity.web.Auth(session={}, client_id="x", authority="https://a.example/t", client_credential="s")
    assert {"_session", "_client_id", "_client_credential", "_authority", "_oidc_authority",
            "_http_cache"} <= set(vars(auth))


def test_msal_raises_a_runtime_error_naming_the_nonce():
    import msal.oauth2cli.oidc

    source = inspect.getsource(msal.oauth2cli.oidc.Client.obtain_token_by_auth_code_flow)
    assert "raise RuntimeError(" in source and "should match our nonce" in source
    assert issubclass(msal.oauth2cli.oidc.IdTokenError, RuntimeError)
