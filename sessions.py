"""Server-side sessions (Flask-Session) tuned for sign-in.

What Flask-Session's stock interfaces lack, added here and nothing else:

* Only signed-in sessions live in the store. Everything a visitor has before signing in
  (the pending sign-in: state, nonce, PKCE verifier, where to go next) travels in a
  short-lived cookie of its own, sealed (encrypted and authenticated) with a key derived
  from SECRET_KEY. Anonymous visits to /login then cost the store nothing: no number of
  them can fill it or crowd out signed-in users.
* Every stored session is sealed too (`session_encryption.py`): no token is readable in
  a Redis value or a session file. A record that no key opens is no session.
* The embedded file store never evicts a live session (cachelib's default threshold of
  500 files does); expired files are swept instead, at most every few minutes.
* A store that fails (Redis down, disk full) does not turn into a 500: the request gets
  an empty session, `g.session_store_error` is set, and the app answers "sessions
  unavailable" (503).
* A session deleted while a request had it in memory (a sign-out in another tab, the old
  id at sign-in) stays deleted: that request's changes are not written back.
* Cookies: Secure whenever the request came over https, and then named with the
  `__Host-` prefix, which a browser lets no other origin (a sibling subdomain, plain
  http) set. A request that carries a cookie name twice (a cookie "tossed" by another
  origin next to ours) gets neither: it is a visitor with no session.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import pickle
import re
import threading
import time
from datetime import timedelta

import msgspec
import redis
from cachelib.file import FileSystemCache
from flask import Flask, g, request
from flask_session.cachelib import CacheLibSessionInterface
from flask_session.redis import RedisSessionInterface

from session_encryption import SessionCipher, Unreadable
from sid_index import FileSidIndex, RedisSidIndex, SessionStoreRefused, SidIndex

logger = logging.getLogger(__name__)

SIGNED_IN_KEY = "_logged_in_user"  # where identity keeps the signed-in user's claims
SIGNED_IN_AT_KEY = "signed_in_at"  # when this browser last completed a sign-in (unix time)
SWEEP_INTERVAL_SECONDS = 300
PENDING_COOKIE = "signin_pending"
HOST_PREFIX = "__Host-"  # over https: Secure, Path=/, no Domain, set by this origin only
ISSUED_AT = "_issued_at"  # in the pending cookie: when it was sealed

STORE_ERRORS = (redis.RedisError, OSError, EOFError)
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32), what sid_length=32 makes


class _SessionGone(Exception):
    """The stored record of a session loaded by this request was deleted before its write."""


def _only_cookie(name: str) -> str | None:
    """The cookie's value, or None when it is missing or sent more than once."""
    values = request.cookies.getlist(name)
    return values[0] if len(values) == 1 else None


