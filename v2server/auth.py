"""API keys for both transports: where they come from, and the one check both apply.

Keys are compared in constant time and never logged. With no key configured the server is open (and says so
once at start). Health routes and RPCs stay open so Kubernetes probes need no secret.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from v2server.errors import Unauthenticated

__all__ = ["OPEN_RPCS", "ApiKeys", "read_keys"]

log = logging.getLogger(__name__)

#: gRPC methods that need no key (health probes), by full method path.
OPEN_RPCS = frozenset(
    {
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
        "/inference.GRPCInferenceService/ModelReady",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    }
)

ENV_KEYS = "V2SERVER_API_KEYS"


def read_keys(keys: Iterable[str] = (), keys_file: Path | None = None, environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """Keys from ``--api-key`` flags, ``V2SERVER_API_KEYS`` (comma-separated) and a file (one per line, ``#`` comments)."""
    found = [k.strip() for k in keys]
    env = (os.environ if environ is None else environ).get(ENV_KEYS, "")
    found += [k.strip() for k in env.split(",")]
    if keys_file is not None:
        for line in keys_file.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            found.append(line)
    return tuple(dict.fromkeys(k for k in found if k))


class ApiKeys:
    """The configured keys and the check of an ``Authorization`` value (``Bearer <key>`` or the bare key)."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(k.encode() for k in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> None:
        """Raise ``Unauthenticated`` unless ``authorization`` carries one of the keys."""
        if not self._keys:
            return
        if not authorization:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        value = authorization.strip()
        if value[:7].lower() == "bearer ":
            value = value[7:].strip()
        candidate = value.encode()
        # Compare against every key (no early exit), each in constant time.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise Unauthenticated("invalid API key")

    def owner(self, authorization: str | None) -> str:
        """Who owns what a request with ``authorization`` creates (an asynchronous job): the SHA-256 of its key
        (already checked), so a job is shown only to the key that made it; "" when no keys are configured."""
        if not self._keys or not authorization:
            return ""
        value = authorization.strip()
        if value[:7].lower() == "bearer ":
            value = value[7:].strip()
        return hashlib.sha256(value.encode()).hexdigest()

    def announce(self) -> None:
        if self._keys:
            log.info("API keys required on every route but health (%d key(s) configured)", len(self._keys))
        else:
            log.warning("no API key configured: the server is open to anyone who can reach it")
