"""Server-side sessions (Flask-Session) tuned for sign-in.

What Flask-Session's stock interfaces lack, added here and nothing else:

* A sign-in that was started and never finished expires within the hour; a signed-in
  session lives for the configured lifetime. Anonymous visits to /login can then not
  crowd out signed-in users.
* The embedded file store never evicts a live session (cachelib's default threshold of
  500 files does); expired files are swept instead, at most every few minutes.
* A store that fails (Redis down, disk full) does not turn into a 500: the request gets
  an empty session, `g.session_store_error` is set, and the app answers "sessions
  unavailable" (503).
* A session deleted while a request had it in memory (a sign-out in another tab, the old
  id at sign-in) stays deleted: that request's changes are not written back.
* The cookie is Secure whenever the request came over https.
"""

from __future__ import annotations

import logging
import mmap
import os
import secrets
import struct
import threading
import time
from datetime import timedelta
from typing import NamedTuple

import redis
from cachelib.file import FileSystemCache
from flask import Flask, g, request
from flask_session._utils import total_seconds
from flask_session.cachelib import CacheLibSessionInterface
from flask_session.redis import RedisSessionInterface

logger = logging.getLogger(__name__)

SIGNED_IN_KEY = "_logged_in_user"  # where identity keeps the signed-in user's claims
SWEEP_INTERVAL_SECONDS = 300

STORE_ERRORS = (redis.RedisError, OSError, EOFError)


class _SessionGone(Exception):
    """The stored record of a session loaded by this request was deleted before its write."""


class _SignInAwareSessions:
    """Mixin for a Flask-Session interface (must come first in the bases)."""

    pending_lifetime = timedelta(hours=1)
    # Called with the response when the store refused a write, to turn it into an error page.
    on_write_failure = None

    def lifetime_for(self, app: Flask, session) -> timedelta:
        if SIGNED_IN_KEY in session:
            return app.permanent_session_lifetime
        return min(self.pending_lifetime, app.permanent_session_lifetime)

    def _loaded_from_store(self, session) -> bool:
        # Flask-Session keeps the cookie's id only when the store had a record for it; a
        # new session, and one given a new id by regenerate(), has an id the cookie lacks.
        return session.sid == request.cookies.get(self.get_cookie_name(self.app))

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"] or request.is_secure)

    def open_session(self, app, request):
        try:
            return super().open_session(app, request)
        except Exception as exc:  # a store that can't be read, whatever the reason
            if isinstance(exc, STORE_ERRORS):
                logger.error("Session store unavailable while reading: %s", exc)
            else:  # e.g. a stored value that no longer decodes: worth its traceback
                logger.exception("Session store unreadable")
            g.session_store_error = exc
            return self.session_class(sid=self._generate_sid(self.sid_length), permanent=self.permanent)

    def save_session(self, app, session, response):
        if g.get("session_store_error") is not None:
            return  # nothing was read, so nothing may be written over what is stored
        if not session.modified and not self.should_set_storage(app, session):
            # The steady state of a page view: nothing to store and no cookie to send.
            # Performance (make bench): Flask-Session would still look up the cookie's
            # settings and parse the Vary header into a set to add "Cookie" (~0.01 ms).
            if session.accessed:
                if "Vary" in response.headers:
                    response.vary.add("Cookie")
                else:
                    response.headers["Vary"] = "Cookie"
            return
        try:
            # Emptied (a failed sign-in, a sign-out): the cookie deletion goes out only if
            # this request deleted the stored record. If another one already did (the sign-in
            # that won a race against this one moved the browser to a new id), the browser's
            # cookie may name that newer session now.
            if (session.modified and not session and self._loaded_from_store(session)
                    and not self._remove_if_present(self._get_store_id(session.sid))):
                raise _SessionGone
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

    def _remove_if_present(self, store_id: str) -> bool:
        """Delete a session's record; False if it was already gone."""
        raise NotImplementedError

    def regenerate(self, session) -> None:
        # Flask-Session's regenerate() skips empty sessions; a new id is wanted regardless.
        self._delete_session(self._get_store_id(session.sid))
        session.sid = self._generate_sid(self.sid_length)
        session.modified = True

    def ping(self) -> None:
        """Raise if the store cannot be reached."""
        raise NotImplementedError


