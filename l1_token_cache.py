"""An in-memory L1 cache of access-token answers, in front of the session (the L2).

The pattern Microsoft.Identity.Web uses for its token caches: the distributed store holds
each user's token cache, and each process keeps the answers it recently read from it.

Why (make bench): on every page view, identity parses the session's whole token cache
and MSAL searches it (~0.06 ms of CPU, ~12 % of what a page view costs us beyond the
limit) to find the access token it found last time.

What is remembered, and for how long: MSAL's answer for one session's token cache and one
set of scopes, until MSAL itself would stop using that access token (`MSAL_EXPIRY_MARGIN`
seconds before it expires, or at its `refresh_on`). Anything that changes the token cache
(a refresh, a sign-in, a sign-out) changes the key.

Why no user can be served another's token: the key is a BLAKE2b digest of the session's
whole serialized token cache, which holds that session's own refresh token. Two sessions
share a key only if they hold byte-identical tokens, i.e. the same credentials.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict

# MSAL stops using a cached access token this many seconds before it expires.
MSAL_EXPIRY_MARGIN = 300
# Token caches remembered per process; each entry is one session's answers (~1 KB).
L1_SIZE = 1024


def _digest(serialized_token_cache: str) -> bytes:
    return hashlib.blake2b(serialized_token_cache.encode(), digest_size=32).digest()


class L1TokenCache:
    def __init__(self, size: int = L1_SIZE):
        self.size = size
        # digest of a token cache -> {scopes: (use_until, answer, expires_on)}
        self._entries: OrderedDict[bytes, dict] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, serialized_token_cache: str, scopes) -> dict | None:
        """The remembered answer for this token cache and scopes, or None."""
        hit = self._entries.get(_digest(serialized_token_cache), {}).get(tuple(scopes))
        if hit is None:
            return None
        use_until, answer, expires_on = hit
        now = time.time()
        if now >= use_until:
            return None
        return dict(answer, expires_in=int(expires_on - now))

    def put(self, serialized_token_cache: str, scopes, answer: dict) -> None:
        """Remember a successful answer (one with an access token) that MSAL would give again."""
        if "access_token" not in answer:
            return
        now = time.time()
        expires_on = now + int(answer.get("expires_in") or 0)
        use_until = expires_on - MSAL_EXPIRY_MARGIN
        if answer.get("refresh_on"):
            use_until = min(use_until, int(answer["refresh_on"]))
        if use_until <= now:
            return
        # Only what the app uses from a cached answer: never the refresh token or id token.
        kept = {key: answer[key] for key in ("access_token", "token_type", "scope") if key in answer}
        kept["token_source"] = "cache"  # noqa: S105 (where the token came from, not a secret)
        with self._lock:
            self._entries.setdefault(_digest(serialized_token_cache), {})[tuple(scopes)] = (
                use_until, kept, expires_on)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)  # the oldest token cache first

    def forget(self, serialized_token_cache: str) -> None:
        """Drop every answer remembered for this token cache (at sign-out)."""
        with self._lock:
            self._entries.pop(_digest(serialized_token_cache), None)
