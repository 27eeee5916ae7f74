"""Scale-out: many workers and many instances sharing one session store.

* Redis (`-m redis`): a real redis-server from Debian's package, started here on a free
  loopback port in a temporary directory, shared by two gunicorn instances A and B.
  Without redis-server the Redis tests are skipped locally and fail under CI=true.
* The embedded filesystem store: shared by the worker processes of one instance, and it
  keeps a signed-in user through 10,000 sessions (mostly abandoned sign-ins).
"""

from __future__ import annotations

import collections
import json
import re
import struct
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import flask
import pytest
import redis

import live
import sessions
from app import create_app
from conftest import (
    ME,
    AuthActions,
    fast_config,
    home_page_shows_signed_in,
    pending_cookie,
    require_redis_server,
    session_cookie,
)
from live import ROOT, AppServer, RedisServer, WebUser
from local_entra import USERS
from sessions import FileSystemSessions, RedisSessions

PREFIX = "msal-flask:session:"  # SESSION_KEY_PREFIX's default
# An unusual lifetime, so that a TTL equal to it cannot be a coincidence or a library default.
LIFETIME = 5 * 3600 + 7
PENDING_LIFETIME = 3600


# --- Redis ------------------------------------------------------------------------------


def redis_env(redis_server, **extra) -> dict:
    return {"SESSION_TYPE": "redis", "REDIS_URL": redis_server.url,
            "SESSION_LIFETIME_SECONDS": str(LIFETIME), **extra}


@pytest.fixture(scope="module")
def pair(stand_in, redis_server, tmp_path_factory):
    """Two instances on different ports, one Redis: what sits behind a load balancer."""
    workdir = tmp_path_factory.mktemp("pair")
    a = AppServer(stand_in, workdir / "a", name="a", env=redis_env(redis_server))
    b = AppServer(stand_in, workdir / "b", name="b", env=redis_env(redis_server))
    try:
        a.start()
        b.start()
        yield types.SimpleNamespace(a=a, b=b)
    finally:
        a.stop()
        b.stop()


def session_id(person: WebUser) -> str:
    return person.http.cookies["session"]


def signed_in_as(page: str, user: dict) -> bool:
    return f"Signed in as <strong>{user['displayName']}</strong>" in page


def assert_sees_only(page: str, user: dict) -> None:
    """The profile page shows this account's profile and no other account's."""
    assert user["displayName"] in page and user["id"] in page, page[:500]
    for other in USERS:
        if other["id"] != user["id"]:
            assert other["displayName"] not in page and other["id"] not in page


@pytest.mark.redis
def test_signed_in_on_a_api_on_b_signed_out_on_b_is_signed_out_of_a(pair, fresh_stand_in):
    person = WebUser(pair.a.url)
    assert person.sign_in(USERS[0]).status_code == 302

    profile = person.get(f"{pair.b.url}/call_downstream_api")
    assert profile.status_code == 200
    assert_sees_only(profile.text, USERS[0])

    person.app_url = pair.b.url
    signed_out = person.sign_out()
    assert signed_out.status_code == 303
    assert not person.is_signed_in(pair.a.url)
    assert not person.is_signed_in(pair.b.url)
    on_a = person.get(f"{pair.a.url}/call_downstream_api")
    assert on_a.status_code == 302 and on_a.headers["Location"] == "/login?next=/call_downstream_api"


@pytest.mark.redis
def test_sign_in_started_on_a_finishes_on_b(pair, fresh_stand_in):
    person = WebUser(pair.a.url)
    # The callback lands on B: the pending sign-in (state, nonce, PKCE verifier) is read from Redis.
    response = person.sign_in(USERS[1], next_path="/call_downstream_api", callback_base=pair.b.url)
    assert response.status_code == 302, response.text[:500]
    assert response.headers["Location"] == "/call_downstream_api"
    for url in (pair.a.url, pair.b.url):
        assert signed_in_as(person.http.get(f"{url}/", timeout=30).text, USERS[1])
        profile = person.get(f"{url}/call_downstream_api")
        assert profile.status_code == 200
        assert_sees_only(profile.text, USERS[1])


