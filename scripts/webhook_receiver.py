"""A webhook receiver for trying asynchronous /v1 jobs: prints each job's result once.

Usage::

    python scripts/webhook_receiver.py [--port 9000] [--secret SECRET]

It answers every POST with 204, checks the signature when ``--secret`` is given (and refuses a bad or stale
one with 401, so the server retries), and prints each ``Idempotency-Key`` only the first time it sees it: the
receiver's half of exactly-once delivery (docs/jobs.md).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

TOLERANCE_SECONDS = 300


def verify(secret: str, timestamp: str, signature: str, body: bytes) -> bool:
    """``X-V2Server-Signature`` is ``sha256=`` + HMAC-SHA256(secret, timestamp + "." + body), and fresh."""
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) <= TOLERANCE_SECONDS
    return fresh and hmac.compare_digest(expected, signature)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", default="")
    args = parser.parse_args()
    seen: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if args.secret and not verify(args.secret, self.headers.get("X-V2Server-Timestamp", ""),
                                          self.headers.get("X-V2Server-Signature", ""), body):
                self.send_response(401)
                self.end_headers()
                return
            key = self.headers.get("Idempotency-Key", "")
            if key not in seen:  # a repeated delivery (a retry after a crash) is acknowledged, not processed
                seen.add(key)
                print(body.decode(), flush=True)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    HTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
