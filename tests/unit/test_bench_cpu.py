"""The benchmark's CPU accounting: ``bench.processes.cpu_seconds`` over a process tree, the client handshake
that opens the window, and CPU per inference on a point (``bench.measure``).

Nothing here judges a timing: CPU is burnt by amount (``time.process_time``), never for a wall-clock time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.measure import Point, _run_client, run_once, summarise
from bench.processes import Pinning, cpu_seconds, free_port, started, tree, wait_tcp
from bench.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parents[2]
TICK = 1 / os.sysconf("SC_CLK_TCK")

# burns BURN CPU seconds (by its own CPU clock), says how many it used, then waits for its stdin to close
_BURNER = textwrap.dedent("""
    import sys, time
    while time.process_time() < float(sys.argv[1]):
        pass
    print(time.process_time(), flush=True)
    sys.stdin.read()
""")


def test_a_child_that_burns_cpu_counts_in_its_parents_tree_alive_and_reaped() -> None:
    me = os.getpid()
    before = cpu_seconds(me)
    child = subprocess.Popen(
        [sys.executable, "-c", _BURNER, "0.3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        burnt = float(child.stdout.readline())
        assert child.pid in tree(me)
        alive = cpu_seconds(me)
        assert cpu_seconds(child.pid) >= burnt - 2 * TICK  # the child alone
    finally:
        child.communicate(timeout=60)
    reaped = cpu_seconds(me)  # the child is gone: its time now counts in our cutime + cstime
    assert child.pid not in tree(me)
    assert alive - before >= burnt - 2 * TICK
    assert reaped >= alive - 2 * TICK


def test_an_unknown_process_has_no_cpu_time() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=60)
    assert cpu_seconds(child.pid) == 0.0  # gone and reaped: nothing to read, no error


_FAKE_CLIENT = textwrap.dedent("""
    import sys
    print("ready", flush=True)
    assert sys.stdin.readline() == "go\\n"
    print('{"requests": 10, "rate": 10.0, "p50_us": 1.0, "p99_us": 2.0, "errors": {}}', flush=True)
""")


def test_a_handshake_client_is_let_go_and_the_servers_cpu_is_read_around_it() -> None:
    server = subprocess.Popen([sys.executable, "-c", _BURNER, "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        result = _run_client([sys.executable, "-c", _FAKE_CLIENT, "--handshake"], Pinning("", ""), 60, server.pid)
    finally:
        server.communicate(timeout=60)
    assert result["requests"] == 10
    assert 0.0 <= float(result["cpu_seconds"]) < 1.0  # type: ignore[arg-type]  # an idle "server"


def test_a_handshake_client_that_never_gets_ready_fails_the_run() -> None:
    with pytest.raises(RuntimeError, match="ready"):
        _run_client([sys.executable, "-c", "print('oops')", "--handshake"], Pinning("", ""), 60, os.getpid())


def test_cpu_per_inference_is_the_median_over_runs() -> None:
    point = Point("v2server", "grpc", "simple", 16)
    for cpu, requests in ((0.5, 1000), (0.9, 1000), (0.6, 1000)):  # 500, 900, 600 us each
        point.runs.append({"requests": requests, "rate": requests / 2, "p50_us": 1.0, "p99_us": 2.0,
                           "errors": {}, "cpu_seconds": cpu})
    assert summarise(point).cpu_us == pytest.approx(600.0)
    old = Point("v2server", "grpc", "simple", 16, runs=[{"requests": 5, "rate": 1.0, "p50_us": 1.0,
                                                          "p99_us": 1.0, "errors": {}}])
    assert summarise(old).cpu_us == 0.0  # runs without a CPU reading: not measured


def test_a_timed_grpc_run_against_the_echo_reads_its_cpu(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "bench.limits", "grpc-echo", "--port", str(port)]
    with started(argv, tmp_path / "echo.log", cwd=ROOT) as echo:
        wait_tcp(port, echo, 60)
        point = Point("grpc-echo", "grpc", "simple", 1)
        run_once(point, SCENARIOS["simple"], port, Pinning("", ""), 0.5, tmp_path / "payloads", echo.pid)
    run = point.runs[0]
    assert int(run["requests"]) > 0 and not any(run["errors"].values())  # type: ignore[arg-type, union-attr]
    assert float(run["cpu_seconds"]) > 0  # type: ignore[arg-type]
    assert summarise(point).cpu_us > 0
