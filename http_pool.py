"""The pooled HTTP client that both the identity provider's calls and the downstream API use.

One `requests.Session` per purpose and process, shared by every thread and user: its
connection pool keeps TCP and TLS connections alive between page views, which is most of
what a page view would cost otherwise.
"""

from __future__ import annotations

import functools
import http.cookiejar
import os
import urllib.request

import requests
from requests.adapters import HTTPAdapter, Retry


def pooled_session(*, pool_size: int, timeout: tuple[float, float], retries: Retry | int = 0) -> requests.Session:
    """A `requests.Session` that is safe to share across threads and users.

    * Cookies are refused: a shared session that stored one would send it on behalf of
      every user.
    * Every request gets `timeout` unless the caller passes its own: MSAL passes none, and
      an identity provider that accepts the connection and never answers would hold a
      worker forever.
    * Without proxy settings in the environment, `trust_env` is off: requests would
      otherwise walk the environment and look for `~/.netrc` on every request (about 7 %
      of a page view, make bench), and a `~/.netrc` entry's Basic credentials would replace
      the bearer token. The CA bundle (REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE) is read once
      here instead. With a proxy configured, requests' own handling (NO_PROXY) is kept.
    """
    session = requests.Session()
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=retries)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.request = functools.partial(session.request, timeout=timeout)
    if not any(scheme != "no" for scheme in urllib.request.getproxies_environment()):
        session.trust_env = False
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    return session
