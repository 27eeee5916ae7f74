"""Production serving: `gunicorn 'app:create_app()'` reads this file from the working directory.

Every value can be overridden from the environment (Azure App Service passes PORT).
"""

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND") or f"0.0.0.0:{os.environ.get('PORT', '8000')}"

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
