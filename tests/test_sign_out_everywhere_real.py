"""Sign-out from anywhere (OpenID Connect Front-Channel Logout) for real.

* Redis (`-m redis`): two instances sharing one redis-server; the stand-in's signed-out page
  names the app's front-channel URL, and whichever instance gets that request ends the
  user's session everywhere. The sid index, driven through the session interface itself
  with 10,000 sign-ins' worth of writes, expires with the sessions it points to.
* Chromium (`-m browser`): "Sign out everywhere" on the stand-in's own page signs the user
  out of the app through the hidden iframe; the app's own "Sign out" button signs out at
  the stand-in without asking which account.
"""

from __future__ import annotations

import re
import time
import types
import uuid
from datetime import timedelta
from urllib.parse import urljoin, urlsplit

import flask
import pytest
import requests

import live
from app import create_app
from conftest import ISSUER, AuthActions, fast_config, home_page_shows_signed_in
from live import AppServer, WebUser, browser_page, iframe_sources, screenshot, wait_for
from local_entra import USERS
from local_entra.sso import SESSION_COOKIE, login_hint
from sessions import SIGNED_IN_KEY
from sid_index import SidIndex

ADELE, BOB = USERS[0], USERS[1]
FRONTCHANNEL = "/logout/frontchannel"
PREFIX = "msal-flask:session:"  # SESSION_KEY_PREFIX's default
SIGNED_OUT_HEADING = "You signed out of your account"
WHICH_ACCOUNT = "Which account do you want to sign out of?"
FORM_RE = re.compile(r'<form method="post" action="([^"]+)">\s*<input type="hidden" name="account" value="([^"]*)">')


# --- Redis: two instances, one store --------------------------------------------------------


@pytest.fixture(scope="module")
def pair(stand_in, redis_server, tmp_path_factory):
    """Two instances behind one (imagined) load balancer, both registered for front-channel logout."""
    workdir = tmp_path_factory.mktemp("pair")
    env = {"SESSION_TYPE": "redis", "REDIS_URL": redis_server.url}
    a = AppServer(stand_in, workdir / "a", name="a", env=env)
    b = AppServer(stand_in, workdir / "b", name="b", env=env)
    urls = [f"{a.url}{FRONTCHANNEL}", f"{b.url}{FRONTCHANNEL}"]
    try:
        a.start()
        b.start()
        for url in urls:
            stand_in.register_frontchannel_logout_uri(url)
        yield types.SimpleNamespace(a=a, b=b)
    finally:
        for url in urls:
            if url in stand_in.frontchannel_logout_uris:
                stand_in.frontchannel_logout_uris.remove(url)
        a.stop()
        b.stop()


def stand_in_sid(person: WebUser, stand_in) -> str:
    """The provider session (`sid`) of this browser at the stand-in, from its own cookie."""
    session = stand_in.store.browser_session(person.http.cookies.get(SESSION_COOKIE))
    assert session is not None, "not signed in at the stand-in"
    return session["sid"]


def sign_out_everywhere_at_the_stand_in(person: WebUser, stand_in) -> requests.Response:
    """What the stand-in's front page's "Sign out everywhere" button does: its form, posted."""
    home = person.http.get(f"{stand_in.front_url}/", timeout=30)
    action, account = FORM_RE.search(home.text).groups()
    return person.http.post(urljoin(home.url, action), data={"account": account}, timeout=30)


@pytest.mark.redis
def test_the_stand_in_s_front_channel_call_reaching_b_signs_the_user_out_on_a(pair, stand_in, fresh_stand_in,
                                                                              redis_client):
    adele = WebUser(pair.a.url)
    assert adele.sign_in(ADELE).status_code == 302
    assert adele.get("/call_downstream_api").status_code == 200
    bob = WebUser(pair.b.url)  # someone else, signed in through B with a stand-in session of his own
    assert bob.sign_in(BOB).status_code == 302
    sid = stand_in_sid(adele, stand_in)
    assert redis_client.exists(SidIndex.key(PREFIX, sid))

    signed_out = sign_out_everywhere_at_the_stand_in(adele, stand_in)
    assert signed_out.status_code == 200 and SIGNED_OUT_HEADING in signed_out.text
    # The signed-out page loads the front-channel URL of the instance Adele signed in on, with her sid.
    assert iframe_sources(signed_out.text) == [f"{pair.a.url}{FRONTCHANNEL}?sid={sid}"]
    # Behind a load balancer that request may land on any instance: here, B. And it comes
    # from the provider's page, with no cookie of ours (SameSite=Lax, another site).
    for src in iframe_sources(signed_out.text):
        parts = urlsplit(src)
        on_b = requests.get(f"{pair.b.url}{parts.path}?{parts.query}", timeout=30)
        assert on_b.status_code == 200 and "You are signed out of this app." in on_b.text

    for url in (pair.a.url, pair.b.url):
        assert not adele.is_signed_in(url)
        on_api = adele.get(f"{url}/call_downstream_api")
        assert on_api.status_code == 302 and on_api.headers["Location"] == "/login?next=/call_downstream_api"
    assert not redis_client.exists(SidIndex.key(PREFIX, sid))
    # Bob's session (another sid) was not touched, on either instance.
    assert bob.is_signed_in(pair.a.url) and bob.is_signed_in(pair.b.url)
    assert bob.get(f"{pair.a.url}/call_downstream_api").status_code == 200