@pytest.mark.redis
def test_b_goes_on_serving_every_signed_in_user_when_a_is_gone(pair, stand_in, fresh_stand_in, redis_server,
                                                                tmp_path):
    # A third instance plays "A" here, so that the module's pair stays up for the other tests.
    doomed = AppServer(stand_in, tmp_path, name="doomed", env=redis_env(redis_server)).start()
    try:
        people = []
        for user in USERS:
            person = WebUser(doomed.url)
            assert person.sign_in(user).status_code == 302
            assert person.get("/call_downstream_api").status_code == 200
            people.append((person, user))
    finally:
        doomed.kill()  # no graceful shutdown: the machine is gone
    for person, user in people:
        home = person.http.get(f"{pair.b.url}/", timeout=30).text
        assert signed_in_as(home, user)
        profile = person.get(f"{pair.b.url}/call_downstream_api")
        assert profile.status_code == 200
        assert_sees_only(profile.text, user)


@pytest.mark.redis
def test_redis_keys_are_prefixed_and_expire_with_the_session(pair, redis_client, fresh_stand_in):
    keys_before = redis_client.dbsize()
    person = WebUser(pair.a.url)
    for _ in range(20):
        person.start_sign_in()
    assert redis_client.dbsize() == keys_before  # a pending sign-in is kept in its own cookie

    person = WebUser(pair.a.url)
    person.sign_in(USERS[2])
    signed_in_key = PREFIX + session_id(person)
    assert redis_client.exists(signed_in_key)
    # Redis rounds TTL to whole seconds; the read follows the write by a few milliseconds.
    assert LIFETIME - 2 <= redis_client.ttl(signed_in_key) <= LIFETIME

    # Page views that change nothing do not rewrite the session (and so do not extend it)...
    assert person.get("/").status_code == 200
    # ... and nothing the app stores in Redis lives outside the prefix or without an expiry.
    keys = [key.decode() for key in redis_client.scan_iter(count=1000)]
    assert keys and all(key.startswith(PREFIX) for key in keys), keys[:5]
    assert all(redis_client.ttl(key) > 0 for key in keys)
    for url in (pair.a.url, pair.b.url):
        health = person.http.get(f"{url}/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["session_store"] == "ok"


@pytest.mark.redis
@pytest.mark.slow
def test_redis_down_gives_503_pages_and_recovers_when_it_is_back(stand_in, fresh_stand_in, tmp_path):
    require_redis_server()
    store = RedisServer(tmp_path / "redis").start()
    prefix = "scale-out-test:"
    app = AppServer(stand_in, tmp_path / "app", name="flaky-redis",
                    env=redis_env(store, SESSION_KEY_PREFIX=prefix)).start()
    try:
        person = WebUser(app.url)
        person.sign_in(USERS[0])
        assert person.get("/call_downstream_api").status_code == 200
        csrf_token = person.csrf_token()
        # Someone else is on the account picker when Redis goes down.
        latecomer = WebUser(app.url)
        action, request_id, _ = latecomer.start_sign_in()
        callback = latecomer.pick(action, request_id, {"user_id": USERS[1]["id"]})

        store.stop()
        for path in ("/", "/call_downstream_api", "/login", "/logout"):
            response = person.get(path)
            assert response.status_code == 503, (path, response.status_code, response.text[:300])
            assert "Sessions unavailable" in response.text and response.headers["Retry-After"]
        sign_out = person.http.post(f"{app.url}/logout", data={"csrf_token": csrf_token},
                                    allow_redirects=False, timeout=30)
        assert sign_out.status_code == 503 and "Sessions unavailable" in sign_out.text
        health = person.http.get(f"{app.url}/healthz", timeout=30)
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable"
        assert "ConnectionError" in health.json()["session_store"]
        assert latecomer.http.get(callback, allow_redirects=False, timeout=30).status_code == 503

        store = RedisServer(tmp_path / "redis", port=store.port).start()  # empty: the session is gone
        health = person.http.get(f"{app.url}/healthz", timeout=30)
        assert health.status_code == 200 and health.json()["session_store"] == "ok"
        home = person.get("/")
        assert home.status_code == 200 and not signed_in_as(home.text, USERS[0])
        api = person.get("/call_downstream_api")
        assert api.status_code == 302 and api.headers["Location"] == "/login?next=/call_downstream_api"
        again = person.sign_in(USERS[0], next_path="/call_downstream_api")
        assert again.headers["Location"] == "/call_downstream_api"
        profile = person.get("/call_downstream_api")
        assert profile.status_code == 200
        assert_sees_only(profile.text, USERS[0])
        # The pending sign-in was lost with Redis: the callback asks to sign in again, which works.
        lost = latecomer.http.get(callback, allow_redirects=False, timeout=30)
        assert lost.status_code == 400 and "Try signing in again" in lost.text
        assert latecomer.sign_in(USERS[1]).status_code == 302
        assert signed_in_as(latecomer.get("/").text, USERS[1])
        keys = {key.decode() for key in redis.Redis.from_url(store.url).scan_iter()}
        sessions_kept = {k for k in keys if not k.startswith(f"{prefix}sid:")}  # not the sid index
        assert sessions_kept == {prefix + session_id(person), prefix + session_id(latecomer)}
        assert len(keys - sessions_kept) == 2  # one sid index entry per sign-in
    finally:
        app.stop()
        store.stop()
    assert '" 500 ' not in app.logs() and "Traceback" not in app.logs()


@pytest.mark.redis
@pytest.mark.slow
def test_fifty_users_sign_in_and_call_the_api_across_both_instances(pair, fresh_stand_in):
    users, rounds = 50, 2
    instances = (pair.a.url, pair.b.url)
    lock = threading.Lock()
    counts: collections.Counter = collections.Counter()
    errors: list[str] = []

    def count(response, *args, **kwargs):
        to_app = response.url.startswith(instances)
        with lock:
            counts["requests"] += 1
            counts["app_requests"] += to_app
            counts["5xx"] += response.status_code >= 500
        return response

    def journey(i: int) -> None:
        user = USERS[i % len(USERS)]
        start, other = instances[i % 2], instances[(i + 1) % 2]
        person = WebUser(start)
        person.http.hooks["response"].append(count)
        # Every other person's callback lands on the other instance.
        response = person.sign_in(user, callback_base=other if i % 4 < 2 else None)
        assert response.status_code == 302, f"callback answered {response.status_code}"
        for _ in range(rounds):
            for url in instances:
                home = person.http.get(f"{url}/", timeout=30)
                assert home.status_code == 200, f"home on {url}: {home.status_code}"
                assert signed_in_as(home.text, user), f"home on {url} does not show {user['displayName']}"
                profile = person.get(f"{url}/call_downstream_api")
                assert profile.status_code == 200, f"profile on {url}: {profile.status_code}"
                assert_sees_only(profile.text, user)

    def run(i: int) -> None:
        try:
            journey(i)
        except Exception as exc:
            with lock:
                errors.append(f"user {i}: {type(exc).__name__}: {exc}"[:300])

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=users) as pool:
        list(pool.map(run, range(users)))
    elapsed = time.monotonic() - started

    numbers = {
        "users": users, "accounts": len(USERS), "instances": len(instances), "session_store": "redis",
        "requests": counts["requests"], "app_requests": counts["app_requests"],
        "server_errors_5xx": counts["5xx"], "errors": len(errors), "elapsed_seconds": round(elapsed, 2),
    }
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "scale_out.json").write_text(json.dumps({**numbers, "error_samples": errors[:10]}, indent=2) + "\n")
    print(f"\nscale-out: {users} users over {len(instances)} instances: {counts['requests']} requests "
          f"({counts['app_requests']} to the app), {len(errors)} errors, {counts['5xx']} 5xx, {elapsed:.2f} s")
    assert not errors, errors[:5]
    assert counts["5xx"] == 0


