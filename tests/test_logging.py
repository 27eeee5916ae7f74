"""Log redaction: no token, code or secret in a log line, and bounded work for any input."""

from __future__ import annotations

import logging
import time

import pytest

from logging_setup import MAX_LOGGED_CHARS, RedactSecrets

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def redacted(message: str, *args) -> str:
    record = logging.LogRecord("lib", logging.WARNING, __file__, 1, message, args or None, None)
    assert RedactSecrets().filter(record)
    return logging.Formatter().format(record)


@pytest.mark.parametrize("line", [
    f"Bearer {JWT}",
    f"GET /x?id_token={JWT}&state=1",
    f'{{"access_token": "{JWT}"}}',
    f"token:{JWT}.",
    f"({JWT})",
])
def test_a_real_jwt_is_redacted_wherever_it_stands(line):
    out = redacted(line)
    assert JWT not in out and "eyJzdWIiOiJ4In0" not in out


@pytest.mark.parametrize("line", ["code=abc123&state=1", "refresh_token=0.AAA-x&x=1",
                                  '"client_secret": "s3cr3t"', "client_assertion=abc.def.ghi"])
def test_codes_and_secrets_in_forms_and_json_are_redacted(line):
    out = redacted(line)
    assert "abc123" not in out and "0.AAA-x" not in out and "s3cr3t" not in out and "abc.def.ghi" not in out


def test_a_log_call_whose_arguments_do_not_fit_is_still_redacted():
    line = redacted("token %s and %s", JWT)  # one argument for two placeholders
    assert JWT not in line and "[redacted-jwt]" in line




@pytest.mark.parametrize("unit", ["eyJ", "eyJa.", "eyJ-", "code=", "eyJa.eyJb "])
def test_redaction_is_linear_in_hostile_input(unit):
    # Before the fix, `eyJ` repeated over 64 KB took seconds (each position started a scan to
    # the end). Linear: 4 times the input costs about 4 times the time, not 16. A ratio of
    # two runs on one machine, not an absolute time.
    small = unit * (16 * 1024 // len(unit))
    large = unit * (64 * 1024 // len(unit))
    # Compared below the per-record cut, so that the ratio measures the patterns.
    filt = RedactSecrets()
    small_time = min(_time_patterns(filt, small) for _ in range(3))
    large_time = min(_time_patterns(filt, large) for _ in range(3))
    assert large_time / max(small_time, 1e-6) < 8, (small_time, large_time)


def _time_patterns(filt: RedactSecrets, text: str) -> float:
    started = time.perf_counter()
    for pattern, replacement in filt.patterns:
        pattern.sub(replacement, text)
    return time.perf_counter() - started


def test_a_huge_message_is_cut_so_that_each_record_costs_bounded_work():
    out = redacted("GET /" + "eyJ" * 100_000)
    assert len(out) < MAX_LOGGED_CHARS + 100 and "characters cut" in out
