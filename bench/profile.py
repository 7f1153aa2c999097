"""Profile v2server under the benchmark's load: where its CPU goes, function by function.

``python -m bench.profile --scenario simple --protocol grpc --out FILE`` builds the benchmark's repository,
starts v2server pinned to the server CPU with only the scenario's model, warms it up with the usual client
(``bench.loadgen_grpc`` for gRPC, wrk for REST, pinned to the client CPU), then profiles one timed run of
``--seconds`` at ``--concurrency`` and prints the top functions (FILE.txt gets the same text).

``--tool cprofile`` (the default) runs the server through a launcher, ``python -m bench.profile launch
[--stats FILE] [--on-signal] -- <v2server arguments>``, that enables cProfile (at start, or from the first
SIGUSR1 to the second one with ``--on-signal``, which this tool uses so the profile covers the timed run only)
and writes the stats (``pstats``) when profiling stops and at exit (the server exits on SIGTERM). It sets
``v2server.backends.torchscript.instance.INLINE_BELOW_NS = 10**9``: under the profiler an execution takes
longer, and the instance would move the model to its thread; with it the profile shows the production path,
the model run inline on the event loop. cProfile sees the event loop's thread only, and its own overhead
weighs on small Python functions more than on C calls.

``--tool py-spy`` samples the running server (``py-spy record --format raw --function`` on its pid, idle
samples left out) during the timed run, and prints the top functions by self and inclusive samples from the
collapsed stacks (FILE holds them). py-spy cannot see into coroutines run by uvloop (stacks stop at
``Runner.run``), so the server runs with ``--event-loop asyncio`` unless ``--event-loop`` says otherwise.
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import os
import pstats
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.processes import Pinning

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["Collapsed", "collapsed", "main"]

_ON, _OFF = "[bench.profile] cProfile on", "[bench.profile] cProfile off"


# -- the launcher (inside the server process) ----------------------------------------------------------------


def _launch(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile launch")
    parser.add_argument("--stats", type=Path, default=Path("v2server.prof"),
                        help="where the pstats file goes")
    parser.add_argument("--on-signal", action="store_true",
                        help="profile from the first SIGUSR1 to the second (default: from start to exit)")
    parser.add_argument("--cprofile", action=argparse.BooleanOptionalAction, default=True,
                        help="--no-cprofile: only the inline setting (a server for py-spy to sample)")
    parser.add_argument("server_args", nargs=argparse.REMAINDER, help="-- then v2server's arguments")
    args = parser.parse_args(argv)
    server_args = args.server_args[1:] if args.server_args[:1] == ["--"] else args.server_args

    # The production inline path: a profiled execution is slower, and would send the model to its thread.
    from v2server.backends.torchscript import instance

    instance.INLINE_BELOW_NS = 10**9
    profiler = cProfile.Profile()
    state = {"on": False, "unsaved": False}

    def stop() -> None:
        if state["on"]:
            profiler.disable()
            state["on"] = False
            print(_OFF, file=sys.stderr, flush=True)
        if state["unsaved"]:
            profiler.dump_stats(str(args.stats))
            state["unsaved"] = False

    def start() -> None:
        state["on"] = state["unsaved"] = True
        print(_ON, file=sys.stderr, flush=True)
        profiler.enable()

    def toggle(signum: int, frame: object) -> None:  # runs on the main thread: the event loop's
        stop() if state["on"] else start()

    if args.cprofile:
        atexit.register(stop)
        if args.on_signal:
            signal.signal(signal.SIGUSR1, toggle)
        else:
            start()
    from v2server.cli import main as v2server_main

    return v2server_main(server_args)


# -- reading the results -------------------------------------------------------------------------------------


def cprofile_table(stats_file: Path, top: int, requests: int) -> str:
    """The ``top`` functions by own time (tottime), with their share and microseconds per request."""
    stats = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]
    total = sum(row[2] for row in stats.values()) or 1e-12
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    lines = [
        "cProfile, the event loop's thread only (not worker threads, nor C code that uvloop or gRPC's core "
        + f"run outside a Python call): {total:.3f} s of own time in all"
        + (f", {requests:,} requests ({total * 1e6 / requests:.1f} us each)" if requests else ""),
        f"{'own s':>8} {'own %':>6} {'us/req':>7} {'calls':>10} {'cum s':>8}  function",
    ]
    packages: Counter[str] = Counter()
    for (file, _, _), row in stats.items():
        packages[_package(file)] += row[2]
    shares = ", ".join(f"{name} {100 * own / total:.0f} %" for name, own in packages.most_common(8))
    lines.insert(1, f"own time by package: {shares}")
    for (file, line, name), (_, calls, own, cumulative, _) in rows:
        per_request = f"{own * 1e6 / requests:7.2f}" if requests else f"{'':7}"
        where = f"{name}" if file == "~" else f"{name} ({_short(file)}:{line})"
        share = 100 * own / total
        lines.append(f"{own:8.3f} {share:6.1f} {per_request} {calls:>10,} {cumulative:8.3f}  {where}")
    return "\n".join(lines)


def _package(path: str) -> str:
    """Whose a function is: its top-level package (asyncio apart from the rest of the standard library)."""
    if path == "~":
        return "C builtins"
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    if path.startswith(str(ROOT) + "/"):
        return path[len(str(ROOT)) + 1:].split("/", 1)[0]
    if "/asyncio/" in path:
        return "asyncio"
    return "stdlib" if "/lib/python3." in path or path.startswith("<frozen") else path


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.", str(ROOT) + "/"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3." else tail
    return path


@dataclass
class Collapsed:
    """Collapsed stacks (``frame;frame;...;leaf COUNT`` lines) added up per function."""

    total: int = 0
    own: Counter[str] = field(default_factory=Counter)  # samples with the function at the top of the stack
    inclusive: Counter[str] = field(default_factory=Counter)  # samples with the function on the stack

    def table(self, top: int) -> str:
        total = self.total or 1
        lines = [f"py-spy: {self.total:,} samples, every thread", "",
                 "self (the function itself was running):"]
        lines += [f"{100 * n / total:6.1f} %  {n:>7,}  {name}" for name, n in self.own.most_common(top)]
        trunk = [name for name, n in self.inclusive.items() if n == self.total]
        first, last = (trunk[0], trunk[-1]) if trunk else ("-", "-")
        lines += ["", f"inclusive (the function was on the stack; the {len(trunk)} on every sample left out, "
                  + f"from {first} to {last}):"]
        branches = [(name, n) for name, n in self.inclusive.most_common() if n < self.total][:top]
        lines += [f"{100 * n / total:6.1f} %  {n:>7,}  {name}" for name, n in branches]
        return "\n".join(lines)


def collapsed(lines: Iterable[str]) -> Collapsed:
    """Add up py-spy's raw output (the collapsed format); a recursive function counts once per stack."""
    result = Collapsed()
    for line in lines:
        line = line.rstrip("\n")
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = stack.split(";")
        result.total += samples
        result.own[frames[-1]] += samples
        for frame in dict.fromkeys(frames):
            result.inclusive[frame] += samples
    return result