def test_missing_redis_server_skips_locally_and_fails_in_ci(monkeypatch):
    monkeypatch.setattr(RedisServer, "available", staticmethod(lambda: False))
    monkeypatch.setattr(live, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="redis-server is not installed"):
        require_redis_server()
    monkeypatch.setattr(live, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="required under CI"):
        require_redis_server()


@pytest.mark.parametrize(("url", "ssl"), [
    ("rediss://:access-key@contoso.redis.cache.example.test:6380/0", True),
    ("redis://127.0.0.1:6379/0", False),
])
def test_redis_url_builds_a_client_with_or_without_tls_without_connecting(tmp_path, fake_entra, url, ssl):
    app = create_app(fast_config(tmp_path, SESSION_TYPE="redis", REDIS_URL=url))
    interface = app.session_interface
    assert isinstance(interface, RedisSessions)
    assert interface.key_prefix == PREFIX
    pool = interface.client.connection_pool
    assert (pool.connection_class is redis.SSLConnection) is ssl
    assert issubclass(pool.connection_class, redis.Connection)
    if ssl:
        assert pool.connection_kwargs["host"] == "contoso.redis.cache.example.test"
        assert pool.connection_kwargs["port"] == 6380 and pool.connection_kwargs["password"] == "access-key"
        assert pool.connection_kwargs.get("ssl_cert_reqs", "required") == "required"  # certificates are checked
    assert not pool._created_connections  # nothing was connected


