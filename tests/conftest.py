"""Shared fixtures: real servers on ephemeral loopback ports, over the bundled and the test repositories."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.assets import test_models
from v2server.server import V2Server
from v2server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_REPOSITORY = ROOT / "model_repository"


class RunningServer:
    """A ``V2Server`` on its own event loop thread, so synchronous clients can call it from the test."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="v2server-test-loop", daemon=True)
        self._thread.start()
        self.server = V2Server(settings)
        self._call(self.server.start(), timeout=180)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.server.metrics_port}/metrics"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.server.http_port}"

    def stop(self) -> None:
        self._call(self.server.stop(grace=1), timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()

    def _call(self, coroutine: object, timeout: float) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=timeout)  # type: ignore[arg-type]


def http_call(
    server: RunningServer, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request to a test server: status, headers (lower-case names), body."""
    connection = http.client.HTTPConnection(server.http_url, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def loopback_settings(*repositories: Path, **overrides: object) -> Settings:
    """Settings for a test server: loopback only, ephemeral ports."""
    values: dict[str, object] = {
        "model_repositories": tuple(repositories),
        "grpc_address": "127.0.0.1",
        "grpc_port": 0,
        "http_address": "127.0.0.1",
        "http_port": 0,
        "metrics_address": "127.0.0.1",
        "metrics_port": 0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@contextlib.contextmanager
def cli_process(
    args: list[str], until: str, command: Sequence[str] = (sys.executable, "-m", "v2server"),
    env: dict[str, str] | None = None,
) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """``python -m v2server ARGS`` until a log line matches ``until``; on exit SIGTERM, and it must exit 0.

    Yields the process and the log lines read so far (a test finds bound ports in them).
    """
    process = subprocess.Popen(
        [*command, *args], cwd=ROOT, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    assert process.stderr is not None
    try:
        log: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            log.append(process.stderr.readline())
            if re.search(until, log[-1]):
                break
        else:
            raise AssertionError(f"no log line matched {until!r}:\n{''.join(log)}")
        yield process, log
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        process.stderr.close()


def logged_port(log: list[str], pattern: str) -> int:
    """The port a ``... listening on ADDRESS:PORT`` style line reports."""
    for line in log:
        if match := re.search(pattern + r" [\d.]+:(\d+)", line):
            return int(match.group(1))
    raise AssertionError(f"no port logged for {pattern!r}")


@pytest.fixture(scope="session")
def test_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return test_models.build(tmp_path_factory.mktemp("test_models"))


@pytest.fixture(scope="session")
def broken_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return test_models.build_broken(tmp_path_factory.mktemp("broken_models"))


@pytest.fixture(scope="session")
def server(test_repository: Path) -> Iterator[RunningServer]:
    """One server for the session over the bundled models and the test models."""
    running = RunningServer(loopback_settings(BUNDLED_REPOSITORY, test_repository))
    yield running
    running.stop()