class _Remembered(NamedTuple):
    filename: str
    slot: int  # its place in the table of write stamps
    stamp: int  # the slot's stamp when the bytes were read
    content: bytes
    trusted_until: float  # monotonic time after which the file is read again anyway


class _RecentlyReadFileSystemCache(FileSystemCache):
    """cachelib's file cache that keeps the bytes of recently read files in memory.

    Performance (make bench): reading a session file on every page view cost ~0.03 ms of
    CPU (about 4 % of a page view), for a file that changes only at sign-in, at a token
    refresh and at sign-out. Its bytes are remembered and reused while nothing wrote it:

    * Every write and delete here puts a random stamp in the file's slot of a small table
      that every worker maps into memory (`write-stamps-<slots>`, in the session
      directory). A read whose slot still holds the stamp seen when the bytes were read
      needs no system call: even a stat costs a gthread worker ~0.03 ms per page view (it
      lets another thread take the GIL, then waits to get it back). Stamps go in after the
      file changed and are read before it is read, so a remembered copy is never older
      than the last stamp; a changed stamp always means reading the file again.
    * A remembered file is read again at least once a second anyway, so a change that
      left no stamp (a file edited or deleted by hand, a worker whose table is another
      file) is seen within that second.
    * Without the table (a file system that cannot map it) nothing is remembered: every
      read reads the file, as cachelib does.

    The value is still unpickled on every read: each request gets its own objects. The
    table is allocated on disk up front: writing into a sparse file's hole on a full disk
    would kill the process (SIGBUS) rather than fail.
    """

    max_remembered = 1024  # files per process (~6 KB each for a signed-in user)
    stamp_slots = 4096  # sessions sharing a slot only cost each other a re-read
    reread_seconds = 1.0

    def __init__(self, *args, **kwargs):
        # Before cachelib's __init__, which may already write (its file counter).
        self._remembered: dict[str, _Remembered] = {}
        self._stamps: mmap.mmap | None = None
        super().__init__(*args, **kwargs)
        self._stamps = self._map_stamps()

    def _map_stamps(self) -> mmap.mmap | None:
        # The transaction suffix keeps cachelib's sweeps and clear() away from the file;
        # the slot count in the name keeps workers of another version off this table.
        path = os.path.join(self._path, f"write-stamps-{self.stamp_slots}{self._fs_transaction_suffix}")
        size = self.stamp_slots * 8
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, self._mode or 0o600)
            try:
                os.posix_fallocate(fd, 0, size)  # real blocks, not a hole (see the docstring)
                return mmap.mmap(fd, size)
            finally:
                os.close(fd)
        except (OSError, ValueError) as exc:
            logger.warning("Session files are read on every request: no table of write stamps (%s)", exc)
            return None

    def _slot(self, filename: str) -> int:
        return int(filename[-8:], 16) % self.stamp_slots  # the file name is a hex digest

    def _stamp(self, slot: int) -> int:
        return struct.unpack_from("Q", self._stamps, slot * 8)[0]

    def _mark_written(self, filename: str) -> None:
        if self._stamps is not None:
            struct.pack_into("Q", self._stamps, self._slot(filename) * 8, secrets.randbits(64))

    def get(self, key: str):
        hit = self._remembered.get(key)
        if hit is None or time.monotonic() >= hit.trusted_until or self._stamp(hit.slot) != hit.stamp:
            hit = self._read(key, hit)
            if hit is None:
                return None
        content = hit.content
        if len(content) <= 4:  # no value (cachelib writes only the header when pickling fails)
            return None
        # cachelib's file format: a 4-byte expiry time (0: never), then the pickled value.
        expires = struct.unpack_from("I", content)[0]
        if expires != 0 and expires < time.time():
            return None
        try:
            return self.serializer.loads(content[4:])
        except Exception:  # noqa: BLE001 (a damaged file: as cachelib does, no session rather than an error)
            logger.warning("Unreadable session file %s: treated as no session", hit.filename)
            return None

    def _read(self, key: str, hit: _Remembered | None) -> _Remembered | None:
        filename = self._get_filename(key) if hit is None else hit.filename
        slot = self._slot(filename) if hit is None else hit.slot
        stamp = self._stamp(slot) if self._stamps is not None else 0  # before the file, see above
        try:
            with open(filename, "rb") as file:
                content = file.read()
        except FileNotFoundError:
            self._remembered.pop(key, None)
            return None
        hit = _Remembered(filename, slot, stamp, content, time.monotonic() + self.reread_seconds)
        if self._stamps is not None:
            if len(self._remembered) >= self.max_remembered:
                self._remembered.clear()  # rarely: a worker serving over a thousand users
            self._remembered[key] = hit
        return hit

    def set(self, key: str, value, timeout=None, mgmt_element: bool = False) -> bool:
        filename = self._get_filename(key)
        self._remembered.pop(key, None)
        try:
            return super().set(key, value, timeout=timeout, mgmt_element=mgmt_element)
        finally:
            self._mark_written(filename)

    def delete(self, key: str, mgmt_element: bool = False) -> bool:
        self._remembered.pop(key, None)
        try:
            return super().delete(key, mgmt_element=mgmt_element)
        finally:
            self._mark_written(self._get_filename(key))

    def delete_if_present(self, key: str) -> bool:
        """delete(), telling whether there was a file to delete (cachelib's says True either way)."""
        filename = self._get_filename(key)
        self._remembered.pop(key, None)
        try:
            os.remove(filename)
        except FileNotFoundError:
            return False
        finally:
            self._mark_written(filename)
        return True

    def clear(self) -> bool:
        try:
            return super().clear()
        finally:
            self._remembered.clear()
            if self._stamps is not None:
                self._stamps[:] = os.urandom(len(self._stamps))  # every slot: every worker re-reads


