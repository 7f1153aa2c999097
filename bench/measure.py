"""Measuring: a client process (wrk for REST, ``bench.loadgen_grpc`` for gRPC) against a running server.

A point gets a discarded warm-up, then timed runs; the point is their median. Before a server is measured on a
scenario, one request checks that it answers correctly, so no server is timed producing errors.
"""

from __future__ import annotations

import http.client
import math
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import orjson

from bench.loadgen_grpc import METHOD
from bench.processes import Pinning
from bench.scenarios import Scenario
from v2server._proto import grpc_service_pb2 as pb

__all__ = ["Point", "check", "run_once", "run_seconds", "summarise", "warm_up"]

WRK_SCRIPT = Path(__file__).parent / "wrk" / "post.lua"


@dataclass
class Point:
    server: str
    protocol: str
    scenario: str
    concurrency: int
    rate: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    rss_bytes: int = 0
    runs: list[dict[str, object]] = field(default_factory=list)
    note: str = ""  # why a point is missing (unsupported protocol, wrong answer)


def check(scenario: Scenario, protocol: str, http_port: int, grpc_port: int) -> str:
    """'' when the server answers ``scenario`` correctly over ``protocol``, else what went wrong."""
    try:
        if protocol == "grpc":
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                raw = channel.unary_unary(METHOD)(scenario.body("grpc"), timeout=120)
            names = [output.name for output in pb.ModelInferResponse.FromString(raw).outputs]
        else:
            connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=120)
            connection.request("POST", scenario.path, scenario.body(protocol), scenario.headers(protocol))
            response = connection.getresponse()
            body = response.read()
            connection.close()
            if response.status != 200:
                detail = " ".join(body.decode(errors="replace").split())
                if protocol == "rest-binary":  # the end of a traceback says what failed
                    return f"binary-tensor extension unsupported (HTTP {response.status}: ...{detail[-90:]})"
                return f"HTTP {response.status}: {detail[:300]}"
            length = response.getheader("Inference-Header-Content-Length")
            header = orjson.loads(body[: int(length)] if length else body)
            names = [output["name"] for output in header["outputs"]]
            if protocol == "rest-binary" and not length:
                return "answered in JSON: no binary outputs (Triton's binary-tensor extension unsupported)"
    except grpc.RpcError as exc:
        return f"gRPC {exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
    except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if sorted(names) != sorted(scenario.outputs):
        return f"outputs {names}, expected {list(scenario.outputs)}"
    return ""


def _client_argv(
    scenario: Scenario, protocol: str, port: int, concurrency: int, seconds: float, warmup: float, payloads: Path
) -> list[str]:
    body_file = payloads / f"{scenario.name}.{protocol}.bin"
    if not body_file.exists():
        body_file.parent.mkdir(parents=True, exist_ok=True)
        body_file.write_bytes(scenario.body(protocol))
    if protocol == "grpc":
        return [
            sys.executable, "-m", "bench.loadgen_grpc", "--target", f"127.0.0.1:{port}", "--payload", str(body_file),
            "--concurrency", str(concurrency), "--seconds", str(seconds), "--warmup", str(warmup),
        ]
    headers = [f"{name}: {value}" for name, value in scenario.headers(protocol).items()]
    return [
        "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, math.ceil(seconds))}s", "--timeout", "60s",
        "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}{scenario.path}", "--", str(body_file), *headers,
    ]


def _run_client(argv: list[str], pin: Pinning, timeout: float) -> dict[str, object]:
    result = subprocess.run(
        pin.client(argv), capture_output=True, timeout=timeout, check=False, cwd=Path(__file__).parents[1]
    )
    lines = [line for line in result.stdout.decode().splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"client failed ({result.returncode}): {result.stderr.decode()[-500:]}")
    return orjson.loads(lines[-1])  # type: ignore[no-any-return]


def run_seconds(point: Point, seconds: float, expected_rate: float) -> float:
    """How long one timed run of ``point`` lasts: longer for a very slow server, so each client finishes twice."""
    if expected_rate and expected_rate * seconds < 2 * point.concurrency:
        return min(60.0, math.ceil(2 * point.concurrency / expected_rate))
    return seconds


def warm_up(point: Point, scenario: Scenario, port: int, pin: Pinning, seconds: float, payloads: Path) -> None:
    """A discarded run at the point's concurrency (caches, allocator, connection set-up)."""
    if seconds > 0:
        argv = _client_argv(scenario, point.protocol, port, point.concurrency, seconds, 0, payloads)
        _run_client(argv, pin, timeout=seconds + 120)


def run_once(point: Point, scenario: Scenario, port: int, pin: Pinning, seconds: float, payloads: Path) -> None:
    """One timed run, appended to ``point.runs``."""
    argv = _client_argv(scenario, point.protocol, port, point.concurrency, seconds, 0, payloads)
    point.runs.append(_run_client(argv, pin, timeout=seconds + 120))


def summarise(point: Point) -> Point:
    """The point's numbers: the median of its runs (errors during a run become its note)."""
    point.rate = statistics.median(float(run["rate"]) for run in point.runs)  # type: ignore[arg-type]
    point.p50_us = statistics.median(float(run["p50_us"]) for run in point.runs)  # type: ignore[arg-type]
    point.p99_us = statistics.median(float(run["p99_us"]) for run in point.runs)  # type: ignore[arg-type]
    failures = [run["errors"] for run in point.runs if any(run["errors"].values())]  # type: ignore[union-attr]
    if failures:
        point.note = f"errors during the run: {failures}"
    return point