# -- the run -------------------------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"[profile {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _wait_for_line(log: Path, text: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while text not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r} in {log} after {seconds:.0f} s")
        time.sleep(0.05)


def _parser() -> argparse.ArgumentParser:
    from bench.scenarios import PROTOCOLS, SCENARIOS

    parser = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenario", default="simple", choices=sorted(SCENARIOS))
    parser.add_argument("--protocol", default="grpc", choices=PROTOCOLS)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the profiled run")
    parser.add_argument("--warmup", type=float, default=1.0, help="discarded run before it (not profiled)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tool", choices=("cprofile", "py-spy"), default="cprofile")
    parser.add_argument("--event-loop", choices=("auto", "uvloop", "asyncio"),
                        help="v2server's --event-loop (default: its own for cprofile, asyncio for py-spy)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy: samples per second")
    parser.add_argument("--gil", action=argparse.BooleanOptionalAction, default=True,
                        help="py-spy: only samples holding the GIL (its idle detection counts threads "
                        "waiting on a queue or a condition as busy)")
    parser.add_argument("--py-spy-arg", action="append", default=[], metavar="ARG",
                        help="py-spy: one more argument for 'py-spy record' (--nonblocking, --native, ...)")
    parser.add_argument("--top", type=int, default=30, help="functions shown")
    parser.add_argument("--out", type=Path, required=True,
                        help="the profile (pstats for cprofile, collapsed stacks for py-spy); "
                        "the text to FILE.txt")
    parser.add_argument("--cache", type=Path, default=ROOT / ".bench", help="work files go to CACHE/profile")
    return parser