class FileSystemSessions(_SignInAwareSessions, CacheLibSessionInterface):
    def __init__(self, app: Flask, directory: str, **kwargs):
        # threshold=0: never evict by count. Expired files are swept by _sweep_if_due().
        cache = _RecentlyReadFileSystemCache(directory, threshold=0, mode=0o600)
        super().__init__(app, client=cache, **kwargs)
        self.app = app
        self._last_sweep = time.monotonic()
        self._sweep_lock = threading.Lock()

    def _upsert_session(self, session_lifetime, session, store_id):
        lifetime = total_seconds(self.lifetime_for(self.app, session))
        if self._loaded_from_store(session):
            # Written back only while its file is there (see save_session). A sign-out in the
            # moment between this check and set()'s rename (well under a millisecond) is still
            # undone: a file system has no "replace only if present", as Redis has (SET XX).
            try:
                os.stat(self.cache._get_filename(store_id))
            except FileNotFoundError:
                raise _SessionGone from None  # any other error is the store's: a 503
        # cachelib reports a failed write (disk full, directory gone) only by returning False.
        if not self.cache.set(store_id, dict(session), timeout=lifetime):
            raise OSError("the session directory refused a write")
        self._sweep_if_due()

    def _remove_if_present(self, store_id: str) -> bool:
        return self.cache.delete_if_present(store_id)

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

    def _upsert_session(self, session_lifetime, session, store_id):
        # The TTL follows the session's state, not one lifetime for all.
        lifetime = total_seconds(self.lifetime_for(self.app, session))
        value = self.serializer.encode(session)
        if self._loaded_from_store(session):
            # Written back only while its key exists (see save_session). SET XX checks and
            # writes in one step: no deletion can come in between.
            if not self.client.set(store_id, value, ex=lifetime, xx=True):
                raise _SessionGone
        else:
            self.client.set(store_id, value, ex=lifetime)

    def _remove_if_present(self, store_id: str) -> bool:
        return bool(self.client.delete(store_id))

    def ping(self) -> None:
        self.client.ping()


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
    else:
        interface = FileSystemSessions(app, config["SESSION_FILE_DIR"], **common)
    interface.pending_lifetime = timedelta(seconds=config["PENDING_SIGN_IN_LIFETIME_SECONDS"])
    interface.on_write_failure = on_write_failure
    app.session_interface = interface
    return interface
