"""Shared fixtures: real servers on ephemeral loopback ports, over the bundled and the test repositories."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
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

    def stop(self) -> None:
        self._call(self.server.stop(grace=1), timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()

    def _call(self, coroutine: object, timeout: float) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=timeout)  # type: ignore[arg-type]


def loopback_settings(*repositories: Path, **overrides: object) -> Settings:
    """Settings for a test server: loopback only, ephemeral ports."""
    values: dict[str, object] = {
        "model_repositories": tuple(repositories),
        "grpc_address": "127.0.0.1",
        "grpc_port": 0,
        "http_address": "127.0.0.1",
        "http_port": 0,
        "metrics_port": 0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


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
