"""Production serving: `gunicorn 'app:create_app()'` reads this file from the working directory.

Every value can be overridden from the environment (Azure App Service passes PORT).
"""

import multiprocessing
import os


def _bind() -> list[str]:
    # Loopback by default: gunicorn's gthread worker reads a request's headers with no time
    # limit, so a handful of clients that never finish theirs hold every thread. It belongs
    # behind a buffering reverse proxy on the same machine (README, "Behind a reverse proxy"),
    # and nothing else should reach it.
    explicit = os.environ.get("GUNICORN_BIND") or os.environ.get("BIND")
    if explicit:  # one address or several, separated by commas or spaces
        return explicit.replace(",", " ").split()
    port = os.environ.get("PORT")
    if port:
        # PORT alone is how Azure App Service (and platforms like it) say where to listen: its
        # front ends reach the container from outside, so loopback would be unreachable.
        return [f"0.0.0.0:{port}"]
    return ["127.0.0.1:8000"]


bind = _bind()

# Processes for the cores, threads for the waiting: a page view spends most of its time
# waiting on Microsoft Graph or Entra ID, not computing.
workers = int(os.environ.get("WEB_CONCURRENCY") or max(2, multiprocessing.cpu_count() * 2))
threads = int(os.environ.get("GUNICORN_THREADS") or 4)
worker_class = os.environ.get("GUNICORN_WORKER_CLASS") or ("gthread" if threads > 1 else "sync")

# Longer than the worst page view: identity provider calls (5 s read each, a few of them)
# plus Graph (10 s read, at most one retry). A worker is only killed when truly stuck.
timeout = int(os.environ.get("GUNICORN_TIMEOUT") or 60)
graceful_timeout = 30
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE") or 5)

# X-Forwarded-* is handled by the app (PROXY_COUNT); gunicorn itself trusts no peer for it,
# so a client on the same host cannot claim https.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "")

# The access log leaves out query strings: the authorization code travels in one.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