class _SignInAwareSessions:
    """Mixin for a Flask-Session interface (must come first in the bases)."""

    pending_lifetime = timedelta(hours=1)
    # Called with the response when the store refused a write, to turn it into an error page.
    on_write_failure = None
    cipher: SessionCipher
    sid_index: SidIndex

    def lifetime_for(self, app: Flask, session) -> timedelta:
        if SIGNED_IN_KEY in session:
            return app.permanent_session_lifetime
        return min(self.pending_lifetime, app.permanent_session_lifetime)

    # --- cookies ------------------------------------------------------------------------

    def get_cookie_name(self, app: Flask) -> str:
        name = app.config["SESSION_COOKIE_NAME"]
        return HOST_PREFIX + name if request.is_secure else name

    def pending_cookie_name(self) -> str:
        return HOST_PREFIX + PENDING_COOKIE if request.is_secure else PENDING_COOKIE

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or request.is_secure)

    def _loaded_from_store(self, session) -> bool:
        # A session opened from the store keeps the cookie's id; a new session, and one
        # given a new id by regenerate(), has an id the cookie lacks.
        return session.sid == _only_cookie(self.get_cookie_name(self.app))

    # --- open ---------------------------------------------------------------------------

    def open_session(self, app, request):
        try:
            sid = _only_cookie(self.get_cookie_name(app))
            if sid and SESSION_ID.fullmatch(sid):  # ids we made; never, say, a sid index key
                data = self._retrieve_session_data(self._get_store_id(sid))
                if data is not None:
                    session = self.session_class(data, sid=sid)
                    session.idp_sid = _idp_sid(data)  # to leave the sid index at sign-out
                    return session
        except STORE_ERRORS as exc:
            logger.error("Session store unavailable while reading: %s", exc)
            g.session_store_error = exc
        # No stored session: a visitor, perhaps with a sign-in in progress.
        return self.session_class(self._read_pending_cookie(), sid=self._generate_sid(self.sid_length),
                                  permanent=self.permanent)

    def _open_sealed(self, sealed, bound_to: str) -> dict | None:
        try:
            plaintext, _older_key = self.cipher.open(sealed, bound_to)
            data = msgspec.msgpack.decode(plaintext)
        except (Unreadable, msgspec.DecodeError):
            # Tampered, or sealed with a key that was dropped from SECRET_KEY_FALLBACKS.
            logger.warning("A session (stored, or a pending sign-in's cookie) that no key opens was treated as none")
            return None
        return data if isinstance(data, dict) else None

    def _read_pending_cookie(self) -> dict:
        raw = _only_cookie(self.pending_cookie_name())
        if not raw:
            return {}
        try:
            sealed = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        except (ValueError, binascii.Error):
            return {}
        data = self._open_sealed(sealed, PENDING_COOKIE) or {}
        issued_at = data.pop(ISSUED_AT, 0)
        if not isinstance(issued_at, int) or issued_at + self.pending_lifetime.total_seconds() < time.time():
            return {}
        return data

    # --- save ---------------------------------------------------------------------------

    def save_session(self, app, session, response):
        if g.get("session_store_error") is not None:
            return  # nothing was read, so nothing may be written over what is stored
        if SIGNED_IN_KEY not in session and not self._loaded_from_store(session):
            self._save_pending_cookie(app, session, response)
            return
        if session.modified and session and _only_cookie(self.pending_cookie_name()):
            self._delete_pending_cookie(app, response)  # signed in now: the store has it all
        try:
            # Emptied (a sign-out): the cookie deletion goes out only if this request
            # deleted the stored record. If another one already did (the sign-in that won
            # a race against this one moved the browser to a new id), the browser's cookie
            # may name that newer session now.
            if session.modified and not session and self._loaded_from_store(session):
                if not self._remove_if_present(self._get_store_id(session.sid)):
                    raise _SessionGone
                if getattr(session, "idp_sid", None):
                    self.sid_index.remove(session.idp_sid, self._get_store_id(session.sid))
            super().save_session(app, session, response)
        except _SessionGone:
            # Another request deleted this session after this one read it: a sign-out, or a
            # sign-in that moved the browser to a new id. Writing it back would sign the old
            # session in again, so nothing is stored and no cookie is sent. Not even one that
            # deletes it: the browser already got that other response's cookie (none after a
            # sign-out, the new id after a sign-in), and a deletion arriving after it would
            # undo that sign-in.
            logger.info("A session deleted by another request was not written back")
        except STORE_ERRORS as exc:
            # The page was rendered as if the change was kept; it was not. Say so.
            logger.error("Session store unavailable while writing: %s", exc)
            g.session_store_error = exc
            if self.on_write_failure is not None:
                self.on_write_failure(response)

    def _save_pending_cookie(self, app, session, response) -> None:
        if session.accessed:
            response.vary.add("Cookie")
        if not session.modified:
            return
        if not session:
            if self.pending_cookie_name() in request.cookies:
                self._delete_pending_cookie(app, response)
            return
        plaintext = msgspec.msgpack.encode({**session, ISSUED_AT: int(time.time())})
        sealed = base64.urlsafe_b64encode(self.cipher.seal(plaintext, PENDING_COOKIE)).rstrip(b"=").decode()
        response.set_cookie(
            self.pending_cookie_name(), sealed,
            max_age=int(self.pending_lifetime.total_seconds()), path="/", httponly=True,
            secure=self.get_cookie_secure(app), samesite=app.config["SESSION_COOKIE_SAMESITE"])

    def _delete_pending_cookie(self, app, response) -> None:
        response.delete_cookie(self.pending_cookie_name(), path="/", httponly=True,
                               secure=self.get_cookie_secure(app),
                               samesite=app.config["SESSION_COOKIE_SAMESITE"])

    def _index_by_idp_sid(self, session, store_id: str, lifetime: int) -> None:
        """A signed-in session is findable by the provider's sid (front-channel logout),
        for as long as it lives."""
        sid = _idp_sid(session)
        if sid:
            self.sid_index.add(sid, store_id, lifetime)

    def end_sessions_of(self, sid: str, iss: str | None, on_session=None) -> int:
        """Delete every stored session whose id token carried `sid` (and `iss`, if given).
        `on_session(data)` sees each before it goes. Returns how many ended."""
        self.check_usable()
        ended, leaving = 0, []
        for store_id in self.sid_index.members(sid):
            data = self._retrieve_session_data(store_id)
            claims = (data or {}).get(SIGNED_IN_KEY) or {}
            if data is None:
                # Gone, or a record no key of this instance opens (sealed with a key it does
                # not have yet, mid-rotation): no session either way, and it must not live on.
                self._remove_if_present(store_id)
                leaving.append(store_id)
                continue
            if claims.get("sid") != sid:  # a stale entry: that id holds another sign-in now
                leaving.append(store_id)
                continue
            if iss is not None and claims.get("iss") != iss:
                continue  # another provider's session that happens to share the sid
            if on_session is not None:
                on_session(data)
            self._remove_if_present(store_id)
            leaving.append(store_id)
            ended += 1
        self.sid_index.remove(sid, *leaving)
        return ended

    def _sealed_session(self, session, store_id: str) -> bytes:
        return self.cipher.seal(self.serializer.encode(session), store_id)

    def _remove_if_present(self, store_id: str) -> bool:
        """Delete a session's record; False if it was already gone."""
        raise NotImplementedError

    def check_usable(self) -> None:
        """Raise if the store is plainly unusable, where reads would not say so."""

    def regenerate(self, session) -> None:
        # Flask-Session's regenerate() skips empty sessions; a new id is wanted regardless.
        if getattr(session, "idp_sid", None):  # signed in before: that session leaves the index
            self.sid_index.remove(session.idp_sid, self._get_store_id(session.sid))
            session.idp_sid = None
        self._delete_session(self._get_store_id(session.sid))
        session.sid = self._generate_sid(self.sid_length)
        session.modified = True

    def ping(self) -> None:
        """Raise if the store cannot be reached."""
        raise NotImplementedError


