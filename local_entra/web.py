"""What the browser-facing pages share: comparing origins, and their Content-Security-Policy."""

from urllib.parse import urlsplit

# The pages run no script and embed nothing; the signed-out page alone adds
# frame-src, for the apps' front-channel logout URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action *; frame-ancestors 'none'"
)


def origin(url):
    """(scheme, host, port) with default ports filled in, or None for a malformed URL."""
    parts = urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None
    return (parts.scheme.lower(), (parts.hostname or "").lower(), port)


def content_security_policy(frame_urls=()):
    """The policy, allowing frames from exactly the origins of ``frame_urls`` (if any)."""
    sources = sorted({_serialized_origin(url) for url in frame_urls})
    return CONTENT_SECURITY_POLICY + (f"; frame-src {' '.join(sources)}" if sources else "")


def _serialized_origin(url):
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
