"""The index `sid -> session store ids` that front-channel logout looks sessions up by.

Kept in the session store itself, next to the sessions: a Redis set per sid, or a cachelib
entry per sid in the session directory. `sessions.py` writes it whenever it writes a
signed-in session (so it expires with the session) and removes the entry at sign-out.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time

# One provider sign-in session (sid) rarely stands behind more than a few sessions of this
# app (browsers, tabs signed in again). A cap bounds the work a front-channel logout or a
# sign-in does for one sid, whatever anybody does to inflate it; the oldest go first.
MAX_SESSIONS_PER_SID = 64


class SessionStoreRefused(OSError):
    """The session directory refused a write (disk full, directory gone): a 503, not a 500."""


class SidIndex:
    """The index `sid -> session store ids`, kept in the session store itself."""

    def add(self, sid: str, store_id: str, lifetime: int) -> None:
        raise NotImplementedError

    def members(self, sid: str) -> list[str]:
        raise NotImplementedError

    def remove(self, sid: str, *store_ids: str) -> None:
        raise NotImplementedError

    @staticmethod
    def key(prefix: str, sid: str) -> str:
        # Hashed: a sid is whatever the provider chose, and a store key must stay well-formed.
        return f"{prefix}sid:{hashlib.sha256(sid.encode()).hexdigest()}"


class RedisSidIndex(SidIndex):
    """A Redis sorted set per sid: each session id scored with its expiry time, the key
    expiring with the longest-lived session still in it. Each change is one Lua script, so
    a sign-in and a sign-out of the same sid at the same moment cannot cut the key's life
    short."""

    # KEYS[1]: the set; ARGV: now, the cap, then the session id and its expiry (unix time;
    # 0 to remove it), pair after pair.
    _UPDATE = """
        for i = 3, #ARGV, 2 do
            if tonumber(ARGV[i + 1]) > 0 then
                redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
            else
                redis.call('ZREM', KEYS[1], ARGV[i])
            end
        end
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
        redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[2]) - 1)
        local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
        if #last == 0 then
            redis.call('DEL', KEYS[1])
        else
            redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(last[2])))
        end
    """

    def __init__(self, client, prefix: str):
        self.client, self.prefix = client, prefix
        self._update = client.register_script(self._UPDATE)

    def add(self, sid: str, store_id: str, lifetime: int) -> None:
        now = int(time.time())
        self._update(keys=[self.key(self.prefix, sid)], args=[now, MAX_SESSIONS_PER_SID, store_id, now + lifetime])

    def members(self, sid: str) -> list[str]:
        live = self.client.zrangebyscore(self.key(self.prefix, sid), int(time.time()), "+inf")
        return [member.decode() for member in live]

    def remove(self, sid: str, *store_ids: str) -> None:
        if store_ids:
            pairs = [value for store_id in store_ids for value in (store_id, 0)]
            self._update(keys=[self.key(self.prefix, sid)], args=[int(time.time()), MAX_SESSIONS_PER_SID, *pairs])


class FileSidIndex(SidIndex):
    """One cachelib entry per sid: {session store id: its expiry}, expiring with the
    longest-lived session in it. Every change is a read-modify-write under an exclusive
    lock on the session directory (flock), so workers changing the same sid at once lose
    nothing."""

    def __init__(self, cache, prefix: str, directory: str):
        self.cache, self.prefix, self.directory = cache, prefix, directory

    def add(self, sid: str, store_id: str, lifetime: int) -> None:
        with self._locked():
            members = {**self._live(sid), store_id: int(time.time()) + lifetime}
            self._write(sid, dict(sorted(members.items(), key=lambda item: item[1])[-MAX_SESSIONS_PER_SID:]))

    def members(self, sid: str) -> list[str]:
        return list(self._live(sid))

    def remove(self, sid: str, *store_ids: str) -> None:
        if not store_ids:
            return
        with self._locked():
            members = self._live(sid)
            for store_id in store_ids:
                members.pop(store_id, None)
            self._write(sid, members)

    @contextlib.contextmanager
    def _locked(self):
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # closing releases the lock

    def _live(self, sid: str) -> dict[str, int]:
        stored = self.cache.get(self.key(self.prefix, sid))
        now = time.time()
        return {k: v for k, v in stored.items() if v > now} if isinstance(stored, dict) else {}

    def _write(self, sid: str, members: dict[str, int]) -> None:
        key = self.key(self.prefix, sid)
        if not members:
            self.cache.delete(key)
        elif not self.cache.set(key, members, timeout=max(1, max(members.values()) - int(time.time()))):
            raise SessionStoreRefused("the session directory refused a write")