class _FileSystemCacheTellingDeletes(FileSystemCache):
    def delete_if_present(self, key: str) -> bool:
        """delete(), telling whether there was a file to delete (cachelib's says True either way)."""
        try:
            os.remove(self._get_filename(key))
        except FileNotFoundError:
            return False
        return True


class FileSystemSessions(_SignInAwareSessions, CacheLibSessionInterface):
    def __init__(self, app: Flask, directory: str, **kwargs):
        # threshold=0: never evict by count. Expired files are swept by _sweep_if_due().
        cache = _FileSystemCacheTellingDeletes(directory, threshold=0, mode=0o600)
        super().__init__(app, client=cache, **kwargs)
        self.app = app  # CacheLibSessionInterface hands its base no app
        self.directory = directory
        self._last_sweep = time.monotonic()
        self._sweep_lock = threading.Lock()

    def _retrieve_session_data(self, store_id: str) -> dict | None:
        try:
            sealed = self.cache.get(store_id)
        except (pickle.UnpicklingError, ValueError, EOFError):  # a damaged file: no session
            logger.warning("A damaged session file was treated as no session")
            return None
        return None if sealed is None else self._open_sealed(sealed, store_id)

    def _upsert_session(self, session_lifetime, session, store_id):
        lifetime = int(self.lifetime_for(self.app, session).total_seconds())
        # Written back only while its file is there (see save_session). A sign-out in the
        # moment between this check and set()'s rename (well under a millisecond) is still
        # undone: a file system has no "replace only if present", as Redis has (SET XX).
        if self._loaded_from_store(session) and not self.cache.has(store_id):
            raise _SessionGone
        # cachelib reports a failed write (disk full, directory gone) only by returning False.
        if not self.cache.set(store_id, self._sealed_session(session, store_id), timeout=lifetime):
            raise SessionStoreRefused("the session directory refused a write")
        self._index_by_idp_sid(session, store_id, lifetime)
        self._sweep_if_due()

    def _remove_if_present(self, store_id: str) -> bool:
        return self.cache.delete_if_present(store_id)

    def check_usable(self) -> None:
        # cachelib reads swallow OS errors (a missing directory reads as "no session").
        if not os.path.isdir(self.directory):
            raise NotADirectoryError(f"the session directory {self.directory} is gone")

    def _sweep_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < SWEEP_INTERVAL_SECONDS or not self._sweep_lock.acquire(blocking=False):
            return
        try:
            self._last_sweep = now
            self.cache._remove_expired(time.time())
        finally:
            self._sweep_lock.release()

    def ping(self) -> None:
        # A write and a read back: cachelib reports a failed write only by returning False.
        probe = f"{self.key_prefix}healthz-{os.getpid()}"
        if not self.cache.set(probe, 1, timeout=60) or self.cache.get(probe) != 1:
            raise OSError("the session directory cannot be written")
        self.cache.delete(probe)


