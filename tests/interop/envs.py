"""The third-party clients the interop suite drives, each in a venv of its own under ``.venv-interop/``.

kserve and mlserver pin conflicting web stacks (fastapi, starlette, uvloop), and neither belongs in our
``.venv``, so each gets ``.venv-interop/<name>``; tritonclient is a dev dependency of ours and runs from ``.venv``
(the env named ``"project"`` in ``conftest.run_client``). Every version is pinned so reruns install alike; torch
is never installed (none of these clients needs it; ``ensure_env`` refuses a venv that got it anyway).

``make test`` builds them once (``make interop-envs``: ``python -m tests.interop.envs [NAME ...]``); a stamp
and a lock (``bench.venv.ensure_venv``) make later calls a cheap check.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.venv import ensure_venv

__all__ = ["REQUIREMENTS", "ROOT", "VENVS", "ensure_env"]

ROOT = Path(__file__).resolve().parents[2]
VENVS = ROOT / ".venv-interop"
_WIRE = ("numpy==2.4.6", "grpcio==1.85.1", "protobuf==6.33.6", "pydantic==2.14.3", "orjson==3.13.0")
REQUIREMENTS: dict[str, tuple[str, ...]] = {
    # bench/peers/envs.py's known-good KServe stack, minus torch; httpx is what InferenceRESTClient speaks.
    "kserve": (
        "kserve==0.21.0", "fastapi==0.165.0", "starlette==1.10.0", "uvicorn==0.54.0", "uvloop==0.23.0",
        "httptools==0.9.0", "httpx==0.28.1", *_WIRE,
    ),
    # bench/peers/envs.py's known-good MLServer stack, minus torch, plus pandas for its codecs.
    "mlserver": (
        "mlserver==1.7.1", "uvloop==0.21.0", "fastapi==0.115.14", "starlette==0.46.2", "uvicorn==0.54.0",
        "pandas==2.3.3", *_WIRE,
    ),
    # The Open Inference Protocol's generated clients: REST (openapi, on httpx) and gRPC stubs.
    "oip": (
        "open-inference-openapi==2.0.0.1", "open-inference-grpc==2.0.0", "httpx==0.28.1",
        "grpcio==1.85.1", "protobuf==6.33.6", "pydantic==2.14.3",
    ),
}


def ensure_env(name: str) -> Path:
    """Build ``.venv-interop/<name>`` once (rebuilt when its pins change); returns its python."""
    if name not in REQUIREMENTS:
        raise ValueError(f"unknown interop env {name!r}; expected one of {sorted(REQUIREMENTS)}")
    python = ensure_venv(VENVS / name, REQUIREMENTS[name])
    torch = list((VENVS / name / "lib").glob("python*/site-packages/torch"))
    if torch:
        raise RuntimeError(f"{torch[0]}: a dependency pulled torch into the {name!r} interop venv; pin it out")
    return python


def main(argv: list[str]) -> int:
    """Build the named envs (all by default), progress on stderr."""
    names = argv or sorted(REQUIREMENTS)
    for name in names:
        print(f"[interop] {name}: {ensure_env(name)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
