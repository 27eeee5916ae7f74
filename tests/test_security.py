"""Secure by default: headers, cookies, sessions, CSRF, proxies, error pages."""

from __future__ import annotations

import io
import logging
from urllib.parse import parse_qs, urlsplit

import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app

from app import create_app
from conftest import ME, AuthActions, fast_config, pending_cookie, session_cookie
from live import CSRF_RE

PAGES = ["/", "/login", "/logout", "/healthz", "/call_downstream_api", "/getAToken", "/no-such-page",
         "/static/style.css"]


@pytest.mark.parametrize("path", PAGES)
def test_every_response_carries_the_security_headers(client, path):
    response = client.get(path)
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    for name in ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy", "Cache-Control"):
        assert len(response.headers.getlist(name)) == 1, name
    if path != "/static/style.css":
        assert response.headers["Cache-Control"] == "no-store"


def test_pages_with_personal_data_are_not_cached(client, auth):
    auth.sign_in()
    for path in ("/", "/call_downstream_api"):
        assert client.get(path).headers["Cache-Control"] == "no-store"


def test_cookies_are_httponly_samesite_lax_and_not_secure_over_http(client, auth):
    pending = pending_cookie(client.get("/login"))
    assert pending.startswith("signin_pending=")
    assert "HttpOnly" in pending and "SameSite=Lax" in pending and "Secure" not in pending
    signed_in = session_cookie(auth.sign_in())
    assert signed_in.startswith("session=")
    assert "HttpOnly" in signed_in and "SameSite=Lax" in signed_in and "Secure" not in signed_in


def test_cookies_over_https_are_secure_host_prefixed_and_bound_to_this_origin(client, fake_entra):
    auth = AuthActions(client, fake_entra, base_url="https://localhost")
    response = client.get("/login", base_url="https://localhost")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    for cookie in (pending_cookie(response), session_cookie(auth.sign_in())):
        assert cookie.startswith("__Host-")  # a browser refuses it from any other origin
        assert "Secure" in cookie and "HttpOnly" in cookie and "Path=/" in cookie and "Domain" not in cookie


def test_the_session_lives_on_the_server_not_in_the_cookie(client, auth):
    auth.sign_in()
    value = client.get_cookie("session").value
    assert len(value) < 64 and "." not in value  # an opaque id, not signed data


def test_steady_state_page_views_write_no_session_and_send_no_cookie(client, auth):
    auth.sign_in()
    client.get("/call_downstream_api")
    for path in ("/", "/call_downstream_api", "/", "/healthz"):
        response = client.get(path)
        assert response.status_code == 200
        assert session_cookie(response) is None, path


def test_anonymous_home_page_creates_no_session(client):
    response = client.get("/")
    assert session_cookie(response) is None


def test_proxy_headers_are_ignored_unless_a_proxy_count_is_set(tmp_path, fake_entra):
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}
    plain = create_app(fast_config(tmp_path)).test_client()
    location = plain.get("/login", headers=forwarded).headers["Location"]
    assert "redirect_uri=http%3A%2F%2Flocalhost%2FgetAToken" in location

    behind_proxy = create_app(fast_config(tmp_path, PROXY_COUNT=1)).test_client()
    response = behind_proxy.get("/login", headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.example"})
    assert "redirect_uri=https%3A%2F%2Fapp.example%2FgetAToken" in response.headers["Location"]
    assert "Secure" in pending_cookie(response) and pending_cookie(response).startswith("__Host-")


def test_behind_a_proxy_forwarded_prefix_and_port_from_the_client_change_nothing(tmp_path, fake_entra):
    client = create_app(fast_config(tmp_path, PROXY_COUNT=1)).test_client()
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.example:8443",
               "X-Forwarded-Prefix": "//evil.example", "X-Forwarded-Port": "1"}
    location = client.get("/login", headers=headers).headers["Location"]
    assert "redirect_uri=https%3A%2F%2Fapp.example%3A8443%2FgetAToken" in location
    page = client.get("/", headers=headers).get_data(as_text=True)
    assert 'href="/static/style.css' in page and "evil.example" not in page


