"""Measuring: a client process (wrk for REST, ``bench.loadgen_grpc`` for gRPC) against a running server.

A point gets a discarded warm-up, then timed runs; the point is their median. Before a server is measured on a
scenario, one request checks that it answers correctly, so no server is timed producing errors.

Each timed run also reads the server's CPU time (user + system, its whole process tree, ``/proc``) just before
the client starts sending and just after it has finished: ``cpu_seconds`` in the run, beside the client's count
of completed ``requests``. The point's ``cpu_us`` is the median over its runs of the CPU microseconds per
completed request, a figure that depends far less than infer/s on how busy the client or the machine was.
The gRPC client connects before the window opens (``--handshake``); wrk starts in a few milliseconds, so its
window is the process's, and an idle server spends next to nothing meanwhile.
"""

from __future__ import annotations

import http.client
import math
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import orjson

from bench.loadgen_grpc import METHOD
from bench.processes import Pinning, cpu_seconds
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
    cpu_us: float = 0.0  # the server's CPU time per completed request (median over runs); 0: not measured
    series: str = ""  # "pair": measured with the batching pairs (their own server start), apart from the grid


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
    scenario: Scenario, protocol: str, port: int, concurrency: int, seconds: float, warmup: float, payloads: Path,
    handshake: bool = False,
) -> list[str]:
    body_file = payloads / f"{scenario.name}.{protocol}.bin"
    if not body_file.exists():
        body_file.parent.mkdir(parents=True, exist_ok=True)
        body_file.write_bytes(scenario.body(protocol))
    if protocol == "grpc":
        return [
            sys.executable, "-m", "bench.loadgen_grpc", "--target", f"127.0.0.1:{port}", "--payload", str(body_file),
            "--concurrency", str(concurrency), "--seconds", str(seconds), "--warmup", str(warmup),
            *(["--handshake"] if handshake else []),
        ]
    headers = [f"{name}: {value}" for name, value in scenario.headers(protocol).items()]
    return [
        "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, math.ceil(seconds))}s", "--timeout", "60s",
        "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}{scenario.path}", "--", str(body_file), *headers,
    ]


def _run_client(argv: list[str], pin: Pinning, timeout: float, server_pid: int = 0) -> dict[str, object]:
    """Run one client to its end and return its JSON line; with ``server_pid``, add the server's ``cpu_seconds``.

    A client started with ``--handshake`` (the gRPC one) prints ``ready`` once connected and waits for a line on
    stdin: the CPU window opens then, not at the client's start.
    """
    handshake = "--handshake" in argv
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryFile() as stderr, subprocess.Popen(
        pin.client(argv), stdin=subprocess.PIPE if handshake else subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=stderr, cwd=Path(__file__).parents[1], bufsize=0,  # unbuffered: 'ready' is read alone
    ) as process:
        try:
            if handshake:
                _await_ready(process, deadline)
            before = cpu_seconds(server_pid) if server_pid else 0.0
            if handshake:
                assert process.stdin is not None
                process.stdin.write(b"go\n")  # unbuffered; communicate() closes stdin
            out, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            after = cpu_seconds(server_pid) if server_pid else 0.0
        except (subprocess.TimeoutExpired, RuntimeError, OSError) as exc:
            process.kill()
            process.communicate()
            stderr.seek(0)
            raise RuntimeError(f"client failed ({exc}): {stderr.read().decode(errors='replace')[-500:]}") from None
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace")
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"client failed ({process.returncode}): {errors[-500:]}")
    result: dict[str, object] = orjson.loads(lines[-1])
    if server_pid:
        result["cpu_seconds"] = after - before
    return result


def _await_ready(process: subprocess.Popen[bytes], deadline: float) -> None:
    """Until the client prints its ``ready`` line (or fails, or the deadline passes)."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(max(0.0, deadline - time.monotonic())):
            raise RuntimeError("no 'ready' from the client in time")
    line = process.stdout.readline()
    if line.strip() != b"ready":
        raise RuntimeError(f"expected 'ready' from the client, got {line[:200]!r}")


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


def run_once(
    point: Point, scenario: Scenario, port: int, pin: Pinning, seconds: float, payloads: Path, server_pid: int = 0
) -> None:
    """One timed run, appended to ``point.runs``; with ``server_pid``, the server's CPU time around it too."""
    argv = _client_argv(scenario, point.protocol, port, point.concurrency, seconds, 0, payloads, handshake=True)
    point.runs.append(_run_client(argv, pin, timeout=seconds + 120, server_pid=server_pid))


def summarise(point: Point) -> Point:
    """The point's numbers: the medians of its runs (errors during a run become its note)."""
    point.rate = statistics.median(float(run["rate"]) for run in point.runs)  # type: ignore[arg-type]
    point.p50_us = statistics.median(float(run["p50_us"]) for run in point.runs)  # type: ignore[arg-type]
    point.p99_us = statistics.median(float(run["p99_us"]) for run in point.runs)  # type: ignore[arg-type]
    per_request = [
        float(run["cpu_seconds"]) * 1e6 / float(run["requests"])  # type: ignore[arg-type]
        for run in point.runs if "cpu_seconds" in run and float(run["requests"]) > 0  # type: ignore[arg-type]
    ]
    point.cpu_us = statistics.median(per_request) if per_request else 0.0
    failures = [run["errors"] for run in point.runs if any(run["errors"].values())]  # type: ignore[union-attr]
    if failures:
        point.note = f"errors during the run: {failures}"
    return point
