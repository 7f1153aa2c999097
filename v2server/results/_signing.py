"""Signed links to stored answers: ``/v1/results/ID?expires=UNIX&sig=HEX``.

The signature is HMAC-SHA256 over ``ID:EXPIRES`` with the server's key (``--results-secret``, or 32 random bytes
per process), so a link names one answer until one moment and cannot be altered: another id, a later expiry or
a guessed signature fails the constant-time comparison. The link is its own credential (the answer is served
without an API key): anyone holding it may read that one answer until it expires.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
import re
import secrets
import time

__all__ = ["LinkSigner", "Verdict", "is_result_id", "new_result_id"]

#: ids are 32 lower-case hex digits of ``secrets.token_hex``: never a client's text
_ID = re.compile(r"[0-9a-f]{32}")


def new_result_id() -> str:
    """A fresh random id (128 bits): the stored file's or object's name."""
    return secrets.token_hex(16)


def is_result_id(text: str) -> bool:
    """Whether ``text`` has the form of an id this server makes (checked before any file is touched)."""
    return _ID.fullmatch(text) is not None


class Verdict(enum.Enum):
    """What a link's query says: the transport answers 200, 403, 410 (404 comes from the store)."""

    VALID = "valid"
    BAD_SIGNATURE = "bad signature"
    EXPIRED = "expired"


class LinkSigner:
    """Signs and checks links with one key; ``secret`` empty: a random key of this process only."""

    def __init__(self, secret: str = "") -> None:
        self._key = secret.encode() if secret else secrets.token_bytes(32)

    def signature(self, result_id: str, expires: int) -> str:
        return hmac.new(self._key, f"{result_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    def query(self, result_id: str, ttl: float, now: float | None = None) -> str:
        """``expires=...&sig=...`` for a link that works ``ttl`` seconds from ``now``."""
        expires = math.ceil((time.time() if now is None else now) + ttl)
        return f"expires={expires}&sig={self.signature(result_id, expires)}"

    def check(self, result_id: str, expires: str | None, sig: str | None, now: float | None = None) -> Verdict:
        """The signature first (in constant time), then the expiry: an altered expiry is a bad signature."""
        if not expires or not sig or not expires.isascii() or not expires.isdigit() or len(expires) > 12:
            return Verdict.BAD_SIGNATURE
        expected = self.signature(result_id, int(expires))
        if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace")):
            return Verdict.BAD_SIGNATURE
        if (time.time() if now is None else now) > int(expires):
            return Verdict.EXPIRED
        return Verdict.VALID
