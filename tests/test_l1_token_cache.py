"""The in-memory L1 token cache in front of the session: it saves MSAL's look-up on a page
view, and never serves one session's token to another."""

from __future__ import annotations

import identity.web

from conftest import AuthActions
from l1_token_cache import MSAL_EXPIRY_MARGIN, L1TokenCache


def count_msal_lookups(monkeypatch, app) -> list:
    calls = []
    auth = app.extensions["auth"]
    real = identity.web.Auth._get_token_for_user

    def counted(scopes, force_refresh=None):
        calls.append(force_refresh)
        return real(auth, scopes, force_refresh=force_refresh)

    monkeypatch.setattr(auth, "_get_token_for_user", counted)
    return calls


def test_a_second_page_view_is_answered_from_the_l1_without_msal(app, client, auth, fake_entra, monkeypatch):
    auth.sign_in()
    calls = count_msal_lookups(monkeypatch, app)
    assert client.get("/call_downstream_api").status_code == 200
    assert client.get("/call_downstream_api").status_code == 200
    assert calls == [None]  # the first view asked MSAL; the second was answered from memory
    bearer = {c.request.headers["Authorization"] for c in fake_entra.graph_calls()}
    assert bearer == {f"Bearer {fake_entra.issued_access_tokens[-1]}"}


def test_each_session_gets_its_own_token_even_for_the_same_user(app, client, auth, fake_entra):
    auth.sign_in()
    first_token = fake_entra.issued_access_tokens[-1]
    other = app.test_client()
    AuthActions(other, fake_entra).sign_in()  # the same user in another browser: its own token cache
    second_token = fake_entra.issued_access_tokens[-1]
    assert first_token != second_token

    for browser, token in ((client, first_token), (other, second_token), (client, first_token)):
        assert browser.get("/call_downstream_api").status_code == 200
        assert fake_entra.graph_calls()[-1].request.headers["Authorization"] == f"Bearer {token}"


def test_sign_out_forgets_the_session_s_answers(app, client, auth):
    auth.sign_in()
    assert client.get("/call_downstream_api").status_code == 200
    l1 = app.extensions["auth"].l1_token_cache
    assert len(l1) == 1
    auth.sign_out()
    assert len(l1) == 0


def test_a_token_close_to_expiry_is_not_remembered(app, client, auth, fake_entra, monkeypatch):
    fake_entra.access_token_lifetime = MSAL_EXPIRY_MARGIN - 10  # MSAL refreshes it on every look-up
    auth.sign_in()
    calls = count_msal_lookups(monkeypatch, app)
    for _ in range(2):
        assert client.get("/call_downstream_api").status_code == 200
    assert len(calls) == 2
    assert len(app.extensions["auth"].l1_token_cache) == 0


def test_a_forced_refresh_after_a_graph_401_bypasses_the_l1(app, client, auth, fake_entra):
    auth.sign_in()
    assert client.get("/call_downstream_api").status_code == 200
    fake_entra.graph_answers(401, {"error": {"code": "InvalidAuthenticationToken", "message": "revoked"}})
    before = len(fake_entra.token_calls())
    assert client.get("/call_downstream_api").status_code == 200
    assert len(fake_entra.token_calls()) == before + 1  # a real refresh, not the remembered token
    assert fake_entra.graph_calls()[-1].request.headers["Authorization"] == (
        f"Bearer {fake_entra.issued_access_tokens[-1]}")


def test_remembered_answers_keep_no_refresh_or_id_token():
    l1 = L1TokenCache()
    l1.put("cache-bytes", ["User.Read"], {"access_token": "at", "refresh_token": "rt", "id_token": "idt",
                                          "token_type": "Bearer", "expires_in": 3600})
    answer = l1.get("cache-bytes", ["User.Read"])
    assert answer["access_token"] == "at" and "refresh_token" not in answer and "id_token" not in answer
    assert l1.get("cache-bytes!", ["User.Read"]) is None  # another token cache: another key
    assert l1.get("cache-bytes", ["Mail.Read"]) is None


def test_the_oldest_token_cache_goes_first_when_full():
    l1 = L1TokenCache(size=2)
    for name in ("a", "b", "c"):
        l1.put(name, ["s"], {"access_token": name, "expires_in": 3600})
    assert l1.get("a", ["s"]) is None and l1.get("c", ["s"])["access_token"] == "c"
