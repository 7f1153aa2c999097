"""``make bench``: every scenario, protocol and concurrency on v2server, the peers and the echo limits.

The servers run side by side, pinned to one CPU, with clients pinned to another; they are started afresh for
each scenario (so a peak RSS belongs to that scenario) with only that scenario's model loaded, and the timed
runs of each point take turns between them. Every timed run also reads the server's CPU time around it, so
each point has its CPU microseconds per inference (``bench.measure``).

Then, on v2server alone, the batching pairs (``bench.scenarios.BATCHING_PAIRS``), each pair on one server start
of its own (points marked ``series: "pair"``): ``mlp-b1`` against ``mlp-b1-batching`` at concurrency 1 (every
batch one request: the CPU difference is the batcher's own cost) and at ``--batching-concurrency``, and
``heavy-b1`` against ``heavy-b1-batching`` at ``--batching-concurrency`` (what batching gains when the model's
forward is the cost). The model's own forward time is measured in-process for every scenario, and for
``heavy_mlp`` at batch 1 and 64.

Prints the table and the targets (``bench.report``), and writes ``results.json``, ``table.md``,
``chart-c1.png`` and ``chart-c16.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

from bench import report
from bench.measure import Point, check, run_once, run_seconds, summarise, warm_up
from bench.models import MODELS, build_repository
from bench.processes import Pinning, peak_rss_bytes, pinning
from bench.scenarios import BATCHING_PAIRS, PROTOCOLS, SCENARIOS, Scenario
from bench.servers import ECHOES, PEERS, Running, run_server

ROOT = Path(__file__).resolve().parents[1]
_ECHO_PROTOCOLS = {"grpc-echo": ("grpc",), "tornado-echo": ("rest-binary", "rest-json")}


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _forward(scenario: Scenario, repository: Path, pin: Pinning, workdir: Path) -> float:
    """The model's own forward time for the scenario's inputs, on the server's CPU."""
    inputs = workdir / f"{scenario.name}.npz"
    np.savez(inputs, **{f"arg{i}": tensor.array for i, tensor in enumerate(scenario.inputs)})
    argv = [sys.executable, "-m", "bench.limits", "forward", "--model", str(MODELS[scenario.model].file(repository)),
            "--inputs", str(inputs)]
    result = subprocess.run(pin.server(argv), capture_output=True, check=True, timeout=300, cwd=ROOT)
    return float(orjson.loads(result.stdout.splitlines()[-1])["forward_s"])


def _protocols(server: str, args: argparse.Namespace) -> tuple[str, ...]:
    return _ECHO_PROTOCOLS.get(server, args.protocols)


def _measure(
    servers: list[str], scenarios: list[Scenario], protocols: tuple[str, ...], concurrencies: list[int],
    args: argparse.Namespace, pin: Pinning, repository: Path, series: str = "",
) -> list[Point]:
    """Every (server, scenario) pair on every protocol and concurrency, the servers running side by side.

    The timed runs of one point go round the pairs in turn (run 1 of each, then run 2 of each, ...), so a
    machine that slows down for a while weighs on every server alike and the medians stay comparable.
    """
    points: list[Point] = []
    payloads = args.cache / "payloads"
    models = sorted({scenario.model for scenario in scenarios})
    with contextlib.ExitStack() as stack:
        running: dict[str, Running] = {}
        for server in servers:
            try:
                running[server] = stack.enter_context(
                    run_server(server, repository, models, pin, args.cache / "work", args.cache)
                )
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                _say(f"{server}: {exc}")
                points += [Point(server, p, s.name, c, note=f"server failed: {exc}", series=series)
                           for s in scenarios for p in _protocols(server, args) for c in concurrencies]
        for protocol in protocols:
            pairs = []
            for server, live in running.items():
                for scenario in scenarios:
                    if protocol not in _protocols(server, args):
                        continue
                    problem = "" if server in ECHOES else check(scenario, protocol, live.http_port, live.grpc_port)
                    if problem:
                        _say(f"{server} {protocol} {scenario.name}: not measured: {problem}")
                        points += [Point(server, protocol, scenario.name, c, note=problem, series=series)
                                   for c in concurrencies]
                    else:
                        pairs.append((server, scenario))
            first_rate: dict[tuple[str, str], float] = {}
            for concurrency in concurrencies:
                points += _measure_point(
                    pairs, protocol, concurrency, running, first_rate, args, pin, payloads, series
                )
    return points


