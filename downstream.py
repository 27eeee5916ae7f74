"""The one HTTP client for the downstream API (Microsoft Graph `/me` by default).

One instance per process, shared by all threads: its connection pool keeps TCP and TLS
connections alive between page views, which is most of what a page view costs otherwise.
Every outcome that is not a JSON object is raised as a `DownstreamError` that says what
the page should answer, so the view stays a few lines long.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from datetime import UTC, datetime

import requests

from claims_challenge import claims_challenge_from
from http_pool import pooled_session

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3.05
READ_TIMEOUT = 10
# A Retry-After this short is waited out once inside the request; longer ones are passed on.
MAX_INLINE_RETRY_AFTER = 2.0
MAX_RETRY_AFTER = 3600


class DownstreamError(Exception):
    """The API did not give us a profile. `status` is what our page answers; `title` names
    the API as `{api}` (the pages say "Microsoft Graph" or "The API", see provider.py)."""

    status = 502
    title = "{api} returned an error"

    def __init__(self, message: str, *, upstream_status: int | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.upstream_status = upstream_status
        self.retry_after = retry_after


class TokenRejected(DownstreamError):
    """401: the access token was not accepted. The page says 502: the fault is upstream.
    `claims_challenge`: what a CAE challenge asks for (the claims JSON), if it was one."""

    status = 502
    title = "{api} did not accept the access token"

    def __init__(self, message: str, *, claims_challenge: str | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.claims_challenge = claims_challenge


class PermissionMissing(DownstreamError):
    status = 403
    title = "The app lacks a permission"


class Throttled(DownstreamError):
    status = 503
    title = "{api} is busy"


class TimedOut(DownstreamError):
    status = 504
    title = "{api} did not answer in time"


class Unreachable(DownstreamError):
    status = 502
    title = "{api} can't be reached"


def _retry_after_seconds(response: requests.Response) -> int | None:
    """Retry-After as whole seconds (it may be a number or an HTTP date), capped at an hour."""
    raw = (response.headers.get("Retry-After") or "").strip()
    if raw.isascii() and raw.isdigit():  # isdigit() alone also accepts "²", which int() refuses
        seconds = int(raw) if len(raw) < 8 else MAX_RETRY_AFTER
    else:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = math.ceil((when - datetime.now(UTC)).total_seconds())
    return max(0, min(seconds, MAX_RETRY_AFTER))


def _graph_error_message(response: requests.Response) -> str:
    try:
        body = response.json()
        return str(body["error"].get("message") or body["error"].get("code"))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return f"HTTP {response.status_code}"


class DownstreamApi:
    def __init__(self, endpoint: str, *, pool_size: int = 16,
                 timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
                 max_inline_retry_after: float = MAX_INLINE_RETRY_AFTER):
        self.endpoint = endpoint
        self.max_inline_retry_after = max_inline_retry_after
        # One connect retry covers a pooled connection the server closed while idle;
        # reads are not retried, so a timeout is not silently doubled. read=False, not 0:
        # with 0, urllib3 wraps a read timeout in MaxRetryError, which requests reports as
        # a ConnectionError, and a timed-out Graph would look unreachable (502, not 504).
        # Retry-After is handled in get_json, where its wait is bounded.
        retries = requests.adapters.Retry(total=1, connect=1, read=False, status=0, redirect=0, other=0,
                                          respect_retry_after_header=False, raise_on_status=False)
        self._http = pooled_session(pool_size=pool_size, timeout=timeout, retries=retries)

    def get_json(self, access_token: str) -> dict:
        """GET the endpoint for the user whose token this is; never cached (the page is live)."""
        response = self._get(access_token)
        if response.status_code in (429, 503):
            wait = _retry_after_seconds(response)
            if wait is not None and wait <= self.max_inline_retry_after:
                response.close()
                time.sleep(wait)
                response = self._get(access_token)
        return self._parse(response)

    def _get(self, access_token: str) -> requests.Response:
        try:
            # No redirects: the bearer token must go to ENDPOINT and nowhere else.
            return self._http.get(self.endpoint, allow_redirects=False, headers={
                "Authorization": f"Bearer {access_token}",
                "Accept": "application/json",
            })
        except requests.Timeout as exc:
            raise TimedOut("No answer within the time limit.") from exc
        except requests.RequestException as exc:
            raise Unreachable(type(exc).__name__) from exc

    @staticmethod
    def _parse(response: requests.Response) -> dict:
        status = response.status_code
        if status == 401:
            # Only ever from ENDPOINT (no redirects are followed), and only its claims are
            # used: the challenge's authorization_uri is never followed.
            raise TokenRejected(_graph_error_message(response), upstream_status=status,
                                claims_challenge=claims_challenge_from(response.headers.get("WWW-Authenticate")))
        if status == 403:
            raise PermissionMissing(_graph_error_message(response), upstream_status=status)
        if status in (429, 503):
            retry_after = _retry_after_seconds(response)
            raise Throttled(_graph_error_message(response), upstream_status=status,
                            retry_after=5 if retry_after is None else max(1, retry_after))
        if status >= 300:
            raise DownstreamError(_graph_error_message(response), upstream_status=status)
        try:
            body = response.json()
        except (ValueError, RecursionError) as exc:  # RecursionError: nested thousands deep
            raise DownstreamError("The answer was not JSON.", upstream_status=status) from exc
        if not isinstance(body, dict):
            raise DownstreamError("The answer was not a JSON object.", upstream_status=status)
        return body
