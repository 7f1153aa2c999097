"""Jobs survive ``kill -9``: every accepted job is run or delivered exactly once, as the receiver counts them.

A ``python -m v2server`` process with ``--state-dir`` accepts jobs while the receiver is down (every delivery
fails) and a slow model keeps others queued or running; it is killed with SIGKILL; a new process on the same
state folder resumes them. The receiver, up again, must see each job's result accepted once (by its
``Idempotency-Key``), with the right data.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, logged_port
from tests.integration.test_jobs import Receiver, _repository


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def _start(repository: Path, state: Path) -> tuple[subprocess.Popen[str], int]:
    args = [
        "--model-repository", str(repository), "--http-address", "127.0.0.1", "--http-port", "0",
        "--allow-grpc=false", "--allow-metrics=false", "--state-dir", str(state), "--webhook-allow", "127.0.0.1",
        "--max-running-jobs", "1", "--webhook-backoff-secs", "0.05", "--webhook-backoff-max-secs", "0.2",
        "--webhook-attempts", "1000",
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "v2server", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stderr is not None
    log: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        log.append(process.stderr.readline())
        if re.search("server ready", log[-1]):
            return process, logged_port(log, "HTTP server listening on")
    process.kill()
    raise AssertionError("".join(log))


def _post(port: int, path: str, body: object) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", path, json.dumps(body))
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_accepted_jobs_survive_sigkill_and_are_delivered_once(tmp_path: Path, receiver: Receiver) -> None:
    repository = _repository(tmp_path / "repo", delay_us=300_000)
    state = tmp_path / "state"
    receiver.status = 503  # down: every delivery fails until the restart
    process, port = _start(repository, state)
    expected: dict[str, object] = {}
    try:
        for row in range(3):  # fast: they run, then their deliveries fail and are retried
            status, answer = _post(port, "/v1/example_adder/latest",
                                   {"data": [[row, row, 1, 1]], "response_webhook": receiver.url()})
            assert status == 202
            expected[answer["job"]] = [[row, row + 2]]
        for value in range(4):  # slow (one at a time, 0.3 s each): queued or running when the process dies
            status, answer = _post(port, "/v1/queued/latest", {"data": value, "response_webhook": receiver.url()})
            assert status == 202
            expected[answer["job"]] = 2 * value
        receiver.wait_for(lambda posts: len({p["headers"]["idempotency-key"] for p in posts}) >= 3)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert process.stderr is not None
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not any(p["status"] < 300 for p in receiver.posts)  # nothing was delivered before the kill

    receiver.status = 204
    process, port = _start(repository, state)
    try:
        posts = receiver.wait_for(
            lambda posts: {p["headers"]["idempotency-key"] for p in posts if p["status"] < 300} == set(expected),
            timeout=120,
        )
        accepted = Counter(p["headers"]["idempotency-key"] for p in posts if p["status"] < 300)
        assert accepted == Counter(set(expected))  # once each
        for post in (p for p in posts if p["status"] < 300):
            body = json.loads(post["body"])
            assert body == {"job": body["job"], "data": expected[body["job"]]}
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for job in expected:
            deadline = time.monotonic() + 60
            while True:
                connection.request("GET", f"/v1/jobs/{job}")
                answer = json.loads(connection.getresponse().read())
                if answer["status"] == "delivered" or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert answer["status"] == "delivered" and answer["data"] == expected[job]
        connection.close()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert process.stderr is not None
        process.stderr.close()
