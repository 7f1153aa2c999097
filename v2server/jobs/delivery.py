"""Webhook delivery: one signed POST per attempt, and the backoff between attempts.

Each POST carries the job's result as ``application/json`` and these headers:

- ``Idempotency-Key: <job id>``: the same on every attempt and after a restart. Delivery is at least once (a
  server killed after the receiver answered but before it recorded the answer delivers again), so a receiver
  that ignores a key it has already processed sees each job exactly once.
- ``X-V2Server-Job: <job id>`` and ``X-V2Server-Attempt: <n>`` (1, 2, ...).
- with ``--webhook-secret``: ``X-V2Server-Timestamp: <unix seconds>`` and
  ``X-V2Server-Signature: sha256=<hex>``, the HMAC-SHA256 under the secret of ``<timestamp>.<body>`` (the
  timestamp's decimal digits, a dot, the body's bytes). A receiver recomputes it, compares in constant time
  and refuses a timestamp more than a few minutes old, which stops a recorded delivery from being replayed
  (docs/jobs.md shows the code).

A 2xx answer is a delivery; anything else (another status, no answer within ``--webhook-timeout-secs``, a
refused connection) is a failed attempt. Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import time

import tornado.httpclient
import tornado.simple_httpclient

from v2server.jobs.targets import PolicyResolver, TargetPolicy, TargetRefused

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "Backoff", "Deliverer", "DeliveryFailed", "sign"]

SIGNATURE_HEADER = "X-V2Server-Signature"
TIMESTAMP_HEADER = "X-V2Server-Timestamp"

#: POSTs in flight at once (more wait their turn, not counted against their timeout)
CONCURRENT_DELIVERIES = 32


class DeliveryFailed(Exception):
    """One attempt failed; ``final``: retrying cannot help (the target is refused by the rules)."""

    def __init__(self, message: str, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-V2Server-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of ``timestamp.body``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class Backoff:
    """The wait after failed attempt ``n`` (1, 2, ...): ``base * 2**(n-1)``, at most ``ceiling``, the second
    half of it random (so that receivers coming back are not hit by every retry at once)."""

    def __init__(self, base: float, ceiling: float) -> None:
        self.base = base
        self.ceiling = ceiling

    def delay(self, attempt: int) -> float:
        full = min(self.ceiling, self.base * 2 ** min(attempt - 1, 62))
        return full / 2 + random.uniform(0, full / 2)


class Deliverer:
    """POSTs results to webhooks, under the target rules (checked on the addresses connected to)."""

    def __init__(self, policy: TargetPolicy, secret: str, timeout: float) -> None:
        self._secret = secret
        self._timeout = timeout
        self._slots = asyncio.Semaphore(CONCURRENT_DELIVERIES)
        self._client = tornado.simple_httpclient.SimpleAsyncHTTPClient(
            force_instance=True, resolver=PolicyResolver(policy=policy), max_clients=CONCURRENT_DELIVERIES,
        )

    async def post(self, url: str, body: bytes, job_id: str, attempt: int) -> None:
        """One attempt; ``DeliveryFailed`` unless the receiver answers 2xx."""
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": job_id,
            "X-V2Server-Job": job_id,
            "X-V2Server-Attempt": str(attempt),
            "User-Agent": "v2server-webhook",
        }
        if self._secret:
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(self._secret, timestamp, body)
        request = tornado.httpclient.HTTPRequest(
            url, method="POST", body=body, headers=headers, follow_redirects=False,
            connect_timeout=self._timeout, request_timeout=self._timeout, decompress_response=False,
        )
        async with self._slots:
            try:
                response = await self._client.fetch(request, raise_error=False)
            except TargetRefused as exc:
                raise DeliveryFailed(exc.message, final=True) from None
            except Exception as exc:  # connection refused, reset, TLS: a failed attempt
                raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from None
        if isinstance(response.error, TargetRefused):
            raise DeliveryFailed(response.error.message, final=True)
        if not 200 <= response.code < 300:
            reason = f"HTTP {response.code}" if response.code != 599 else f"no answer: {response.error}"
            raise DeliveryFailed(reason)

    def close(self) -> None:
        self._client.close()