def test_unknown_path_is_a_404_page_in_the_site_layout(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    page = response.get_data(as_text=True)
    assert "Page not found" in page and 'class="site-header"' in page


@pytest.mark.parametrize(("method", "path"), [("POST", "/"), ("PUT", "/call_downstream_api"),
                                              ("DELETE", "/logout"), ("POST", "/getAToken")])
def test_wrong_method_is_a_405_page(client, method, path):
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert "Method not allowed" in response.get_data(as_text=True)
    assert "Allow" in response.headers


def test_unexpected_exception_is_a_500_page_with_a_request_id_and_no_traceback(app, caplog):
    @app.get("/boom")
    def boom():
        raise ZeroDivisionError("secret internals")

    app.config["PROPAGATE_EXCEPTIONS"] = False
    with caplog.at_level(logging.ERROR):
        response = app.test_client().get("/boom")
    page = response.get_data(as_text=True)
    assert response.status_code == 500
    assert "Request id" in page and "Traceback" not in page and "secret internals" not in page
    request_id = page.split("Request id: <code>")[1].split("<")[0]
    assert any(request_id in r.getMessage() and r.exc_info for r in caplog.records)


def test_cross_site_get_changes_no_state(client, auth):
    auth.sign_in()
    for path in ("/logout", "/", "/call_downstream_api"):
        client.get(path, headers={"Sec-Fetch-Site": "cross-site", "Referer": "https://evil.example/"})
    assert "Signed in as" in client.get("/").get_data(as_text=True)


def test_sign_out_over_https_works_with_the_referer_browsers_send_under_our_policy(client, fake_entra):
    # Referrer-Policy: same-origin makes a browser send this page's URL with the form.
    AuthActions(client, fake_entra, base_url="https://localhost").sign_in()
    home = client.get("/", base_url="https://localhost").get_data(as_text=True)
    token = CSRF_RE.search(home).group(1)
    response = client.post("/logout", data={"csrf_token": token}, base_url="https://localhost",
                           headers={"Referer": "https://localhost/"})
    assert response.status_code == 303
    assert "Signed in as" not in client.get("/", base_url="https://localhost").get_data(as_text=True)


@pytest.mark.parametrize("referer", [None, "https://evil.example/", "http://localhost/", "https://localhost.evil.example/"])
def test_sign_out_over_https_from_another_origin_is_refused(client, fake_entra, referer):
    AuthActions(client, fake_entra, base_url="https://localhost").sign_in()
    home = client.get("/", base_url="https://localhost").get_data(as_text=True)
    token = CSRF_RE.search(home).group(1)
    response = client.post("/logout", data={"csrf_token": token}, base_url="https://localhost",
                           headers={"Referer": referer} if referer else {})
    assert response.status_code == 400
    assert "Signed in as" in client.get("/", base_url="https://localhost").get_data(as_text=True)


@pytest.mark.parametrize("as_file", [False, True])
def test_an_oversized_sign_out_body_is_refused_before_it_is_parsed(client, auth, as_file):
    auth.sign_in()
    token = auth.csrf_token()
    padding = b"x" * (2 * 1024 * 1024)
    data = {"csrf_token": token, "padding": (io.BytesIO(padding), "big.bin") if as_file else padding.decode()}
    response = client.post("/logout", data=data)
    assert response.status_code == 413
    assert "<h1" in response.get_data(as_text=True)
    assert "Signed in as" in client.get("/").get_data(as_text=True)


@pytest.mark.parametrize("token_first", [True, False])
def test_an_oversized_chunked_sign_out_body_is_refused_not_cut_short(client, auth, token_first):
    auth.sign_in()
    token = f"csrf_token={auth.csrf_token()}".encode()
    padding = b"x=" + b"y" * (1024 * 1024)
    body = token + b"&" + padding if token_first else padding + b"&" + token
    response = client.post("/logout", input_stream=io.BytesIO(body), content_type="application/x-www-form-urlencoded",
                           headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 413
    assert "Signed in as" in client.get("/").get_data(as_text=True)


def test_a_small_chunked_sign_out_still_works(client, auth):
    auth.sign_in()
    body = f"csrf_token={auth.csrf_token()}".encode()
    response = client.post("/logout", input_stream=io.BytesIO(body), content_type="application/x-www-form-urlencoded",
                           headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 303


def test_sign_out_with_a_forged_csrf_token_is_refused(client, auth):
    auth.sign_in()
    response = client.post("/logout", data={"csrf_token": "forged"})
    assert response.status_code == 400 and "expired" in response.get_data(as_text=True)
    assert "Signed in as" in client.get("/").get_data(as_text=True)


def test_csrf_token_from_another_session_is_refused(app, auth, fake_entra):
    auth.sign_in()
    other = app.test_client()
    from conftest import AuthActions

    AuthActions(other, fake_entra).sign_in()
    response = other.post("/logout", data={"csrf_token": auth.csrf_token()})
    assert response.status_code == 400


def test_no_token_appears_in_any_page(client, auth, fake_entra):
    auth.sign_in()
    pages = "".join(client.get(p).get_data(as_text=True) for p in ("/", "/call_downstream_api", "/logout"))
    for secret in (*fake_entra.issued_access_tokens, *fake_entra.issued_refresh_tokens,
                   *fake_entra.issued_id_tokens, "fast-tier-client-secret-value"):
        assert secret not in pages
    assert ME["displayName"] in pages


def test_debug_logs_of_the_whole_flow_hold_no_token_code_or_secret(client, auth, fake_entra, caplog):
    with caplog.at_level(logging.DEBUG):
        auth.sign_in()
        client.get("/call_downstream_api")
        auth.sign_out()
    text = "\n".join(r.getMessage() for r in caplog.records)
    # MSAL did log at DEBUG, so the search means something
    assert any(r.name.startswith("msal") and r.levelno == logging.DEBUG for r in caplog.records)
    for secret in (*fake_entra.issued_access_tokens, *fake_entra.issued_refresh_tokens,
                   *fake_entra.issued_id_tokens, "fast-tier-client-secret-value",
                   *(r["code"] for r in fake_entra.token_requests if "code" in r)):
        assert secret not in text


@pytest.mark.parametrize("host", ["a..b", "x" * 70 + ".example", "evil.example"])
def test_untrusted_or_malformed_host_gets_a_400_page_not_a_500(tmp_path, fake_entra, host):
    client = create_app(fast_config(tmp_path, TRUSTED_HOSTS=["localhost"])).test_client()
    for path in ("/", "/login", "/no-such-page"):
        response = client.get(path, headers={"Host": host})
        assert response.status_code == 400, (path, host)
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "<h1>Bad Request</h1>" in response.get_data(as_text=True)  # the bare page: no URL can be built
    assert client.get("/login").status_code == 302  # the trusted host still works


@pytest.mark.parametrize("host", ["10.0.0.5:8000", "localhost", "myapp.azurewebsites.net", "a..b"])
def test_health_probes_get_an_answer_whatever_host_they_send(tmp_path, fake_entra, host):
    client = create_app(fast_config(tmp_path, TRUSTED_HOSTS=["app.example"])).test_client()
    health = client.get("/healthz", headers={"Host": host})
    assert health.status_code == 200 and health.json["status"] == "ok"
    assert host not in health.get_data(as_text=True)
    assert client.get("/", headers={"Host": host}).status_code == 400  # nothing else


@pytest.mark.parametrize("host", ["a..b", "x" * 70 + ".example"])
def test_malformed_host_without_trusted_hosts_is_still_a_400_page(client, host):
    response = client.get("/", headers={"Host": host})
    assert response.status_code == 400



def test_sign_in_as_someone_else_drops_the_previous_users_tokens(client, auth, fake_entra, app):
    auth.sign_in()
    fake_entra.user = {"oid": "00000000-0000-0000-0000-0000000000bb", "name": "Bob", "preferred_username": "bob@x"}
    auth.sign_in()
    with client.session_transaction() as session:
        cache = session["_token_cache"]
    assert "bob@x" in cache and ME["userPrincipalName"] not in cache


def test_healthz_names_a_store_failure_without_its_address(tmp_path, fake_entra, caplog, request):
    from live import closed_port

    reserved, port = closed_port()  # nothing listens there while the test runs
    request.addfinalizer(reserved.close)
    url = f"redis://:s3cret-password@127.0.0.1:{port}/0"
    app = create_app(fast_config(tmp_path, SESSION_TYPE="redis", REDIS_URL=url))
    with caplog.at_level(logging.ERROR):
        response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json["session_store"] == "ConnectionError"
    body = response.get_data(as_text=True)
    assert "127.0.0.1" not in body and "s3cret" not in body
    assert any("127.0.0.1" in record.getMessage() for record in caplog.records)  # the log has it


@pytest.mark.parametrize("cookie", ["session=\xff\xfe", "session=\xc3(; other=\xff", "session=\"\\377\"",
                                    "session=" + "a" * 5000, "=; ;;session", "session=a; session=b"])
def test_a_malformed_cookie_header_is_a_signed_out_visitor_not_an_error(app, cookie, caplog):
    environ = EnvironBuilder(path="/").get_environ()
    environ["HTTP_COOKIE"] = cookie  # as a WSGI server hands over raw bytes: decoded as latin-1
    with caplog.at_level(logging.WARNING):
        body, status, _headers = run_wsgi_app(app, environ, buffered=True)
    assert status.startswith("200")
    assert "Signed in as" not in b"".join(body).decode()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- cookies tossed in by another origin ----------------------------------------------


def test_a_tossed_session_cookie_next_to_the_real_one_signs_nobody_in(app, fake_entra):
    attacker, victim = app.test_client(), app.test_client()
    AuthActions(attacker, fake_entra).sign_in()
    AuthActions(victim, fake_entra).sign_in()
    attackers_sid = attacker.get_cookie("session").value
    victims_sid = victim.get_cookie("session").value
    for header in (f"session={attackers_sid}; session={victims_sid}",
                   f"session={victims_sid}; session={attackers_sid}"):
        browser = app.test_client()
        home = browser.get("/", headers={"Cookie": header})
        assert "Signed in as" not in home.get_data(as_text=True)  # neither of them
        login = browser.get("/login", headers={"Cookie": header})
        assert attackers_sid not in str(login.headers) and victims_sid not in str(login.headers)


def test_a_tossed_pending_sign_in_cookie_is_not_used(app, fake_entra):
    attacker = app.test_client()
    params = AuthActions(attacker, fake_entra).start()
    pending = attacker.get_cookie("signin_pending").value
    browser = app.test_client()
    response = browser.get("/getAToken", query_string={"code": "c", "state": params["state"]},
                           headers={"Cookie": f"signin_pending={pending}; signin_pending={pending}"})
    assert response.status_code == 400 and "Sign-in could not be completed" in response.get_data(as_text=True)


def test_over_https_a_cookie_without_the_host_prefix_is_ignored(app, fake_entra):
    # Plain http (or a sibling subdomain) can set "session", never "__Host-session".
    attacker = app.test_client()
    AuthActions(attacker, fake_entra).sign_in()
    browser = app.test_client()
    home = browser.get("/", base_url="https://localhost",
                       headers={"Cookie": f"session={attacker.get_cookie('session').value}"})
    assert "Signed in as" not in home.get_data(as_text=True)


# --- what held up in the hostile review (issue 15), pinned ----------------------------------


@pytest.mark.parametrize("next_value", [
    "/%2F%2Fevil.example", "/%5Cevil.example", "/\tevil.example", "/\t/evil.example", "/\r\n/evil.example",
    "/\u2215evil.example", "/\uff0fevil.example", "/\u0085/evil.example", "/\u2028/evil.example",
    "//evil.example", "/\\evil.example", "https://evil.example", "/" + "a" * 2000,
])
def test_next_tricks_never_leave_the_site(client, auth, next_value):
    params = auth.start(next_path=next_value)
    done = auth.callback(code="c", state=params["state"])
    location = done.headers["Location"]
    assert done.status_code == 302
    assert location.startswith("/") and not location.startswith(("//", "/\\"))
    assert location.isascii() and not any(c in location for c in "\r\n\t\\")


@pytest.mark.parametrize("prompt", ["none", "select_account%20consent", "login consent", "<x>", ""])
def test_only_allow_listed_prompts_reach_the_identity_provider(client, prompt):
    location = client.get("/login", query_string={"prompt": prompt}).headers["Location"]
    assert parse_qs(urlsplit(location).query)["prompt"] == ["select_account"]


def test_login_csrf_is_refused_in_every_state(app, fake_entra):
    attacker = app.test_client()
    attackers = AuthActions(attacker, fake_entra).start()  # the attacker's own code and state
    forged = {"code": "attackers-code", "state": attackers["state"]}

    fresh = app.test_client()  # a victim with no sign-in in progress
    assert fresh.get("/getAToken", query_string=forged).status_code == 400
    pending = app.test_client()  # a victim in the middle of their own sign-in
    AuthActions(pending, fake_entra).start()
    assert pending.get("/getAToken", query_string=forged).status_code == 400
    signed_in = app.test_client()  # a signed-in victim: still themselves afterwards
    AuthActions(signed_in, fake_entra).sign_in()
    sid = signed_in.get_cookie("session").value
    assert signed_in.get("/getAToken", query_string=forged).status_code == 400
    assert signed_in.get_cookie("session").value == sid
    assert not fake_entra.token_calls()[3:]  # none of the forged callbacks reached the token endpoint


def test_an_unknown_or_attacker_chosen_session_id_is_replaced_and_a_planted_one_deleted(app, fake_entra):
    victim = app.test_client()
    victim.set_cookie("session", "attacker-chose-this-id")
    AuthActions(victim, fake_entra).sign_in()
    assert victim.get_cookie("session").value != "attacker-chose-this-id"
    # A real session id planted in the victim's browser is deleted at the victim's sign-in.
    attacker = app.test_client()
    AuthActions(attacker, fake_entra).sign_in()
    planted = attacker.get_cookie("session").value
    browser = app.test_client()
    browser.set_cookie("session", planted)
    AuthActions(browser, fake_entra).sign_in()
    assert browser.get_cookie("session").value != planted
    interface = app.session_interface
    with app.test_request_context():
        assert interface._retrieve_session_data(interface._get_store_id(planted)) is None


# --- the CSRF token, signed once per session while tokens carry no time -------------------


def _count_signatures(monkeypatch) -> list:
    import security

    calls = []
    real = security.generate_csrf

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(security, "generate_csrf", counted)
    return calls


def test_csrf_tokens_are_signed_once_per_session_without_a_time_limit(client, auth, monkeypatch):
    auth.sign_in()
    signatures = _count_signatures(monkeypatch)
    first, second = (CSRF_RE.search(client.get("/").get_data(as_text=True)).group(1) for _ in range(2))
    assert first == second and len(signatures) <= 1
    assert auth.sign_out().status_code == 303  # and it is a valid token


def test_csrf_tokens_are_signed_anew_when_a_time_limit_is_set(tmp_path, fake_entra, monkeypatch):
    app = create_app(fast_config(tmp_path, WTF_CSRF_TIME_LIMIT=3600))
    client = app.test_client()
    auth = AuthActions(client, fake_entra)
    auth.sign_in()
    signatures = _count_signatures(monkeypatch)
    forms = sum(client.get("/").get_data(as_text=True).count('name="csrf_token"') for _ in range(3))
    assert len(signatures) == forms >= 3  # every form signs anew: a signature with a time is never reused
    assert auth.sign_out().status_code == 303
