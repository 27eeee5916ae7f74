"""The index `sid -> session store ids` that front-channel logout looks sessions up by.

Kept in the session store itself, next to the sessions: a Redis set per sid, or a cachelib
entry per sid in the session directory. `sessions.py` writes it whenever it writes a
signed-in session (so it expires with the session) and removes the entry at sign-out.
"""

from __future__ import annotations

import hashlib


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
    """A Redis set per sid, expiring with the longest-lived session in it."""

    def __init__(self, client, prefix: str):
        self.client, self.prefix = client, prefix

    def add(self, sid: str, store_id: str, lifetime: int) -> None:
        key = self.key(self.prefix, sid)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.sadd(key, store_id)
            # NX then GT: a new set gets the lifetime; an existing one is only ever extended.
            pipe.expire(key, lifetime, nx=True)
            pipe.expire(key, lifetime, gt=True)
            pipe.execute()

    def members(self, sid: str) -> list[str]:
        return [member.decode() for member in self.client.smembers(self.key(self.prefix, sid))]

    def remove(self, sid: str, store_id: str) -> None:
        self.client.srem(self.key(self.prefix, sid), store_id)


class FileSidIndex(SidIndex):
    """One cachelib entry per sid: the list of session store ids, expiring with the last
    session written. Two sign-ins of the same provider session written in the same
    instant by two workers may lose one entry (a file system has no atomic "add to set");
    that session then ends at its own expiry, not at a front-channel logout."""

    def __init__(self, cache, prefix: str):
        self.cache, self.prefix = cache, prefix

    def add(self, sid: str, store_id: str, lifetime: int) -> None:
        key = self.key(self.prefix, sid)
        members = self._live(self.cache.get(key) or [])
        if store_id not in members:
            members.append(store_id)
        if not self.cache.set(key, members, timeout=lifetime):
            raise OSError("the session directory refused a write")

    def members(self, sid: str) -> list[str]:
        return list(self.cache.get(self.key(self.prefix, sid)) or [])

    def remove(self, sid: str, store_id: str) -> None:
        key = self.key(self.prefix, sid)
        members = [m for m in self.cache.get(key) or [] if m != store_id]
        if members:
            self.cache.set(key, members)
        else:
            self.cache.delete(key)

    def _live(self, members: list[str]) -> list[str]:
        return [m for m in members if self.cache.has(m)]  # sessions that expired leave the list
