"""Mutable state shared by the three listeners, all behind one lock.

Requests arrive on many server threads at once (the benchmark drives the
stand-in hard), so every read-modify-write here holds ``_lock``.
"""

import secrets
import threading
import time
from dataclasses import dataclass, field

COUNTER_NAMES = (
    "discovery",
    "token",
    "token_auth_code",
    "token_refresh",
    "keys",
    "authorize",
    "logout",
    "graph",
    "graph_connections",
    "idp_connections",
    "front_connections",
)

PENDING_REQUEST_TTL = 600  # seconds the account picker stays usable
AUTH_CODE_TTL = 60  # Entra's codes live for minutes; a short life catches slow clients
REFRESH_TOKEN_TTL = 24 * 3600
SWEEP_INTERVAL = 5


@dataclass
class Fault:
    """An injected failure; ``remaining`` None means until cleared."""

    remaining: int | None
    params: dict = field(default_factory=dict)


class Store:
    def __init__(self):
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(COUNTER_NAMES, 0)
        self._pending = {}  # request id -> validated authorize parameters
        self._codes = {}  # authorization code -> grant
        self._refresh = {}  # refresh token -> grant
        self._token_fault = None
        self._graph_fault = None
        self._last_sweep = {}

    # -- counters -------------------------------------------------------------
    def count(self, name):
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + 1

    def counters(self):
        with self._lock:
            return dict(self._counters)

    def reset_counters(self):
        with self._lock:
            self._counters = dict.fromkeys(COUNTER_NAMES, 0)

    # -- faults ---------------------------------------------------------------
    def set_token_fault(self, count, **params):
        with self._lock:
            self._token_fault = Fault(count, params)

    def set_graph_fault(self, count, **params):
        with self._lock:
            self._graph_fault = Fault(count, params)

    def clear_faults(self):
        with self._lock:
            self._token_fault = self._graph_fault = None

    def take_token_fault(self):
        with self._lock:
            fault, self._token_fault = self._take(self._token_fault)
            return fault

    def take_graph_fault(self):
        with self._lock:
            fault, self._graph_fault = self._take(self._graph_fault)
            return fault

    @staticmethod
    def _take(fault):
        """Return (params to apply now or None, the fault that stays armed)."""
        if fault is None:
            return None, None
        if fault.remaining is None:
            return fault.params, fault
        if fault.remaining <= 1:
            return (fault.params if fault.remaining == 1 else None), None
        fault.remaining -= 1
        return fault.params, fault

    # -- authorize requests waiting for the account picker ---------------------
    def add_pending(self, params):
        request_id = secrets.token_urlsafe(24)
        with self._lock:
            self._sweep(self._pending)
            self._pending[request_id] = (time.monotonic() + PENDING_REQUEST_TTL, params)
        return request_id

    def pop_pending(self, request_id):
        """Single use: a second POST of the same picker form finds nothing."""
        with self._lock:
            entry = self._pending.pop(request_id or "", None)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    # -- authorization codes ----------------------------------------------------
    def add_code(self, grant):
        code = "0.local." + secrets.token_urlsafe(48)
        with self._lock:
            self._sweep(self._codes)
            self._codes[code] = {"expires": time.monotonic() + AUTH_CODE_TTL, "used": False, **grant}
        return code

    def redeem_code(self, code):
        """Return (grant, problem); problem is None, "unknown", "used" or "expired".

        A used code is remembered (until it would have expired anyway) so a
        replay gets Entra's "already redeemed" answer, not "unknown".
        """
        with self._lock:
            grant = self._codes.get(code or "")
            if grant is None:
                return None, "unknown"
            if grant["used"]:
                return grant, "used"
            grant["used"] = True
        if grant["expires"] < time.monotonic():
            return grant, "expired"
        return grant, None

    # -- refresh tokens ---------------------------------------------------------
    def add_refresh_token(self, grant):
        token = "1.local." + secrets.token_urlsafe(64)
        with self._lock:
            self._sweep(self._refresh)
            self._refresh[token] = {
                "expires": time.monotonic() + REFRESH_TOKEN_TTL,
                "revoked": False,
                **grant,
            }
        return token

    def use_refresh_token(self, token):
        """Rotate: the presented token stops working at once.

        Returns (grant, problem) like ``redeem_code``; problem is None,
        "unknown", "revoked" or "expired". Revoked tokens stay listed so the
        client gets the revocation message rather than a generic one.
        """
        with self._lock:
            grant = self._refresh.get(token or "")
            if grant is None:
                return None, "unknown"
            if grant["revoked"]:
                return grant, "revoked"
            del self._refresh[token]
        if grant["expires"] < time.monotonic():
            return grant, "expired"
        return grant, None

    def revoke_refresh_tokens(self, user_id=None):
        with self._lock:
            for grant in self._refresh.values():
                if user_id is None or grant["user_id"] == user_id:
                    grant["revoked"] = True

    def _sweep(self, table):
        """Drop expired entries so long benchmark runs don't grow memory without bound.

        Called with the lock held. A full scan is O(n), so it runs at most
        every few seconds per table rather than on every insert.
        """
        now = time.monotonic()
        if now - self._last_sweep.get(id(table), 0) < SWEEP_INTERVAL:
            return
        self._last_sweep[id(table)] = now
        for key in [k for k, v in table.items() if _expiry(v) < now]:
            del table[key]


def _expiry(entry):
    return entry[0] if isinstance(entry, tuple) else entry["expires"]
