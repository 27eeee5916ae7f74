"""Log configuration, and the filters that keep tokens, codes and secrets out of every log line."""

from __future__ import annotations

import logging
import re

# A log record's message is redacted up to this many characters and cut there: a request
# line or header that somebody made huge costs bounded work, whatever is in it.
MAX_LOGGED_CHARS = 16 * 1024


class StripQueryString(logging.Filter):
    """The development server logs request lines; the auth code travels in a query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and isinstance(record.args, tuple) and isinstance(record.args[0], str):
            line = record.args[0]
            if "?" in line:
                method_path, _, rest = line.partition("?")
                protocol = rest.rsplit(" ", 1)[-1] if " " in rest else ""
                record.args = (f"{method_path}?[redacted] {protocol}".rstrip(), *record.args[1:])
        return True


class RedactSecrets(logging.Filter):
    """Last line of defence: no token, code or secret leaves the process in a log line.

    Every pattern is linear in the length of the text: a JWT is only looked for where a
    token can start (not right after another token character), so a line of `eyJ`
    repeated thousands of times is one failed attempt, not one per position.
    """

    patterns = (
        (re.compile(r"(?<![\w-])eyJ[\w-]+\.[\w-]+\.[\w-]*"), "[redacted-jwt]"),
        (re.compile(r'("(?:code|code_verifier|refresh_token|access_token|id_token|client_secret|'
                    r'client_assertion)"\s*:\s*")[^"]*'), r"\1[redacted]"),
        (re.compile(r"(?<![\w-])((?:code|refresh_token|access_token|id_token|client_secret|client_assertion)=)"
                    r"[^&\s\"']+"), r"\1[redacted]"),
        # A claims challenge (WWW-Authenticate, or a token request's form) says what a policy asks of a user.
        (re.compile(r"(?<![\w-])(claims=\"?)[^&\s\"]+"), r"\1[redacted]"),
    )

    def redact(self, text: str) -> str:
        if len(text) > MAX_LOGGED_CHARS:
            text = f"{text[:MAX_LOGGED_CHARS]}[... {len(text) - MAX_LOGGED_CHARS} characters cut]"
        for pattern, replacement in self.patterns:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a library's call whose arguments do not fit its format
            # logging would print the raw message and arguments to stderr, unredacted.
            message = record.msg = f"{record.msg!r} with arguments {record.args!r}"
            record.args = None
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        return True


def configure_logging(level: str) -> None:
    """Our warnings (failed sign-ins, unreachable services) reach stderr under any server,
    and every handler redacts."""
    root = logging.getLogger()
    if not root.handlers:  # nobody configured logging (gunicorn, flask run): we do
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")
    for handler in root.handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())
    # MSAL logs each token request's body (with the auth code and PKCE verifier) at DEBUG.
    logging.getLogger("msal.token_cache").setLevel(logging.INFO)
    # identity logs a full traceback for every forged or stale callback, which anyone can
    # send; the app logs one line for each instead.
    logging.getLogger("identity.web").setLevel(logging.CRITICAL)
    werkzeug_logger = logging.getLogger("werkzeug")
    if not any(isinstance(f, StripQueryString) for f in werkzeug_logger.filters):
        werkzeug_logger.addFilter(StripQueryString())