class RedisSessions(_SignInAwareSessions, RedisSessionInterface):
    def __init__(self, app: Flask, url: str, **kwargs):
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30)
        super().__init__(app, client=client, **kwargs)
        self.app = app

    def _retrieve_session_data(self, store_id: str) -> dict | None:
        sealed = self.client.get(store_id)
        return None if sealed is None else self._open_sealed(sealed, store_id)

    def _upsert_session(self, session_lifetime, session, store_id):
        # The TTL follows the session's state, not one lifetime for all.
        lifetime = int(self.lifetime_for(self.app, session).total_seconds())
        value = self._sealed_session(session, store_id)
        if self._loaded_from_store(session):
            # Written back only while its key exists (see save_session). SET XX checks and
            # writes in one step: no deletion can come in between.
            if not self.client.set(store_id, value, ex=lifetime, xx=True):
                raise _SessionGone
        else:
            self.client.set(store_id, value, ex=lifetime)
        self._index_by_idp_sid(session, store_id, lifetime)

    def _remove_if_present(self, store_id: str) -> bool:
        return bool(self.client.delete(store_id))

    def ping(self) -> None:
        self.client.ping()


def _idp_sid(session_data) -> str | None:
    """The identity provider's session id (`sid` claim) of a signed-in session, if any."""
    sid = (session_data.get(SIGNED_IN_KEY) or {}).get("sid")
    return sid if isinstance(sid, str) and sid else None


def init_sessions(app: Flask, on_write_failure=None) -> _SignInAwareSessions:
    config = app.config
    common = {
        "key_prefix": config["SESSION_KEY_PREFIX"],
        "permanent": True,
        "sid_length": 32,
        "serialization_format": "msgpack",
    }
    if config["SESSION_TYPE"] == "redis":
        interface = RedisSessions(app, config["REDIS_URL"], **common)
        interface.sid_index = RedisSidIndex(interface.client, config["SESSION_KEY_PREFIX"])
    else:
        interface = FileSystemSessions(app, config["SESSION_FILE_DIR"], **common)
        interface.sid_index = FileSidIndex(interface.cache, config["SESSION_KEY_PREFIX"], config["SESSION_FILE_DIR"])
    interface.pending_lifetime = timedelta(seconds=config["PENDING_SIGN_IN_LIFETIME_SECONDS"])
    interface.on_write_failure = on_write_failure
    interface.cipher = SessionCipher(config["SECRET_KEY"], config.get("SECRET_KEY_FALLBACKS") or ())
    app.session_interface = interface
    return interface