# --- Redis: the sid index, 10,000 sign-ins' worth, through the session interface ---------------

LIFETIME = 60  # the smallest SESSION_LIFETIME_SECONDS the app accepts
SIGN_INS = 10_000
SESSIONS_PER_SID = 4  # one provider session signs in on several browsers (or again)
TTL_SLACK_MS = 1_000  # a session is written a moment before its index entry; Redis reads take a moment


@pytest.fixture
def index_app(redis_server, redis_client, tmp_path, fake_entra):
    """The app with Redis sessions of a one-minute lifetime, under a prefix of its own."""
    prefix = f"sid-index-{uuid.uuid4().hex[:8]}:"
    app = create_app(fast_config(tmp_path, SESSION_TYPE="redis", REDIS_URL=redis_server.url,
                                 SESSION_LIFETIME_SECONDS=LIFETIME, SESSION_KEY_PREFIX=prefix))
    assert not app.extensions["config_problems"], app.extensions["config_problems"]
    yield app
    keys = list(redis_client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        redis_client.delete(*keys)


def sign_in_directly(app, idp_sid: str) -> str:
    """What completing a sign-in writes, through the session interface alone: a new session
    holding the id token's claims (with the provider's `sid`). Returns the session cookie."""
    interface = app.session_interface
    session = interface.open_session(app, flask.request)  # a visitor: a new id
    session[SIGNED_IN_KEY] = {"sid": idp_sid, "iss": ISSUER, "oid": str(uuid.uuid4()), "name": "Someone"}
    interface.save_session(app, session, app.response_class())
    assert flask.g.get("session_store_error") is None
    return session.sid


def sign_out_directly(app, cookie: str) -> None:
    """What POST /logout does to the stored session: open it from its cookie, clear it, save."""
    with app.test_request_context("/logout", method="POST", headers={"Cookie": f"session={cookie}"}):
        interface = app.session_interface
        session = interface.open_session(app, flask.request)
        assert SIGNED_IN_KEY in session
        session.clear()
        interface.save_session(app, session, app.response_class())
        assert flask.g.get("session_store_error") is None


def index_keys(app, client) -> list[bytes]:
    return list(client.scan_iter(match=f"{app.config['SESSION_KEY_PREFIX']}sid:*", count=1000))


def index_entry_overlives(client, keys) -> list[str]:
    """Index keys with no expiry, an expiry beyond the session lifetime, or one beyond the
    longest-lived session still in them (read in one pipeline: one moment for all)."""
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.pttl(key)
            pipe.zrange(key, 0, -1)  # the members (a sorted set scored by expiry)
        answers = pipe.execute()
    index = {key: (answers[2 * i], answers[2 * i + 1]) for i, key in enumerate(keys)}
    with client.pipeline(transaction=False) as pipe:
        for _ttl, members in index.values():
            for member in sorted(members):
                pipe.pttl(member)
        member_ttls = iter(pipe.execute())
    problems = []
    for raw_key, (ttl, members) in index.items():
        key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
        alive = [t for t in (next(member_ttls) for _ in sorted(members)) if t > 0]
        if ttl < 0:
            problems.append(f"{key} has no expiry ({ttl})")
        elif ttl > LIFETIME * 1000:
            problems.append(f"{key} lives {ttl} ms, longer than a session ({LIFETIME} s)")
        elif ttl > max(alive, default=0) + TTL_SLACK_MS:
            problems.append(f"{key} lives {ttl} ms, its sessions at most {max(alive, default=0)} ms")
    return problems


@pytest.mark.redis
@pytest.mark.slow
def test_sid_index_entries_of_ten_thousand_sign_ins_all_expire_with_their_sessions_and_go_at_sign_out(
        index_app, redis_client, fake_entra):
    app = index_app
    # One sign-in and sign-out through the real routes first: the index the routes keep.
    fake_entra.id_token_overrides = {"sid": "through-the-routes"}
    browser = app.test_client()
    auth = AuthActions(browser, fake_entra)
    auth.sign_in()
    [key] = index_keys(app, redis_client)
    assert 0 < redis_client.ttl(key) <= LIFETIME
    auth.sign_out()
    assert not home_page_shows_signed_in(browser)
    assert index_keys(app, redis_client) == []

    # 10,000 sign-ins: 2,500 provider sessions, each signed in on four browsers.
    sids = [f"provider-session-{n}" for n in range(SIGN_INS // SESSIONS_PER_SID)]
    cookies: dict[str, list[str]] = {sid: [] for sid in sids}
    with app.test_request_context("/getAToken"):
        for n in range(SIGN_INS):
            sid = sids[n % len(sids)]
            cookies[sid].append(sign_in_directly(app, sid))
    keys = index_keys(app, redis_client)
    assert len(keys) == len(sids)
    interface = app.session_interface
    some = sids[7]
    assert sorted(interface.sid_index.members(some)) == sorted(interface._get_store_id(c) for c in cookies[some])
    assert index_entry_overlives(redis_client, keys) == []

    # Sign-outs: every browser of 100 provider sessions, the first browser of 100 others.
    for sid in sids[:100]:
        for cookie in cookies[sid]:
            sign_out_directly(app, cookie)
    for sid in sids[100:200]:
        sign_out_directly(app, cookies[sid][0])
    for sid in sids[:100]:
        assert not redis_client.exists(SidIndex.key(app.config["SESSION_KEY_PREFIX"], sid)), sid
    for sid in sids[100:200]:
        assert sorted(interface.sid_index.members(sid)) == sorted(
            interface._get_store_id(c) for c in cookies[sid][1:])
    keys = index_keys(app, redis_client)
    assert len(keys) == len(sids) - 100
    assert index_entry_overlives(redis_client, keys) == []


@pytest.mark.redis
def test_sid_index_entries_vanish_from_redis_when_their_sessions_expire(index_app, redis_client):
    app = index_app
    # A lifetime below what the configuration accepts, set on the running app: expiry in
    # about a second instead of a minute.
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(seconds=1)
    with app.test_request_context("/getAToken"):
        stored = [app.session_interface._get_store_id(sign_in_directly(app, f"short-lived-{n % 5}"))
                  for n in range(20)]
    assert len(index_keys(app, redis_client)) == 5

    def all_gone():
        return not index_keys(app, redis_client) and not any(redis_client.exists(key) for key in stored)

    wait_for(all_gone, timeout=10, what="the sessions and their index entries to expire")


@pytest.mark.redis
def test_a_sid_index_entry_does_not_outlive_its_sessions_when_the_longest_lived_one_signs_out(
        index_app, redis_client):
    app = index_app
    interface = app.session_interface
    with app.test_request_context("/getAToken"):
        earlier = sign_in_directly(app, "shared")
        later = sign_in_directly(app, "shared")
    # As if the first browser signed in 40 seconds before the second: its session and its
    # index entry (scored by expiry) both end 40 seconds sooner.
    key = SidIndex.key(app.config["SESSION_KEY_PREFIX"], "shared")
    redis_client.expire(interface._get_store_id(earlier), LIFETIME - 40)
    redis_client.zadd(key, {interface._get_store_id(earlier): int(time.time()) + LIFETIME - 40})
    sign_out_directly(app, later)
    assert redis_client.zrange(key, 0, -1) == [interface._get_store_id(earlier).encode()]
    assert index_entry_overlives(redis_client, [key]) == []


@pytest.mark.redis
def test_a_sid_index_entry_does_not_outlive_its_session_when_the_browser_signs_in_again_elsewhere(
        index_app, redis_client, fake_entra):
    browser = index_app.test_client()
    auth = AuthActions(browser, fake_entra)
    fake_entra.id_token_overrides = {"sid": "first-provider-session"}
    auth.sign_in()
    fake_entra.id_token_overrides = {"sid": "second-provider-session"}  # e.g. another account
    auth.sign_in()
    assert home_page_shows_signed_in(browser)
    assert index_entry_overlives(redis_client, index_keys(index_app, redis_client)) == []


# --- Chromium ------------------------------------------------------------------------------



@pytest.fixture
def frontchannel_app(live_app, stand_in):
    """The module's app, registered with the stand-in for front-channel logout."""
    url = f"{live_app.url}{FRONTCHANNEL}"
    stand_in.register_frontchannel_logout_uri(url)
    yield live_app
    if url in stand_in.frontchannel_logout_uris:
        stand_in.frontchannel_logout_uris.remove(url)


@pytest.fixture
def page(browser, frontchannel_app, fresh_stand_in):
    with browser_page(browser, frontchannel_app.url) as new_page:
        yield new_page


def sign_in_with_the_picker(page, app_url: str, user: dict) -> None:
    from playwright.sync_api import expect

    page.goto("/")
    page.get_by_role("main").get_by_role("link", name="Sign in").click()
    expect(page.get_by_role("heading", name="Pick an account")).to_be_visible()
    page.get_by_role("button", name=re.compile(re.escape(user["displayName"]))).click()
    page.wait_for_url(f"{app_url}/")
    expect(page.locator("header.site-header")).to_contain_text(f"Signed in as {user['displayName']}")


def browser_sid(page, stand_in) -> str:
    cookie = next(c["value"] for c in page.context.cookies(stand_in.front_url) if c["name"] == SESSION_COOKIE)
    return stand_in.store.browser_session(cookie)["sid"]


def assert_signed_out_of_the_app(page) -> None:
    from playwright.sync_api import expect

    page.goto("/")
    expect(page.get_by_role("main").get_by_role("link", name="Sign in")).to_be_visible()
    expect(page.locator("body")).not_to_contain_text("Signed in as")


@pytest.mark.browser
def test_chromium_sign_out_everywhere_at_the_stand_in_signs_the_user_out_of_the_app_through_the_iframe(
        page, frontchannel_app, stand_in):
    from playwright.sync_api import expect

    sign_in_with_the_picker(page, frontchannel_app.url, ADELE)
    page.goto("/call_downstream_api")
    expect(page.locator("section.profile")).to_contain_text(ADELE["jobTitle"])
    sid = browser_sid(page, stand_in)
    expected = f"{frontchannel_app.url}{FRONTCHANNEL}?sid={sid}"

    page.goto(f"{stand_in.front_url}/")
    expect(page.get_by_role("main")).to_contain_text(ADELE["displayName"])
    with page.expect_response(lambda r: r.url.startswith(f"{frontchannel_app.url}{FRONTCHANNEL}")) as called:
        page.get_by_role("button", name="Sign out everywhere").click()
    expect(page.get_by_role("heading", name=SIGNED_OUT_HEADING)).to_be_visible()
    assert called.value.url == expected and called.value.status == 200
    assert page.locator("iframe").get_attribute("src") == expected
    # The frame was allowed to load (frame-ancestors names the stand-in), not blocked.
    frame = wait_for(lambda: next((f for f in page.frames if f.url == expected), None), timeout=10,
                     what="the front-channel iframe")
    wait_for(lambda: "You are signed out of this app." in frame.content(), timeout=10,
             what="the front-channel page in the iframe")
    screenshot(page, "sign-out-everywhere-01-stand-in-signed-out.png")

    assert_signed_out_of_the_app(page)
    page.goto("/call_downstream_api")  # signed out for real: the API page asks for a sign-in
    expect(page.get_by_role("heading", name="Pick an account")).to_be_visible()
    screenshot(page, "sign-out-everywhere-02-app-signed-out.png")


@pytest.mark.browser
def test_chromium_the_app_s_sign_out_button_signs_out_at_the_stand_in_without_asking_which_account(
        page, frontchannel_app, stand_in):
    from playwright.sync_api import expect

    sign_in_with_the_picker(page, frontchannel_app.url, BOB)
    stand_in.reset_counters()
    page.locator("header.site-header").get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(SIGNED_OUT_HEADING)
    expect(page.get_by_role("heading", name=WHICH_ACCOUNT)).to_have_count(0)
    assert page.url.startswith(stand_in.front_url)
    [logout] = stand_in.logout_requests
    assert logout["logout_hint"] == login_hint(BOB["id"], stand_in.tenant_id)
    assert logout["post_logout_redirect_uri"] == f"{frontchannel_app.url}/"
    screenshot(page, "sign-out-everywhere-03-app-sign-out-no-question.png")

    # The stand-in's session ended too (a question would have left it signed in).
    page.goto(f"{stand_in.front_url}/")
    expect(page.get_by_role("main")).to_contain_text("Nobody is signed in")
    assert_signed_out_of_the_app(page)


def test_the_live_helpers_read_iframes_and_queries():
    page = '<iframe src="http://a/x?sid=1&amp;iss=2" hidden title="t"></iframe><iframe hidden src="http://b/"></iframe>'
    assert iframe_sources(page) == ["http://a/x?sid=1&iss=2", "http://b/"]
    assert live.query_of("http://a/x?sid=1&sid=2&q=") == {"sid": "1"}