@pytest.mark.redis
@pytest.mark.slow
def test_sessions_work_over_tls_with_a_rediss_url(tmp_path, fake_entra):
    """A real redis-server serving TLS only (like Azure Cache for Redis on 6380)."""
    require_redis_server()
    import subprocess

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, chain_file, key_file = tmp_path / "ca.pem", tmp_path / "chain.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_pem.write_to_path(str(key_file))
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(chain_file), append=True)
    def start(port):
        return subprocess.Popen(
            ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
             "--save", "", "--appendonly", "no", "--tls-cert-file", str(chain_file), "--tls-key-file",
             str(key_file), "--tls-ca-cert-file", str(ca_file), "--tls-auth-clients", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def url_for(port):
        return f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca_file}"

    server, port = live.start_on_a_free_port(
        start, lambda port: _pings(redis.Redis.from_url(url_for(port))), what="redis-server over TLS")
    try:
        url = url_for(port)
        tls_client = redis.Redis.from_url(url)
        app = create_app(fast_config(tmp_path, SESSION_TYPE="redis", REDIS_URL=url))
        client = app.test_client()
        AuthActions(client, fake_entra).sign_in()
        assert ME["displayName"] in client.get("/").get_data(as_text=True)
        assert client.get("/healthz").json == {"status": "ok", "session_store": "ok"}
        sid = client.get_cookie("session").value
        assert tls_client.ttl(f"{PREFIX}{sid}") > 0
        # Plain text to the TLS port is refused: the session data only travels encrypted.
        assert not _pings(redis.Redis(host="127.0.0.1", port=port, socket_timeout=1))
    finally:
        server.terminate()
        server.wait(timeout=10)


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


# A request in flight while another one deletes its session: it read the signed-in session
# and changes it (a token refresh); meanwhile the browser's other tab signs out, or signs in
# anew (regenerate() drops the old id). Its write comes last and must not re-create the key.

REFRESHED = '{"refreshed": "by the request in flight"}'


class RequestInFlight:
    """open_session now, save_session in finish(): what Flask does around a view."""

    def __init__(self, app, sid: str):
        self.app, self.sid = app, sid
        with self._context():
            self.session = app.session_interface.open_session(app, flask.request)
        assert self.session.sid == sid and sessions.SIGNED_IN_KEY in self.session
        self.session["_token_cache"] = REFRESHED

    def _context(self):
        return self.app.test_request_context("/call_downstream_api", headers={"Cookie": f"session={self.sid}"})

    def finish(self):
        response = self.app.response_class("the page")
        with self._context():
            self.app.session_interface.save_session(self.app, self.session, response)
            assert flask.g.get("session_store_error") is None  # not taken for a store failure
        return response


@pytest.fixture
def redis_app(redis_server, tmp_path, fake_entra):
    return create_app(fast_config(tmp_path, SESSION_TYPE="redis", REDIS_URL=redis_server.url,
                                  SESSION_LIFETIME_SECONDS=LIFETIME))


@pytest.mark.redis
def test_redis_a_request_in_flight_during_sign_out_does_not_bring_the_session_back(redis_app, redis_client,
                                                                                   fake_entra):
    client = redis_app.test_client()
    auth = AuthActions(client, fake_entra)
    auth.sign_in()
    sid = client.get_cookie("session").value
    in_flight = RequestInFlight(redis_app, sid)

    assert auth.sign_out().status_code == 303
    assert not redis_client.exists(PREFIX + sid)
    late = in_flight.finish()

    assert not redis_client.exists(PREFIX + sid)
    assert session_cookie(late) is None  # no Set-Cookie bringing the old id back
    assert not home_page_shows_signed_in(client)
    kept_the_old_cookie = redis_app.test_client()
    kept_the_old_cookie.set_cookie("session", sid)
    assert not home_page_shows_signed_in(kept_the_old_cookie)


