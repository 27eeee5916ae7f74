"""Error bodies shaped like Entra ID's, so clients' error handling is tested for real."""

import uuid
from datetime import UTC, datetime

from flask import jsonify


def _now():
    return datetime.now(UTC)


def entra_error(error, description, status=400, code=None, **extra):
    """A token-endpoint error response as Entra sends it.

    ``description`` should start with an ``AADSTSnnnn:`` code like Entra's;
    the trace and correlation ids are appended the same way Entra does.
    ``extra`` adds members some errors carry (``suberror``, ``claims``, ``error_uri``).
    """
    trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
    timestamp = _now().strftime("%Y-%m-%d %H:%M:%SZ")
    if code is None and description.startswith("AADSTS"):
        digits = description[len("AADSTS"):].split(":", 1)[0]
        code = int(digits) if digits.isdigit() else None
    body = {
        "error": error,
        "error_description": (
            f"{description} Trace ID: {trace_id} Correlation ID: {correlation_id}"
            f" Timestamp: {timestamp}"
        ),
        "error_codes": [code] if code is not None else [],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        **extra,
    }
    response = jsonify(body)
    response.status_code = status
    # Entra never lets token responses be cached; neither do we.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def graph_error_body(code, message, client_request_id=None):
    """Microsoft Graph's error envelope."""
    return {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": _now().strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": str(uuid.uuid4()),
                "client-request-id": client_request_id or str(uuid.uuid4()),
            },
        }
    }