def _profile(args: argparse.Namespace) -> int:
    from bench.measure import Point, check, run_once, warm_up
    from bench.models import build_repository
    from bench.processes import free_port, pinning, started, wait_http_ok
    from bench.scenarios import SCENARIOS
    from bench.servers import _v2server_argv

    scenario = SCENARIOS[args.scenario]
    if args.protocol != "grpc" and shutil.which("wrk") is None:
        _say("wrk is not installed (Debian package 'wrk')")
        return 2
    spy = str(Path(sys.executable).parent / "py-spy")
    if args.tool == "py-spy" and not Path(spy).exists():
        spy = shutil.which("py-spy") or ""
        if not spy:
            _say("py-spy is not installed (pip install -e '.[bench]')")
            return 2
    pin = pinning()
    work = args.cache / "profile"
    shutil.rmtree(work / "payloads", ignore_errors=True)
    repository = build_repository(work / "repo")
    http_port, grpc_port = free_port(), free_port()
    server_args = _v2server_argv(repository, http_port, grpc_port)[1:]
    server_args += ["--model-control-mode", "explicit", f"--load-model={scenario.model}"]
    loop = args.event_loop or ("asyncio" if args.tool == "py-spy" else None)
    if loop:
        server_args += ["--event-loop", loop]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.unlink(missing_ok=True)
    if args.tool == "cprofile":
        argv = [sys.executable, "-m", "bench.profile", "launch", "--stats", str(args.out.resolve()),
                "--on-signal", "--", *server_args]
    else:  # the same launcher without cProfile: the inline setting, as py-spy's pauses slow executions too
        argv = [sys.executable, "-m", "bench.profile", "launch", "--no-cprofile", "--", *server_args]
    log = work / "logs" / f"v2server-{args.tool}.log"
    port = grpc_port if args.protocol == "grpc" else http_port
    point = Point("v2server", args.protocol, scenario.name, args.concurrency)
    _say(f"v2server (event loop: {loop or 'its default'}) on CPU {pin.server_cpus or 'any'}, "
         f"{args.protocol} {scenario.name} at concurrency {args.concurrency}, {args.tool}")
    with started(pin.server(argv), log, cwd=ROOT) as process:
        wait_http_ok(http_port, ["/v2/health/ready", f"/v2/models/{scenario.model}/ready"], process, 300)
        problem = check(scenario, args.protocol, http_port, grpc_port)
        if problem:
            _say(f"v2server does not answer correctly: {problem}")
            return 1
        warm_up(point, scenario, port, pin, args.warmup, work / "payloads")
        if args.tool == "cprofile":
            os.kill(process.pid, signal.SIGUSR1)
            _wait_for_line(log, _ON, 10)
            run_once(point, scenario, port, pin, args.seconds, work / "payloads", process.pid)
            os.kill(process.pid, signal.SIGUSR1)
            _wait_for_line(log, _OFF, 30)
        else:
            _spy_run(spy, process.pid, args, pin, lambda: run_once(
                point, scenario, port, pin, args.seconds, work / "payloads", process.pid
            ))
    run = point.runs[-1]
    requests = int(run["requests"])  # type: ignore[call-overload]
    cpu_us = float(run["cpu_seconds"]) * 1e6 / requests if requests else 0.0  # type: ignore[arg-type]
    rate = float(run["rate"])  # type: ignore[arg-type]
    head = [
        (
            f"v2server, {scenario.name} over {args.protocol}, concurrency {args.concurrency}, "
            f"{args.seconds:g} s: "
            f"{rate:,.0f} infer/s, {cpu_us:.0f} us of server CPU per inference under the profiler "
            f"(event loop: {loop or 'v2server default'})"
        ),
        "Launcher: INLINE_BELOW_NS = 10**9, so the model runs inline on the event loop as in production "
        + "(a profiled execution would otherwise be judged too slow and go to the instance's thread).",
    ]
    if args.tool == "cprofile":
        body = cprofile_table(args.out, args.top, requests)
    else:
        with args.out.open(errors="replace") as stacks:
            body = collapsed(stacks).table(args.top)
    text = "\n".join(head) + "\n\n" + body
    print(text)
    Path(f"{args.out}.txt").write_text(text + "\n")
    _say(f"wrote {args.out} and {args.out}.txt")
    return 0


def _spy_run(spy: str, pid: int, args: argparse.Namespace, pin: Pinning, load: Callable[[], None]) -> None:
    """py-spy attached to ``pid`` (on the client CPU) while ``load()`` runs, then stopped with SIGINT."""
    argv = [spy, "record", "--pid", str(pid), "--format", "raw", "--function", "--rate", str(args.rate),
            "--output", str(args.out), *(["--gil"] if args.gil else []), *args.py_spy_arg]
    spy_log = args.out.with_name(args.out.name + ".py-spy.log")
    with spy_log.open("wb") as output, subprocess.Popen(
        pin.client(argv), stdout=output, stderr=subprocess.STDOUT, start_new_session=True
    ) as recorder:
        try:
            deadline = time.monotonic() + 20
            while b"Sampling process" not in spy_log.read_bytes():
                if recorder.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"py-spy did not start: {spy_log.read_text(errors='replace')[-500:]}")
                time.sleep(0.05)
            load()
        finally:
            recorder.send_signal(signal.SIGINT)
            try:
                recorder.wait(timeout=60)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait(timeout=10)
    if not args.out.exists():
        raise RuntimeError(f"py-spy wrote nothing: {spy_log.read_text(errors='replace')[-500:]}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["launch"]:
        return _launch(argv[1:])
    return _profile(_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
