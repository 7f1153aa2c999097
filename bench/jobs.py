"""Asynchronous /v1 jobs on loopback: delivery latency (accepted -> the receiver has the result) and jobs/s.

Usage::

    python bench/jobs.py [--jobs 2000] [--concurrency 32] [--max-running-jobs 8] [--state-dir DIR]

Starts ``python -m v2server`` on the bundled ``example_adder`` with ``--state-dir`` (a temporary folder unless
given: SQLite in WAL mode, so every accepted job is a committed write) and a Tornado webhook receiver in this
process. Two runs:

- ``unloaded``: ``--latency-jobs`` jobs one at a time (the next is submitted once the previous one's result
  has arrived): the delivery latency of a job that waits for nothing else.
- ``saturated``: ``--jobs`` jobs from ``--concurrency`` clients as fast as they are accepted: jobs/s, and the
  latency of jobs that queue behind the backlog.

A job's latency runs from the moment its 202 arrives to the moment the receiver has its POST; jobs/s is jobs
over the time from the first submission to the last delivery. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tornado.httpclient
import tornado.httpserver
import tornado.netutil
import tornado.web

ROOT = Path(__file__).resolve().parents[1]


class _Hook(tornado.web.RequestHandler):
    def initialize(self, arrived: dict[str, float], done: asyncio.Event, expected: list[int]) -> None:
        self._arrived, self._done, self._expected = arrived, done, expected

    def post(self) -> None:
        self._arrived.setdefault(self.request.headers["Idempotency-Key"], time.perf_counter())
        if len(self._arrived) >= self._expected[0]:
            self._done.set()
        self.set_status(204)


class _Receiver:
    """The webhook receiver: when each job's result arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.done = asyncio.Event()
        self.expected = [0]
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/hook"
        self._server = tornado.httpserver.HTTPServer(tornado.web.Application(
            [(r"/hook", _Hook, {"arrived": self.arrived, "done": self.done, "expected": self.expected})]))
        self._server.add_sockets(sockets)

    def expect(self, count: int) -> None:
        self.arrived.clear()
        self.done.clear()
        self.expected[0] = count

    def stop(self) -> None:
        self._server.stop()


def _start_server(state_dir: str, max_running: int) -> tuple[subprocess.Popen[str], int]:
    args = [
        sys.executable, "-m", "v2server", "--model-repository", str(ROOT / "model_repository"),
        "--model-control-mode", "explicit", "--load-model", "example_adder", "--http-address", "127.0.0.1",
        "--http-port", "0", "--allow-grpc=false", "--allow-metrics=false", "--state-dir", state_dir,
        "--webhook-allow", "127.0.0.1", "--max-running-jobs", str(max_running), "--max-pending-jobs", "100000",
    ]
    process = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stderr is not None
    port = 0
    for line in process.stderr:
        if match := re.search(r"HTTP server listening on [\d.]+:(\d+)", line):
            port = int(match.group(1))
        if "server ready" in line:
            return process, port
    raise RuntimeError("the server did not start")


async def _run(jobs: int, concurrency: int, port: int, latency_jobs: int) -> dict[str, object]:
    receiver = _Receiver()
    client = tornado.httpclient.AsyncHTTPClient(max_clients=max(concurrency, 1))
    body = json.dumps({"data": [[1, 3, 4, 5], [2, 6, 7, 8]], "response_webhook": receiver.url}).encode()
    url = f"http://127.0.0.1:{port}/v1/example_adder/latest"

    async def submit(accepted: dict[str, float]) -> str:
        response = await client.fetch(url, method="POST", body=body)
        job = str(json.loads(response.body)["job"])
        accepted[job] = time.perf_counter()
        return job

    # unloaded: one job at a time
    accepted: dict[str, float] = {}
    receiver.expect(1)
    for count in range(1, latency_jobs + 1):
        receiver.expected[0] = count
        receiver.done.clear()
        await submit(accepted)
        await asyncio.wait_for(receiver.done.wait(), timeout=60)
    unloaded = _latencies(accepted, receiver.arrived)

    # saturated: as fast as jobs are accepted
    receiver.expect(jobs)
    accepted = {}
    work = iter(range(jobs))

    async def submitter() -> None:
        for _ in work:
            await submit(accepted)

    start = time.perf_counter()
    await asyncio.gather(*(submitter() for _ in range(concurrency)))
    submitted = time.perf_counter()
    await asyncio.wait_for(receiver.done.wait(), timeout=600)
    end = max(receiver.arrived.values())
    receiver.stop()
    return {
        "unloaded": {"jobs": latency_jobs, **unloaded},
        "saturated": {
            "jobs": jobs, "concurrency": concurrency, "accepted_per_s": round(jobs / (submitted - start), 1),
            "jobs_per_s": round(jobs / (end - start), 1), **_latencies(accepted, receiver.arrived),
        },
    }


def _latencies(accepted: dict[str, float], arrived: dict[str, float]) -> dict[str, float]:
    latencies = sorted((arrived[job] - accepted[job]) * 1000 for job in accepted)
    return {
        "delivery_latency_ms_p50": round(statistics.median(latencies), 2),
        "delivery_latency_ms_p99": round(latencies[int(0.99 * (len(latencies) - 1))], 2),
        "delivery_latency_ms_max": round(latencies[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--max-running-jobs", type=int, default=8)
    parser.add_argument("--state-dir", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="v2server-bench-jobs-") as temporary:
        process, port = _start_server(args.state_dir or temporary, args.max_running_jobs)
        try:
            asyncio.run(_run(20, 4, port, 5))  # warm-up
            result = asyncio.run(_run(args.jobs, args.concurrency, port, args.latency_jobs))
        finally:
            process.terminate()
            process.wait(timeout=60)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
