"""The peers' environments and how to start them: MLServer and the KServe Python server, each in its own venv.

Each peer lives in ``<cache>/venv-<peer>`` so its dependencies never meet ours (stdlib only here: the harness
imports this from our venv). torch is installed first and pinned, so pip resolves the peer against the CPU build
already on disk instead of fetching a CUDA one. Both peers serve the very same ``model.pt`` files through our
small wrappers beside this module (``mlserver_runtime.py``, ``kserve_server.py``), with their defaults apart
from ports:

* MLServer 1.7: ``parallel_workers`` 1 (inference runs in one worker process beside the frontend, reached
  over IPC), ``max_batch_size`` 0 per model (adaptive batching off), ``debug`` true (an access log line per
  request on both transports), metrics on their own port (8082 by default: we pick a free one).
* KServe 0.21: one uvicorn worker (``--workers 1``), gRPC on with ``max_threads`` 4, ``max_asyncio_workers``
  min(32, cpus + 4), ``enable_latency_logging`` true (a log line per request), metrics at ``/metrics`` on the
  HTTP port, no batching (KServe batches in its agent sidecar, not in the Python server). It listens on
  0.0.0.0 and [::] whatever we ask (hard-coded); we only ever talk to 127.0.0.1.

A server is ready when ``GET /v2/health/ready`` and every ``GET /v2/models/{name}/ready`` answer 200.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.venv import ensure_venv

__all__ = ["PEERS", "REQUIREMENTS", "TORCH", "ModelSpec", "ensure_env", "launch", "ready_paths"]

HERE = Path(__file__).resolve().parent
TORCH = "torch==2.13.0"
# Latest releases that install and serve on Python 3.11 beside torch 2.13.0 (checked by check_peers.py), plus
# the resolved versions of the dependencies that shape their behaviour and speed, so reruns compare alike.
_COMMON = ("numpy==2.4.6", "grpcio==1.85.1", "protobuf==6.33.6", "pydantic==2.14.3", "orjson==3.13.0")
REQUIREMENTS: dict[str, tuple[str, ...]] = {
    # uvloop 0.22+ no longer creates a loop in get_event_loop(), which MLServer 1.7.1's inference worker calls
    # before running one: every worker dies at start and the server never becomes ready. MLServer caps
    # fastapi below 0.116 itself; its uvicorn comes without httptools (h11 parses HTTP).
    "mlserver": (
        "mlserver==1.7.1", "uvloop==0.21.0", "fastapi==0.115.14", "starlette==0.46.2", "uvicorn==0.54.0",
        *_COMMON,
    ),
    # fastapi 0.165 parses a body without Content-Type as bytes (strict_content_type), so KServe answers 400 to
    # tritonclient.http's JSON requests, which carry none; clients must send "Content-Type: application/json".
    "kserve": (
        "kserve==0.21.0", "fastapi==0.165.0", "starlette==1.10.0", "uvicorn==0.54.0", "uvloop==0.23.0",
        "httptools==0.9.0", *_COMMON,
    ),
}
PEERS = tuple(REQUIREMENTS)


@dataclass(frozen=True)
class ModelSpec:
    """One TorchScript model as a peer serves it.

    ``inputs`` are in the order ``forward`` takes them (requests may name them in any order); ``outputs`` name
    the returned tensor, or the tuple's tensors in order. ``datatypes`` may force V2 datatypes on outputs
    (by output name); otherwise they follow the returned tensors' dtypes.
    """

    name: str
    path: Path
    inputs: Sequence[str]
    outputs: Sequence[str]
    datatypes: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name, "path": str(Path(self.path).resolve()), "inputs": list(self.inputs),
            "outputs": list(self.outputs), "datatypes": dict(self.datatypes),
        }


def ensure_env(peer: str, cache: Path) -> Path:
    """Create (or reuse, when its requirements are unchanged) ``cache/venv-<peer>``; returns its python.

    ``bench.venv.ensure_venv`` stamps and locks it; torch goes in first and alone, so pip keeps the local CPU
    wheel instead of downloading a CUDA one.
    """
    if peer not in REQUIREMENTS:
        raise ValueError(f"unknown peer {peer!r}; expected one of {PEERS}")
    return ensure_venv(Path(cache) / f"venv-{peer}", REQUIREMENTS[peer], preinstall=(TORCH,))


def ready_paths(models: Sequence[ModelSpec]) -> list[str]:
    """The V2 paths that answer 200 once the server and every model are ready (the same on both peers)."""
    return ["/v2/health/ready", *(f"/v2/models/{model.name}/ready" for model in models)]


def launch(
    peer: str,
    python: Path,
    models: Sequence[ModelSpec],
    http_port: int,
    grpc_port: int,
    workdir: Path,
    *,
    metrics_port: int | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Argv and environment that start ``peer`` serving ``models`` on 127.0.0.1 (config files go in ``workdir``).

    The environment is a full one (ours plus ``PYTHONPATH`` for the wrappers); run the argv in any directory.
    Metrics stay on, as by default: KServe serves them on the HTTP port, MLServer on its own ``metrics_port``
    (a free one when not given; its default 8082 would clash between runs).
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(HERE), "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    if peer == "mlserver":
        _write_mlserver(models, http_port, grpc_port, metrics_port or _free_port(), workdir)
        return [str(Path(python).parent / "mlserver"), "start", str(workdir)], env
    if peer == "kserve":
        specs = workdir / "models.json"
        specs.write_text(json.dumps([model.as_json() for model in models], indent=2))
        argv = [
            str(python), str(HERE / "kserve_server.py"), "--models", str(specs),
            "--http_port", str(http_port), "--grpc_port", str(grpc_port),
        ]
        return argv, env
    raise ValueError(f"unknown peer {peer!r}; expected one of {PEERS}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _write_mlserver(
    models: Sequence[ModelSpec], http_port: int, grpc_port: int, metrics_port: int, workdir: Path
) -> None:
    """``settings.json`` (loopback, ports) and one folder with a ``model-settings.json`` per model."""
    for stale in workdir.glob("*/model-settings.json"):
        stale.unlink()
    settings = {
        "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "load_models_at_startup": True,
        # where MLServer writes its own files (default: the current directory's .envs and .metrics)
        "environments_dir": str(workdir / ".envs"),
        "metrics_dir": str(workdir / ".metrics"),
    }
    (workdir / "settings.json").write_text(json.dumps(settings, indent=2))
    for model in models:
        folder = workdir / model.name
        folder.mkdir(exist_ok=True)
        spec = model.as_json()
        model_settings = {
            "name": model.name,
            "implementation": "mlserver_runtime.TorchScriptRuntime",
            "parameters": {
                "uri": spec["path"],
                "extra": {"inputs": spec["inputs"], "outputs": spec["outputs"], "datatypes": spec["datatypes"]},
            },
        }
        (folder / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
