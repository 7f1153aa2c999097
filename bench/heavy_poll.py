"""The health poller of ``bench.heavy``: ``GET /v2/health/live`` every 10 ms, as a kubelet would, on its own.

Run as its own process (``python -m bench.heavy_poll --port P``) beside a heavy request: each probe opens a
new connection (a kubelet does too), waits for the answer, and the next one starts ``--interval`` after the
previous one started (at once when it took longer). On SIGTERM it starts no new probe, lets the one in flight
finish for up to ``--grace`` seconds (then counts it as unanswered, with its time so far) and prints one JSON
object: probes, failures, the worst latency and how many probes took over 100 ms and over 1 s.
"""

from __future__ import annotations

import argparse
import http.client
import signal
import sys
import time
from types import FrameType

import orjson

PATH = "/v2/health/live"


class _Stop(Exception):
    """The grace after SIGTERM ran out with a probe in flight."""


def poll(port: int, interval: float, grace: float, limit: float) -> dict[str, object]:
    stopping = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        signal.setitimer(signal.ITIMER_REAL, grace)

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, on_alarm)
    began = time.perf_counter()
    latencies: list[float] = []
    failures: dict[str, int] = {}
    worst, worst_at, unanswered = 0.0, 0.0, 0.0
    while not stopping and time.perf_counter() - began < limit:
        start = time.perf_counter()
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=limit)
            try:
                connection.request("GET", PATH)
                response = connection.getresponse()
                response.read()
            finally:
                connection.close()
            if response.status != 200:
                failures[f"HTTP {response.status}"] = failures.get(f"HTTP {response.status}", 0) + 1
        except _Stop:
            unanswered = time.perf_counter() - start
            break
        except OSError as exc:
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
        elapsed = time.perf_counter() - start
        latencies.append(elapsed)
        if elapsed > worst:
            worst, worst_at = elapsed, start - began
        try:
            time.sleep(max(0.0, interval - elapsed))
        except _Stop:
            break
    signal.setitimer(signal.ITIMER_REAL, 0)
    ordered = sorted(latencies) or [0.0]
    return {
        "probes": len(latencies),
        "failures": failures,
        "worst_ms": round(max(worst, unanswered) * 1e3, 1),
        "worst_at_s": round(worst_at, 2),
        "unanswered_ms": round(unanswered * 1e3, 1),  # > 0: the probe in flight at the end never got an answer
        "p50_ms": round(ordered[len(ordered) // 2] * 1e3, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3, 2),
        "over_100ms": sum(1 for value in latencies if value > 0.1),
        "over_1s": sum(1 for value in latencies if value > 1.0),
        "seconds": round(time.perf_counter() - began, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between probe starts")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds the probe in flight gets after SIGTERM")
    parser.add_argument("--limit", type=float, default=900.0, help="seconds after which it stops by itself")
    args = parser.parse_args(argv)
    result = poll(args.port, args.interval, args.grace, args.limit)
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