@pytest.mark.redis
def test_redis_a_request_in_flight_during_a_new_sign_in_does_not_bring_back_the_old_id(redis_app, redis_client,
                                                                                      fake_entra):
    client = redis_app.test_client()
    auth = AuthActions(client, fake_entra)
    auth.sign_in()
    old_sid = client.get_cookie("session").value
    in_flight = RequestInFlight(redis_app, old_sid)

    fake_entra.user = {"oid": "00000000-0000-0000-0000-0000000000bb", "name": "Bob", "preferred_username": "bob@x"}
    auth.sign_in()
    new_sid = client.get_cookie("session").value
    assert new_sid != old_sid and not redis_client.exists(PREFIX + old_sid)
    late = in_flight.finish()

    assert not redis_client.exists(PREFIX + old_sid)
    assert session_cookie(late) is None  # not even a deletion: it would sign Bob out
    # The new session was written as before, with the signed-in lifetime.
    assert LIFETIME - 2 <= redis_client.ttl(PREFIX + new_sid) <= LIFETIME
    assert "Signed in as <strong>Bob</strong>" in client.get("/").get_data(as_text=True)


@pytest.mark.redis
def test_redis_a_session_read_and_changed_is_written_back_with_the_ttl_of_its_state(redis_app, redis_client,
                                                                                  fake_entra):
    client = redis_app.test_client()
    AuthActions(client, fake_entra).sign_in()
    sid = client.get_cookie("session").value
    redis_client.expire(PREFIX + sid, 100)
    late = RequestInFlight(redis_app, sid).finish()  # nothing deleted it meanwhile

    assert session_cookie(late).startswith(f"session={sid};")
    interface = redis_app.session_interface
    stored = interface.serializer.decode(interface.cipher.open(redis_client.get(PREFIX + sid), PREFIX + sid)[0])
    assert stored["_token_cache"] == REFRESHED
    assert LIFETIME - 2 <= redis_client.ttl(PREFIX + sid) <= LIFETIME
    assert home_page_shows_signed_in(client)


def test_filesystem_is_the_default_session_store(tmp_path, fake_entra):
    app = create_app(fast_config(tmp_path))
    assert app.config["SESSION_TYPE"] == "filesystem"
    assert isinstance(app.session_interface, FileSystemSessions)
    assert app.session_interface.cache._threshold == 0  # cachelib's default (500) would evict live sessions


# --- the embedded filesystem store ------------------------------------------------------


def stored_expiry(interface: FileSystemSessions, sid: str) -> int:
    """The expiry (unix time) that cachelib wrote in the session file's first four bytes."""
    with open(interface.cache._get_filename(interface._get_store_id(sid)), "rb") as f:
        return struct.unpack("I", f.read(4))[0]


def session_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if not p.name.endswith(".__wz_cache")]


@pytest.mark.slow
def test_ten_thousand_anonymous_sign_in_starts_store_nothing_and_a_signed_in_user_is_unaffected(
        tmp_path, fake_entra, monkeypatch):
    total = 10_000
    app = create_app(fast_config(tmp_path))
    interface = app.session_interface
    lifetime = app.config["SESSION_LIFETIME_SECONDS"]
    directory = Path(app.config["SESSION_FILE_DIR"])

    # A user signs in first, through the real routes.
    client = app.test_client()
    before = int(time.time())
    AuthActions(client, fake_entra).sign_in()
    after = int(time.time())
    signed_in_sid = client.get_cookie("session").value
    assert before + lifetime <= stored_expiry(interface, signed_in_sid) <= after + lifetime

    # Someone starts a sign-in, then goes for coffee.
    slow_client = app.test_client()
    slow = AuthActions(slow_client, fake_entra)
    slow_params = slow.start()

    # Abandoned sign-ins, as fast as one client can send them: each pending sign-in is in
    # its own browser's cookie, so the store does not grow at all.
    anonymous = app.test_client()
    for _ in range(total):
        response = anonymous.get("/login")
        assert response.status_code == 302 and pending_cookie(response)
        anonymous.delete_cookie("signin_pending")
    assert len(session_files(directory)) == 1  # the signed-in user's, nothing more

    # The user signed in before all of them is still signed in, and Graph works for them.
    home = client.get("/").get_data(as_text=True)
    assert f"Signed in as <strong>{ME['displayName']}</strong>" in home
    profile = client.get("/call_downstream_api")
    assert profile.status_code == 200 and ME["jobTitle"] in profile.get_data(as_text=True)
    # And the sign-in started before them can still be finished.
    fake_entra.nonce = slow_params["nonce"]
    finished = slow.callback(code="auth-code-slow", state=slow_params["state"], session_state="s")
    assert finished.status_code == 302, finished.get_data(as_text=True)[:300]
    assert "Signed in as" in slow_client.get("/").get_data(as_text=True)

    # A session lifetime and a second later, the next write sweeps the expired sessions.
    real_time, real_monotonic = time.time, time.monotonic
    monkeypatch.setattr(sessions, "time", types.SimpleNamespace(
        time=lambda: real_time() + lifetime + 1,
        time_ns=time.time_ns,
        monotonic=lambda: real_monotonic() + sessions.SWEEP_INTERVAL_SECONDS + 1))
    AuthActions(app.test_client(), fake_entra).sign_in()  # a write: the sweep runs
    assert not interface.cache.has(interface._get_store_id(signed_in_sid))
    assert len(session_files(directory)) <= 1  # at most the one that swept


