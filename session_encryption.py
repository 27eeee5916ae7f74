"""Sessions encrypted at rest: no token is readable in a Redis value, a session file or a cookie.

Every stored session (and the pending-sign-in cookie, see `sessions.py`) is sealed with
AES-256-GCM, an authenticated cipher: a value that was altered, moved to another session
id, or sealed with a key we no longer have does not open, and is treated as no session.

Keys are derived from SECRET_KEY with HKDF under a label of their own, so the encryption
key is never the key Flask and Flask-WTF sign with. SECRET_KEY_FALLBACKS (older keys)
still open what they sealed; everything is sealed with the current key, so a session read
with an old key is written back with the current one at its next write.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HKDF_LABEL = b"msal-flask session encryption v1"
VERSION = b"\x01"  # the first byte of every sealed value: the format, for a future change
NONCE_BYTES = 12
# What sealing adds to a value: version byte, nonce, GCM tag.
OVERHEAD = len(VERSION) + NONCE_BYTES + 16


class Unreadable(Exception):
    """A sealed value that no key opens: tampered, for another id, or sealed with a dropped key."""


def derive_key(secret_key: str | bytes) -> bytes:
    material = secret_key.encode() if isinstance(secret_key, str) else secret_key
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_LABEL).derive(material)


class SessionCipher:
    def __init__(self, secret_key: str | bytes, fallbacks=()):
        self._current = AESGCM(derive_key(secret_key))
        self._older = [AESGCM(derive_key(key)) for key in fallbacks if key]

    def seal(self, plaintext: bytes, bound_to: str) -> bytes:
        """Encrypt `plaintext` for the record `bound_to` (its store id or cookie name): a
        sealed value copied under another name does not open there."""
        nonce = os.urandom(NONCE_BYTES)
        return VERSION + nonce + self._current.encrypt(nonce, plaintext, bound_to.encode())

    def open(self, sealed: bytes, bound_to: str) -> tuple[bytes, bool]:
        """(plaintext, sealed with an older key?). Raises Unreadable."""
        if not isinstance(sealed, bytes) or len(sealed) < OVERHEAD or sealed[:1] != VERSION:
            raise Unreadable("not a sealed session")
        nonce, ciphertext = sealed[1:1 + NONCE_BYTES], sealed[1 + NONCE_BYTES:]
        for index, key in enumerate([self._current, *self._older]):
            try:
                return key.decrypt(nonce, ciphertext, bound_to.encode()), index > 0
            except InvalidTag:
                continue
        raise Unreadable("no key opens this session")