def _measure_point(
    pairs: list[tuple[str, Scenario]], protocol: str, concurrency: int, running: dict[str, Running],
    first_rate: dict[tuple[str, str], float], args: argparse.Namespace, pin: Pinning, payloads: Path,
    series: str = "",
) -> list[Point]:
    batch = {
        (server, s.name): (Point(server, protocol, s.name, concurrency, series=series), s) for server, s in pairs
    }
    failed: set[tuple[str, str]] = set()

    def attempt(key: tuple[str, str], step: Callable[[], None]) -> None:
        if key in failed:
            return
        try:
            step()
        except (RuntimeError, subprocess.SubprocessError) as exc:
            failed.add(key)
            batch[key][0].note = f"client failed: {exc}"

    for key, (point, scenario) in batch.items():
        port = running[point.server].port(protocol)
        attempt(key, lambda: warm_up(point, scenario, port, pin, args.warmup, payloads))  # noqa: B023
    for _ in range(args.repeats):
        for key, (point, scenario) in batch.items():
            live = running[point.server]
            port, seconds = live.port(protocol), run_seconds(point, args.seconds, first_rate.get(key, 0))
            attempt(key, lambda: run_once(point, scenario, port, pin, seconds, payloads, live.pid))  # noqa: B023
    done = []
    for key, (point, _) in batch.items():
        if key not in failed:
            summarise(point)
            first_rate.setdefault(key, point.rate)
        point.rss_bytes = peak_rss_bytes(running[point.server].pid)
        done.append(point)
        _say(f"{point.server:12} {protocol:11} {point.scenario:17} c={concurrency:<3} {point.rate:9,.0f}/s "
             f"p50 {point.p50_us / 1e3:7.2f} ms  p99 {point.p99_us / 1e3:7.2f} ms  CPU {point.cpu_us:7.0f} us/inf "
             f"{point.note[:100]}")
    return done


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--servers", default=",".join(["v2server", *PEERS, *ECHOES]))
    parser.add_argument("--scenarios", default="simple,mlp-b1,mlp-b8,identity-1mib")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--batching-concurrency", type=int, default=64,
                        help="v2server only: the batching pairs (mlp-b1 and heavy-b1, with and without dynamic "
                        "batching) at this concurrency, mlp-b1's also at 1 (0: skip them)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one timed run")
    parser.add_argument("--warmup", type=float, default=1.0, help="discarded run before each point")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per point (the median is reported)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".bench", help="peers' environments, work files")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench")
    parser.add_argument("--smoke", action="store_true",
                        help="one tiny scenario per server and a short heavy batching pair, about a minute")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.smoke:
        args.scenarios, args.concurrency, args.protocols = "simple", "1", "grpc,rest-json,rest-binary"
        args.seconds, args.warmup, args.repeats = 1.0, 0.5, 1
        args.batching_concurrency = min(args.batching_concurrency, 16)
    servers = args.servers.split(",")
    args.protocols = tuple(args.protocols.split(","))
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if shutil.which("wrk") is None:
        _say("wrk is not installed (Debian package 'wrk'; 'make bench' installs it)")
        return 2
    pin = pinning()
    _say(f"server CPU {pin.server_cpus or 'any'}, client CPU {pin.client_cpus or 'any'}")
    shutil.rmtree(args.cache / "payloads", ignore_errors=True)
    repository = build_repository(args.cache / "repo")
    points: list[Point] = []
    forward: dict[str, float] = {}
    for name in args.scenarios.split(","):
        scenario = SCENARIOS[name]
        forward[name] = _forward(scenario, repository, pin, args.cache)
        points += _measure(servers, [scenario], args.protocols, concurrencies, args, pin, repository)
    if "v2server" in servers and args.batching_concurrency:
        points += _batching_pairs(args, pin, repository, forward)
    peers = [s for s in servers if s in PEERS]
    text = report.table(points, peers, forward)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": len(os.sched_getaffinity(0)),
                    "cpu": _cpu_model(), "python": platform.python_version()},
        "pinning": {"server_cpus": pin.server_cpus, "client_cpus": pin.client_cpus},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "forward_seconds": forward,
    }
    report.write_json(args.out / "results.json", points, peers, meta)
    (args.out / "table.md").write_text(text + "\n")
    for concurrency in concurrencies:
        report.chart(args.out / f"chart-c{concurrency}.png", points, [*servers], concurrency,
                     f"infer/s at concurrency {concurrency} ({meta['machine']['cpu']}, server and client pinned "
                     "to one CPU each)")
    _say(f"wrote {args.out}/results.json, table.md and charts")
    return _smoke_verdict(points) if args.smoke else 0


def _batching_pairs(
    args: argparse.Namespace, pin: Pinning, repository: Path, forward: dict[str, float]
) -> list[Point]:
    """v2server alone, each pair on a server start of its own: the pair's two scenarios take turns.

    ``mlp-b1``'s pair also runs at concurrency 1, where each batch holds one request: the CPU difference between
    its two rows is what the batcher itself costs a request. ``heavy-b1``'s runs at ``--batching-concurrency``
    only. ``--smoke`` runs only the heavy pair (at concurrency 16 at most), without timing the forward.
    """
    points: list[Point] = []
    for plain, batched in BATCHING_PAIRS:
        if args.smoke and plain != "heavy-b1":
            continue
        concurrencies = [1, args.batching_concurrency] if plain == "mlp-b1" else [args.batching_concurrency]
        for name in (plain, "heavy-b64") if plain == "heavy-b1" else (plain,):
            if name not in forward and not args.smoke:
                forward[name] = _forward(SCENARIOS[name], repository, pin, args.cache)
        pair = [SCENARIOS[plain], SCENARIOS[batched]]
        points += _measure(["v2server"], pair, ("grpc", "rest-binary"), sorted(set(concurrencies)), args, pin,
                           repository, series="pair")
    return points


def _smoke_verdict(points: list[Point]) -> int:
    """CI's check that the benchmark still works: every server started and v2server and the echoes answered
    (the heavy batching pair included).

    A peer's unsupported protocol is a finding, not a failure; no timing is judged.
    """
    broken = [
        p for p in points
        if p.note.startswith("server failed") or (p.server not in PEERS and (p.note or p.rate <= 0))
    ]
    for point in broken:
        _say(f"smoke: {point.server} {point.protocol} {point.scenario}: {point.note or 'no requests completed'}")
    return 1 if broken else 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
