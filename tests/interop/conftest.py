"""The interop suite's fixtures: one real v2server process, and a runner for client scripts in their own venvs.

The server starts as users start it (``python -m v2server`` over the bundled ``model_repository/``), on loopback
with ephemeral ports read back from its log. Each third-party client runs as a standalone script under
``clients/`` with the python of its venv (``envs.ensure_env``), in a temporary directory and an environment that
cannot reach our package, and prints one JSON object of what it saw; the tests assert on that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BUNDLED_REPOSITORY, cli_process, logged_port
from tests.interop.envs import ensure_env

CLIENTS = Path(__file__).resolve().parent / "clients"
RunClient = Callable[..., Any]


@dataclass(frozen=True)
class InteropServer:
    """Where the session's server listens (always 127.0.0.1)."""

    http_port: int
    grpc_port: int

    @property
    def http_address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.http_address}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


@pytest.fixture(scope="session")
def interop_server() -> Iterator[InteropServer]:
    """``python -m v2server`` on the bundled models; SIGTERM (then kill) at the end of the session."""
    args = [
        "--model-repository", str(BUNDLED_REPOSITORY),
        "--http-address", "127.0.0.1", "--http-port", "0",
        "--grpc-address", "127.0.0.1", "--grpc-port", "0",
        "--metrics-address", "127.0.0.1", "--metrics-port", "0",
    ]
    with cli_process(args, until="server ready") as (process, log):
        server = InteropServer(
            http_port=logged_port(log, "HTTP server listening on"),
            grpc_port=logged_port(log, "gRPC server listening on"),
        )
        # Keep reading the log, so a chatty server never blocks on a full pipe; it ends at the process's EOF.
        assert process.stderr is not None
        drain = threading.Thread(target=process.stderr.read, name="interop-server-log", daemon=True)
        drain.start()
        yield server


def _python(env: str) -> Path:
    """``"project"`` is our own venv (tritonclient is a dev dependency); any other name an interop venv."""
    return Path(sys.executable) if env == "project" else ensure_env(env)


@pytest.fixture(scope="session")
def run_client(tmp_path_factory: pytest.TempPathFactory) -> RunClient:
    """``run_client(env, script, *args, timeout=120)``: run ``clients/<script>``, return its last stdout line as JSON.

    A nonzero exit or a timeout fails the calling test with the script's stderr.
    """
    environment = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    environment["PYTHONUNBUFFERED"] = "1"

    def run(env: str, script: str, *args: str, timeout: float = 120) -> Any:
        argv = [str(_python(env)), str(CLIENTS / script), *args]
        try:
            done = subprocess.run(
                argv, check=False, cwd=tmp_path_factory.mktemp("client"), env=environment, capture_output=True,
                text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired as expired:  # its output is bytes, even with text=True
            stderr = expired.stderr.decode(errors="replace") if isinstance(expired.stderr, bytes) else expired.stderr
            pytest.fail(f"{script} ({env}) ran past {timeout} s; stderr:\n{stderr}")
        if done.returncode != 0:
            pytest.fail(f"{script} ({env}) exited {done.returncode}; stderr:\n{done.stderr}")
        lines = done.stdout.strip().splitlines()
        if not lines:
            pytest.fail(f"{script} ({env}) printed nothing; stderr:\n{done.stderr}")
        return json.loads(lines[-1])

    return run


# A module that probes both transports defines a ``seen`` fixture (its probe's JSON, with "rest" and "grpc");
# these two give its tests each transport's half.
@pytest.fixture(scope="module")
def rest(seen: dict[str, Any]) -> dict[str, Any]:
    return seen["rest"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def grpc(seen: dict[str, Any]) -> dict[str, Any]:
    return seen["grpc"]  # type: ignore[no-any-return]