def test_a_pending_sign_in_cookie_expires_with_the_pending_lifetime(tmp_path, fake_entra, monkeypatch):
    app = create_app(fast_config(tmp_path, PENDING_SIGN_IN_LIFETIME_SECONDS=600))
    client = app.test_client()
    auth = AuthActions(client, fake_entra)
    params = auth.start()
    assert "Max-Age=600" in pending_cookie(client.get("/login"))
    real_time = time.time
    # A browser that kept the cookie past its Max-Age (or sent it back by hand) gets nothing.
    monkeypatch.setattr(sessions, "time", types.SimpleNamespace(time=lambda: real_time() + 601,
                                                                monotonic=time.monotonic))
    response = auth.callback(code="c", state=params["state"])
    assert response.status_code == 400 and "Sign-in could not be completed" in response.get_data(as_text=True)


ACCESS_LOG_FORMAT = '%(p)s %(a)s "%(m)s %(U)s" %(s)s'  # worker pid, user agent, request line, status
ACCESS_LINE = re.compile(r'^<(\d+)> (scale-out-\d+) "GET (/login|/getAToken)" (\d+)$', re.M)


def _access_lines(app, expected: int) -> list | None:
    found = ACCESS_LINE.findall(app.logs())
    return found if len(found) >= expected else None


@pytest.mark.real
def test_sign_in_started_in_one_worker_finishes_in_another(stand_in, fresh_stand_in, tmp_path):
    """One instance, three sync worker processes, the filesystem store, no --preload."""
    env = {"GUNICORN_CMD_ARGS": f"--access-logformat '{ACCESS_LOG_FORMAT}'"}
    with AppServer(stand_in, tmp_path, name="workers", workers=3, threads=1, worker_class="sync",
                   env=env) as app:

        def sign_in(i: int):
            person = WebUser(app.url)
            person.http.headers["User-Agent"] = f"scale-out-{i}"  # to find its requests in the access log
            user = USERS[i % len(USERS)]
            response = person.sign_in(user)
            home = person.http.get(f"{app.url}/", timeout=30).text
            return response.status_code, signed_in_as(home, user)

        crossed, done = 0, 0
        with ThreadPoolExecutor(max_workers=6) as pool:
            # 20 sign-ins; more only in the unlikely case that none of them changed worker.
            while done < 20 or (crossed == 0 and done < 80):
                results = list(pool.map(sign_in, range(done, done + 20)))
                done += 20
                assert results == [(302, True)] * 20, results
                # gunicorn writes its access line after the response went out: wait for all of them.
                lines = live.wait_for(lambda expected=2 * done: _access_lines(app, expected), timeout=10,
                                      what="the access log")
                served_by: dict = collections.defaultdict(dict)
                for pid, person, path, status in lines:
                    assert status == "302", (person, path, status)
                    served_by[person][path] = pid
                crossed = sum(1 for by in served_by.values() if by["/login"] != by["/getAToken"])
        workers = {pid for by in served_by.values() for pid in by.values()}
        print(f"\n{done} sign-ins over {len(workers)} workers, {crossed} finished in another worker")
        assert len(served_by) == done
        assert crossed > 0, "no sign-in changed worker: the test proved nothing"
