"""``make bench-heavy``: heavy requests, one at a time, with a health poller alongside, on v2server and the peers.

Each case (``bench/heavy_cases.py``) is one heavy request (or a few at once) sent by its own client process
while a second process (``bench/heavy_poll.py``) polls ``GET /v2/health/live`` every 10 ms. For every case and
server it reports the request's answer and duration, the poller's worst latency while it ran (how long the
server stopped answering anything else), the server's peak RSS during the case and its idle RSS just before and
a few seconds after. Cases a server has no route or RPC for are ``n/a`` with the reason.

The servers are bench's own (``bench.servers.run_server``: same model files, ports, CPU pinning, clients on the
other CPU). By default each (case, server) gets a freshly started server loaded with only that case's models, so
its peak and idle RSS belong to that case; the servers take turns, so no two heavy requests ever overlap. Every
case has a deadline (``--timeout``, 120 s; past it the client is stopped and the case reported as a timeout), a
server whose RSS passes ``--rss-cap-gib`` is killed (reported as such) so the machine survives, the whole run
stops starting cases after ``--budget`` seconds, and only 127.0.0.1 is ever talked to.

Writes ``heavy.json`` (every number) and ``heavy.md`` (the table) to ``--out``, and prints the table.
``--quick`` runs every case at about a tenth of its size; ``--smoke`` (CI) runs tiny cases on one start of each
server (about a minute); ``--render heavy.json`` rewrites ``heavy.md`` from the numbers without running anything.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from bench.heavy_cases import CASES, Case, prepare
from bench.processes import Pinning, peak_rss_bytes, pinning, reset_peak_rss, rss_bytes, started, tree
from bench.servers import PEERS, Running, run_server

ROOT = Path(__file__).resolve().parents[1]
_MIB = 1 << 20
#: the cases --smoke runs (tiny sizes), all on one start of each server
SMOKE_CASES = ("gzip-json", "v1-adder", "grpc-empty-bytes", "stream-unread", "identity-1mib-aio")


def _say(message: str) -> None:
    print(f"[heavy {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Result:
    case: str
    server: str
    request: str = ""  # the case's size, in words
    status: str = ""  # HTTP status / gRPC code / what happened instead; "n/a" where the case does not apply
    seconds: float | None = None  # the heavy request's own duration (client side)
    detail: str = ""
    health: dict[str, object] = field(default_factory=dict)  # bench.heavy_poll's summary
    rss: dict[str, int] = field(default_factory=dict)  # idle_before, peak, peak_sampled, idle_after (bytes)
    note: str = ""  # n/a reason, timeout, server killed or exited
    client: dict[str, object] = field(default_factory=dict)  # the client's whole JSON answer


class RssWatch(threading.Thread):
    """Samples the server's resident set (all its processes) every ``interval`` s; kills it past ``cap`` bytes."""

    def __init__(self, pid: int, cap: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.cap, self.interval = pid, cap, interval
        self.peak, self.killed_at = 0, 0
        self._done = threading.Event()

    def run(self) -> None:
        pids, refreshed = tree(self.pid), time.monotonic()
        while not self._done.is_set():
            if time.monotonic() - refreshed > 1.0:  # new workers; scanning /proc every sample would cost CPU
                pids, refreshed = tree(self.pid), time.monotonic()
            current = rss_bytes(pids)
            self.peak = max(self.peak, current)
            if current > self.cap:
                self.killed_at = current
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                return
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _last_json(log: Path) -> dict[str, object] | None:
    with contextlib.suppress(OSError):
        for line in reversed(log.read_bytes().splitlines()):
            if line.startswith(b"{"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    return orjson.loads(line)  # type: ignore[no-any-return]
    return None


def _tail(log: Path) -> str:
    with contextlib.suppress(OSError):
        return " ".join(log.read_text(errors="replace").split())[-300:]
    return ""


def run_case(
    case: Case, size: int, payload: Path, live: Running, pin: Pinning, args: argparse.Namespace, logs: Path
) -> Result:
    """One heavy request against a running server, with the poller and the RSS watch around it."""
    result = Result(case.name, live.name)
    pid = live.pid
    result.rss["idle_before"] = rss_bytes(tree(pid))
    reset = reset_peak_rss(pid)
    watch = RssWatch(pid, args.rss_cap)
    watch.start()
    poll_argv = [sys.executable, "-m", "bench.heavy_poll", "--port", str(live.http_port),
                 "--interval", str(args.poll_interval), "--limit", str(args.timeout + 120)]
    client_argv = [
        sys.executable, "-m", "bench.heavy_cases", case.name, "--payload", str(payload), "--size", str(size),
        "--http-port", str(live.http_port), "--grpc-port", str(live.grpc_port), "--timeout", str(args.timeout),
    ]
    stem = f"{case.name}.{live.name}"
    with started(pin.client(poll_argv), logs / f"{stem}.poll.log", cwd=ROOT) as poller:
        time.sleep(args.lead)
        with started(pin.client(client_argv), logs / f"{stem}.client.log", cwd=ROOT) as client:
            try:
                client.wait(timeout=args.timeout + 30)  # its own requests stop at --timeout; imports, the hold
            except subprocess.TimeoutExpired:
                result.note = f"client stopped after {args.timeout + 30:.0f} s"
        time.sleep(args.tail)
        with contextlib.suppress(ProcessLookupError):
            os.kill(poller.pid, signal.SIGTERM)  # it lets the probe in flight finish for up to 10 s
        with contextlib.suppress(subprocess.TimeoutExpired):
            poller.wait(timeout=15)
    watch.stop()
    result.client = _last_json(logs / f"{stem}.client.log") or {}
    result.health = _last_json(logs / f"{stem}.poll.log") or {}
    result.status = str(result.client.get("status", "")) or ("timeout" if result.note else "client failed")
    result.seconds = result.client.get("seconds")  # type: ignore[assignment]
    result.detail = str(result.client.get("detail", "")) or _tail(logs / f"{stem}.client.log")
    if result.status == "UNIMPLEMENTED":  # the server has no such RPC: the case does not apply to it
        said = result.client.get("details") or result.detail
        result.status, result.detail = "n/a", ""
        result.note = f"no such RPC (UNIMPLEMENTED: {said}). {result.note}".strip()
    alive = _alive(pid)
    hwm = peak_rss_bytes(pid) if reset and alive else 0
    result.rss["peak_sampled"] = watch.peak
    result.rss["peak"] = max(hwm, watch.peak)
    if watch.killed_at:
        result.note = (f"server killed by the harness at {watch.killed_at / _MIB:,.0f} MiB RSS "
                       f"(--rss-cap-gib {args.rss_cap / (1 << 30):.1f}). {result.note}").strip()
    elif not alive:
        result.note = f"server exited during the case. {result.note}".strip()
    if alive:
        time.sleep(args.settle_after)
        result.rss["idle_after"] = rss_bytes(tree(pid))
    return result


def _groups(cases: Sequence[Case], servers: Sequence[str], fresh: str) -> list[tuple[str, list[Case]]]:
    """(server, cases) in the order they run, each group on one start of the server."""
    if fresh == "server":
        return [(server, [c for c in cases if c.applies(server)]) for server in servers]
    return [(server, [case]) for case in cases for server in servers if case.applies(server)]


def measure(args: argparse.Namespace, cases: Sequence[Case], servers: Sequence[str], pin: Pinning) -> list[Result]:
    from bench.models import build_repository

    payloads = args.cache / "heavy" / "payloads"
    logs = args.cache / "heavy" / "logs"
    requests = {}
    for case in cases:
        _say(f"payload {case.name} ({args.sizes[case.name]:,})")
        requests[case.name] = prepare(case, args.sizes[case.name], payloads)
    repository = build_repository(args.cache / "heavy" / "repo", extra=("simple_identity", "example_adder"))
    results = {(c.name, s): Result(c.name, s, requests[c.name][1], "n/a", note=c.why_not)
               for c in cases for s in servers if not c.applies(s)}
    began = time.monotonic()
    for server, group in _groups(cases, servers, args.fresh):
        if not group:
            continue
        if time.monotonic() - began > args.budget:
            for case in group:
                results[(case.name, server)] = Result(case.name, server, requests[case.name][1], "skipped",
                                                      note=f"--budget {args.budget:.0f} s spent")
            continue
        models = sorted({model for case in group for model in case.models})
        workdir = args.cache / "heavy" / "work" / (group[0].name if args.fresh == "case" else "all")
        try:
            with run_server(server, repository, models, pin, workdir, args.cache) as live:
                for case in group:
                    time.sleep(args.settle_before)
                    if not _alive(live.pid):
                        results[(case.name, server)] = Result(case.name, server, requests[case.name][1],
                                                              "not run", note="server gone (an earlier case)")
                        continue
                    try:
                        result = run_case(case, args.sizes[case.name], requests[case.name][0], live, pin, args, logs)
                    except Exception as exc:  # noqa: BLE001 (one broken case must not lose the others' results)
                        result = Result(case.name, server, status="harness error", note=f"{type(exc).__name__}: {exc}")
                    result.request = requests[case.name][1]
                    results[(case.name, server)] = result
                    _say(_line(result))
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            _say(f"{server}: {exc}")
            for case in group:
                results.setdefault((case.name, server), Result(case.name, server, requests[case.name][1],
                                                               "server failed", note=str(exc)[:300]))
    return [results[(c.name, s)] for c in cases for s in servers if (c.name, s) in results]


def _mib(value: object) -> str:
    return f"{int(value) / _MIB:,.0f}" if value else "-"  # type: ignore[call-overload]


def _time(result: Result) -> str:
    """The heavy request's duration; for the sequential identity requests, the mean per request."""
    if result.seconds is None:
        return "-"
    if "per_request_ms" in result.client:
        return f"{float(result.seconds) * 1e3:,.1f} ms each"
    return f"{float(result.seconds):,.2f} s"


def _worst(health: dict[str, object]) -> str:
    if not health:
        return "-"
    text = f"{float(health['worst_ms']):,.0f}"  # type: ignore[arg-type]
    return f">= {text} (unanswered)" if float(health.get("unanswered_ms") or 0) else text  # type: ignore[arg-type]


def _line(result: Result) -> str:
    return (f"{result.case:26} {result.server:9} {result.status:>9} {result.seconds or 0:8.2f} s  health worst "
            f"{_worst(result.health)} ms  peak {_mib(result.rss.get('peak'))} MiB  idle "
            f"{_mib(result.rss.get('idle_before'))} -> {_mib(result.rss.get('idle_after'))} MiB {result.note[:80]}")


def render(data: dict[str, object]) -> str:
    """The Markdown of ``heavy.md`` from ``heavy.json``'s contents."""
    results = [Result(**item) for item in data["results"]]  # type: ignore[attr-defined]
    settings: dict[str, object] = data["settings"]  # type: ignore[assignment]
    machine: dict[str, object] = data["machine"]  # type: ignore[assignment]
    pins: dict[str, str] = data["pinning"]  # type: ignore[assignment]
    interval_ms = float(settings["poll_interval"]) * 1e3  # type: ignore[arg-type]
    lines = [
        f"Heavy requests, mode `{settings['mode']}` ({data['date']}; {machine['cpu']}, {machine['cpus']} CPUs; "
        f"server pinned to CPU {pins['server_cpus'] or 'any'}, clients and poller to CPU "
        f"{pins['client_cpus'] or 'any'}; deadline {settings['timeout']:.0f} s per case; health polled every "
        f"{interval_ms:.0f} ms; idle RSS {settings['settle_after']} s after the case).",
        "",
        "| case | request | server | answer | time | health worst ms | health > 100 ms | peak RSS MiB "
        "| idle RSS MiB before -> after | detail |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.status == "n/a":
            text = " ".join(f"{r.note} {r.detail}".split())[:170].replace("|", "/")
            lines.append(f"| {r.case} | {r.request} | {r.server} | n/a | | | | | | {text} |")
            continue
        over = r.health.get("over_100ms")
        probes = r.health.get("probes")
        text = " ".join(f"{r.note} {r.detail}".split())[:170].replace("|", "/")
        cells = [
            r.case, r.request, r.server, r.status, _time(r),
            _worst(r.health), f"{over} of {probes}" if probes else "-", _mib(r.rss.get("peak")),
            f"{_mib(r.rss.get('idle_before'))} -> {_mib(r.rss.get('idle_after'))}", text,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Cases:", ""]
    for name, title in dict(data["cases"]).items():  # type: ignore[call-overload]
        lines.append(f"- `{name}`: {title}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default=",".join(["v2server", *PEERS]))
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    parser.add_argument("--quick", action="store_true", help="every case at about a tenth of its size")
    parser.add_argument("--smoke", action="store_true", help="tiny cases on one start of each server (CI)")
    parser.add_argument("--fresh", choices=("case", "server"), default="case",
                        help="start each server afresh for every case (default) or once for all its cases")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline of one case's requests, seconds")
    parser.add_argument("--budget", type=float, default=3600.0, help="no case starts after this many seconds")
    parser.add_argument("--rss-cap-gib", type=float, default=0.0,
                        help="kill a server whose RSS passes this (default: 70%% of MemAvailable at start)")
    parser.add_argument("--poll-interval", type=float, default=0.01, help="seconds between health probes")
    parser.add_argument("--lead", type=float, default=1.0, help="seconds of polling before the request")
    parser.add_argument("--tail", type=float, default=0.5, help="seconds of polling after it")
    parser.add_argument("--settle-before", type=float, default=2.0, help="idle seconds before a case")
    parser.add_argument("--settle-after", type=float, default=5.0, help="seconds before the idle RSS after it")
    parser.add_argument("--cache", type=Path, default=ROOT / ".bench", help="peers' environments, work files")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench")
    parser.add_argument("--render", type=Path, metavar="HEAVY_JSON", help="only rewrite heavy.md from this file")
    return parser


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 8 << 30


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.render:
        data = orjson.loads(args.render.read_bytes())
        text = render(data)
        (args.render.parent / "heavy.md").write_text(text + "\n")
        print(text)
        return 0
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.smoke:
        args.cases = ",".join(SMOKE_CASES)
        args.fresh, args.timeout, args.lead, args.tail = "server", 30.0, 0.3, 0.2
        args.settle_before, args.settle_after = 0.2, 1.0
    unknown = [name for name in args.cases.split(",") if name not in CASES]
    if unknown:
        _say(f"unknown cases {unknown}; known: {', '.join(CASES)}")
        return 2
    cases = [CASES[name] for name in args.cases.split(",")]
    servers = args.servers.split(",")
    args.sizes = {case.name: case.sizes[mode] for case in cases}
    args.rss_cap = int(args.rss_cap_gib * (1 << 30)) if args.rss_cap_gib else int(0.7 * _mem_available())
    pin = pinning()
    _say(f"mode {mode}; server CPU {pin.server_cpus or 'any'}, client CPU {pin.client_cpus or 'any'}; "
         f"RSS cap {args.rss_cap / (1 << 30):.1f} GiB; {len(cases)} cases on {', '.join(servers)}")
    started_at = time.monotonic()
    results = measure(args, cases, servers, pin)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "render"}
    data = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": len(os.sched_getaffinity(0)), "cpu": _cpu_model(),
                    "python": platform.python_version(), "mem_total_bytes": _mem_total()},
        "pinning": {"server_cpus": pin.server_cpus, "client_cpus": pin.client_cpus},
        "settings": {**settings, "mode": mode},
        "wall_seconds": round(time.monotonic() - started_at, 1),
        "cases": {case.name: case.title for case in cases},
        "results": [asdict(result) for result in results],
    }
    text = render(data)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "heavy.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    (args.out / "heavy.md").write_text(text + "\n")
    _say(f"wrote {args.out}/heavy.json and heavy.md in {data['wall_seconds']:.0f} s")
    return _smoke_verdict(results) if args.smoke else 0


def _smoke_verdict(results: Sequence[Result]) -> int:
    """CI's check that the scenario still works: every server started, v2server answered every case within its
    deadline, and every poller probed. What a peer answers is a finding, not a failure; no number is judged."""
    broken = [
        r for r in results
        if r.status in ("server failed", "not run", "client failed", "timeout", "harness error")
        or (r.status not in ("n/a", "skipped") and not r.health.get("probes"))
        or (r.server == "v2server" and r.status in ("error", "wrong answer"))
    ]
    for r in broken:
        _say(f"smoke: {r.case} on {r.server}: {r.status} {r.note} {r.detail}"[:400])
    return 1 if broken else 0


def _mem_total() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
