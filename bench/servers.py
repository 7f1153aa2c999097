"""The servers a benchmark starts: v2server, the peers (through ``peers/``), and the bare echo limits.

Each is described by how to start it, which protocols it speaks and how to tell it is ready; all listen on
127.0.0.1 on ports picked free for this run.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.models import MODELS
from bench.processes import Pinning, free_port, started, wait_http_ok, wait_tcp

__all__ = ["ECHOES", "PEERS", "Running", "run_server"]

PEERS = ("mlserver", "kserve")
ECHOES = ("grpc-echo", "tornado-echo")


@dataclass
class Running:
    name: str
    pid: int
    http_port: int
    grpc_port: int

    def port(self, protocol: str) -> int:
        return self.grpc_port if protocol == "grpc" else self.http_port


def _v2server_argv(repository: Path, http_port: int, grpc_port: int) -> list[str]:
    return [
        str(Path(sys.executable).parent / "v2server"), "--model-repository", str(repository),
        "--http-address", "127.0.0.1", "--http-port", str(http_port),
        "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc_port),
        "--metrics-address", "127.0.0.1", "--metrics-port", str(free_port()),
    ]


@contextlib.contextmanager
def run_server(
    name: str, repository: Path, models: Sequence[str], pin: Pinning, workdir: Path, cache: Path
) -> Iterator[Running]:
    """Start ``name`` pinned to the server CPU, wait until every model is ready, stop it on exit."""
    http_port, grpc_port = free_port(), free_port()
    env = None
    ready = ["/v2/health/ready", *(f"/v2/models/{model}/ready" for model in models)]
    if name == "v2server":
        argv = _v2server_argv(repository, http_port, grpc_port)
        argv += ["--model-control-mode", "explicit", *(f"--load-model={model}" for model in models)]
    elif name in ECHOES:
        port = grpc_port if name == "grpc-echo" else http_port
        argv = [sys.executable, "-m", "bench.limits", name, "--port", str(port)]
    elif name in PEERS:
        from bench.peers import envs

        python = envs.ensure_env(name, cache)
        specs = [
            envs.ModelSpec(m, MODELS[m].file(repository), MODELS[m].inputs, MODELS[m].outputs) for m in models
        ]
        argv, env = envs.launch(name, python, specs, http_port, grpc_port, workdir / name)
    else:
        raise ValueError(f"unknown server {name!r}")
    with started(pin.server(argv), workdir / "logs" / f"{name}.log", env=env, cwd=Path(__file__).parents[1]) as process:
        if name == "grpc-echo":
            wait_tcp(grpc_port, process, 60)
        elif name == "tornado-echo":
            wait_tcp(http_port, process, 60)
        else:
            wait_http_ok(http_port, ready, process, 300)
        yield Running(name, process.pid, http_port, grpc_port)
