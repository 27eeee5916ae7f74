"""The index `sid -> session store ids` that front-channel logout looks sessions up by.

Kept in the session store itself, next to the sessions: a Redis set per sid, or a cachelib
entry per sid in the session directory. `sessions.py` writes it whenever it writes a
signed-in session (so it expires with the session) and removes the entry at sign-out.
"""

from __future__ import annotations

import hashlib
import time


class SidIndex:
    """The index `sid -> session store ids`, kept in the session store itself."""

    def add(self, sid: str, store_id: str, lifetime: int) -> None:
        raise NotImplementedError

    def members(self, sid: str) -> list[str]:
        raise NotImplementedError

    def remove(self, sid: str, store_id: str) -> None:
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

    # KEYS[1]: the set; ARGV: session id, its expiry (unix time; 0 to remove it), now.
    _UPDATE = """
        if tonumber(ARGV[2]) > 0 then
            redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
        else
            redis.call('ZREM', KEYS[1], ARGV[1])
        end
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
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
        self._update(keys=[self.key(self.prefix, sid)], args=[store_id, now + lifetime, now])

    def members(self, sid: str) -> list[str]:
        live = self.client.zrangebyscore(self.key(self.prefix, sid), int(time.time()), "+inf")
        return [member.decode() for member in live]

    def remove(self, sid: str, store_id: str) -> None:
        self._update(keys=[self.key(self.prefix, sid)], args=[store_id, 0, int(time.time())])


class FileSidIndex(SidIndex):
    """One cachelib entry per sid: {session store id: its expiry}, expiring with the
    longest-lived session in it. Two sign-ins of the same provider session written in the
    same instant by two workers may lose one entry (a file system has no atomic "add to
    set"); that session then ends at its own expiry, not at a front-channel logout."""

    def __init__(self, cache, prefix: str):
        self.cache, self.prefix = cache, prefix

    def add(self, sid: str, store_id: str, lifetime: int) -> None:
        self._write(sid, {**self._live(sid), store_id: int(time.time()) + lifetime})

    def members(self, sid: str) -> list[str]:
        return list(self._live(sid))

    def remove(self, sid: str, store_id: str) -> None:
        members = self._live(sid)
        members.pop(store_id, None)
        self._write(sid, members)

    def _live(self, sid: str) -> dict[str, int]:
        stored = self.cache.get(self.key(self.prefix, sid))
        now = time.time()
        return {k: v for k, v in stored.items() if v > now} if isinstance(stored, dict) else {}

    def _write(self, sid: str, members: dict[str, int]) -> None:
        key = self.key(self.prefix, sid)
        if not members:
            self.cache.delete(key)
        elif not self.cache.set(key, members, timeout=max(1, max(members.values()) - int(time.time()))):
            raise OSError("the session directory refused a write")
