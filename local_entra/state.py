"""Mutable state shared by the three listeners, all behind one lock.

Requests arrive on many server threads at once (the benchmark drives the
stand-in hard), so every read-modify-write here holds ``_lock``.
"""

import secrets
import threading
import time
import uuid
from collections import deque
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
BROWSER_SESSION_TTL = 24 * 3600
SWEEP_INTERVAL = 5
# Recorded requests (testing mode) kept per kind: enough for any test, bounded for the benchmark.
RECORD_LIMIT = 1000
RECORD_KINDS = ("authorize", "token", "logout")


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
        self._browser_sessions = {}  # the stand-in's session cookie value -> sign-in session
        self._display_names = {}  # user id -> the name given in Azure AD B2C's edit-profile flow
        self._records = {kind: deque(maxlen=RECORD_LIMIT) for kind in RECORD_KINDS}
        self._token_fault = None
        self._graph_fault = None
        self._cae_revoked_at = None
        self._step_up_error = None
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
            self._cae_revoked_at = self._step_up_error = None

    # -- Conditional Access: CAE revocation and MFA step-up ------------------------
    @property
    def cae_revoked_at(self):
        """Epoch seconds of the last CAE revocation event, or None."""
        return self._cae_revoked_at

    def set_cae_revoked_at(self, instant):
        with self._lock:
            self._cae_revoked_at = instant

    @property
    def step_up_error(self):
        """The OAuth error a refresh without MFA gets while step-up is required, or None."""
        return self._step_up_error

    def set_step_up_error(self, error):
        with self._lock:
            self._step_up_error = error

    # -- recorded requests (testing mode) ----------------------------------------
    def record(self, kind, entry):
        with self._lock:
            self._records[kind].append(entry)

    def records(self):
        with self._lock:
            return {kind: [dict(entry) for entry in entries] for kind, entries in self._records.items()}

    def clear_records(self):
        with self._lock:
            for entries in self._records.values():
                entries.clear()

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

    def peek_refresh_token(self, token):
        """The grant of a usable refresh token, without using it up; None otherwise."""
        with self._lock:
            grant = self._refresh.get(token or "")
            if grant is None or grant["revoked"] or grant["expires"] < time.monotonic():
                return None
            return dict(grant)

    def revoke_refresh_tokens(self, user_id=None):
        with self._lock:
            for grant in self._refresh.values():
                if user_id is None or grant["user_id"] == user_id:
                    grant["revoked"] = True

    # -- browser sign-in sessions ----------------------------------------------------
    # The stand-in's own cookie names one of these. Its ``sid`` goes into id tokens and
    # front-channel logout calls; ``redirect_uris`` remembers which apps got codes from it.
    def start_browser_session(self, user_id):
        cookie = secrets.token_urlsafe(32)
        session = {
            "expires": time.monotonic() + BROWSER_SESSION_TTL,
            "sid": str(uuid.uuid4()),
            "user_id": user_id,
            "redirect_uris": set(),
        }
        with self._lock:
            self._sweep(self._browser_sessions)
            self._browser_sessions[cookie] = session
            return cookie, _session_snapshot(session)

    def browser_session(self, cookie):
        with self._lock:
            session = self._browser_sessions.get(cookie or "")
            if session is None or session["expires"] < time.monotonic():
                return None
            return _session_snapshot(session)

    def note_sign_in(self, cookie, redirect_uri):
        with self._lock:
            session = self._browser_sessions.get(cookie or "")
            if session is not None:
                session["redirect_uris"].add(redirect_uri)

    def end_browser_session(self, cookie):
        """Forget the session; return what it was (for front-channel logout) or None."""
        with self._lock:
            session = self._browser_sessions.pop(cookie or "", None)
        return None if session is None else _session_snapshot(session)

    # -- profile changes ------------------------------------------------------------
    # The directory (users.USERS) is shared by every stand-in in the process; what one
    # stand-in's edit-profile flow changes lives here, for that stand-in's lifetime only.
    def set_display_name(self, user_id, name):
        with self._lock:
            self._display_names[user_id] = name

    def display_name(self, user_id):
        """The changed name of this user, or None."""
        with self._lock:
            return self._display_names.get(user_id)

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


def _session_snapshot(session):
    """A copy callers may keep: the live entry changes under the lock."""
    return {**session, "redirect_uris": sorted(session["redirect_uris"])}


def _expiry(entry):
    return entry[0] if isinstance(entry, tuple) else entry["expires"]
