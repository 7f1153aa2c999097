"""The benchmark's output: a table with ratios, the targets, a JSON file of every number, and a PNG chart.

Ratios compare points measured in the same run: v2server over the better peer (the one with more infer/s) on the
same scenario, protocol and concurrency, and over the echo of its own stack (grpc.aio for gRPC, Tornado for REST),
the most any server on that stack can do with this client.

The headline is CPU per inference: the server's CPU time (its whole process tree) over a timed run divided by
the requests completed in it ("CPU us/inf", every row), and for v2server its multiple of the echo's on the same
point ("CPU x echo"). It depends far less than infer/s on how fast the client was or how busy the machine.

After the table come the targets (``targets``): each v2server "CPU x echo" against ``CPU_TARGETS``, where the
scenario has one (the MLP rows include the model's forward, which the echo lacks: shown, not judged); the
batching gain of each batching pair (infer/s with dynamic batching over infer/s without, same protocol and
concurrency), ``heavy-b1``'s against ``GAIN_TARGETS``; and the batcher's own CPU per request, ``mlp-b1-batching``
minus ``mlp-b1`` in CPU us/inf at concurrency 1 (one request a batch, so the same forward), against
``BATCHER_TARGET_US``.

Results written before CPU accounting (no ``cpu_us``) still rebuild: their CPU cells show "-".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from bench.measure import Point
from bench.scenarios import BATCHING_PAIRS

__all__ = [
    "BATCHER_TARGET_US", "CPU_TARGETS", "GAIN_TARGETS", "Target", "chart", "ratios", "table", "targets", "write_json",
]

_ECHO_OF = {"grpc": "grpc-echo", "rest-json": "tornado-echo", "rest-binary": "tornado-echo"}

#: (scenario, protocol) -> the most CPU per inference v2server may spend, as a multiple of its echo's
CPU_TARGETS = {
    ("simple", "grpc"): 1.3, ("simple", "rest-binary"): 1.3, ("simple", "rest-json"): 1.6,
    ("identity-1mib", "grpc"): 1.15, ("identity-1mib", "rest-binary"): 1.15,
}
#: why a v2server point with an echo has no CPU target: by (scenario, protocol), else by scenario
_NO_TARGET = {
    ("identity-1mib", "rest-json"): "1 MiB of JSON numbers",
    ("mlp-b1", ""): "includes the model's forward, which the echo lacks",
    ("mlp-b8", ""): "includes the model's forward, which the echo lacks",
}
#: batching pairs (bench.scenarios.BATCHING_PAIRS): the least gain in infer/s the batched one should show
GAIN_TARGETS = {"heavy-b1": 3.0}
#: the most CPU the batcher itself may add to one request (us)
BATCHER_TARGET_US = 30.0

Key = tuple[str, str, int, str]


def _key(point: Point) -> Key:
    return point.scenario, point.protocol, point.concurrency, point.series


def ratios(points: Sequence[Point], peers: Sequence[str]) -> dict[Key, dict[str, float]]:
    """For each v2server point: ``x_best_peer``, ``p99_vs_best_peer``, ``of_echo`` and ``cpu_x_echo`` (where
    both sides exist); keyed by scenario, protocol, concurrency and series."""
    index = {(p.server, *_key(p)): p for p in points if p.rate > 0 and not p.note}
    result: dict[Key, dict[str, float]] = {}
    for point in points:
        if point.server != "v2server" or point.rate <= 0:
            continue
        row: dict[str, float] = {}
        rivals = [index[(peer, *_key(point))] for peer in peers if (peer, *_key(point)) in index]
        if rivals:
            best = max(rivals, key=lambda p: p.rate)
            row["x_best_peer"] = point.rate / best.rate
            row["p99_vs_best_peer"] = point.p99_us / best.p99_us if best.p99_us else 0.0
        echo = index.get((_ECHO_OF[point.protocol], *_key(point)))
        if echo is not None:
            row["of_echo"] = point.rate / echo.rate
            if point.cpu_us > 0 and echo.cpu_us > 0:
                row["cpu_x_echo"] = point.cpu_us / echo.cpu_us
        result[_key(point)] = row
    return result


@dataclass
class Target:
    """One figure of the Targets block: ``target`` None means shown, not judged (``why`` says why)."""

    kind: str  # "cpu_x_echo", "batching_gain" or "batcher_cpu_us"
    scenario: str
    protocol: str
    concurrency: int
    series: str
    value: float
    target: float | None
    verdict: str  # "MET", "MISSED" or "info"
    why: str = ""


def _judge(
    kind: str, key: Key, value: float, target: float | None, at_most: bool, why: str = ""
) -> Target:
    if target is None:
        verdict = "info"
    else:
        verdict = "MET" if (value <= target if at_most else value >= target) else "MISSED"
    return Target(kind, *key, value=value, target=target, verdict=verdict, why="" if target is not None else why)


def targets(points: Sequence[Point]) -> list[Target]:
    """Every target the points allow judging, and the figures shown beside them without a target."""
    found: list[Target] = []
    for key, row in ratios(points, ()).items():
        if "cpu_x_echo" in row:
            scenario, protocol = key[0], key[1]
            why = _NO_TARGET.get((scenario, protocol)) or _NO_TARGET.get((scenario, ""), "none set for this scenario")
            found.append(_judge("cpu_x_echo", key, row["cpu_x_echo"], CPU_TARGETS.get((scenario, protocol)),
                                at_most=True, why=why))
    ours = {_key(p): p for p in points if p.server == "v2server" and p.rate > 0 and not p.note}
    for plain, batched in BATCHING_PAIRS:
        for key, point in sorted(ours.items()):
            _, protocol, concurrency, series = key
            without = ours.get((plain, protocol, concurrency, series))
            if key[0] != batched or without is None:
                continue
            gain_target = GAIN_TARGETS.get(plain) if concurrency > 1 else None
            why = "one request a batch at concurrency 1" if concurrency == 1 else "none set for this model"
            found.append(_judge("batching_gain", key, point.rate / without.rate, gain_target, False, why))
            if plain == "mlp-b1" and concurrency == 1 and point.cpu_us > 0 and without.cpu_us > 0:
                found.append(_judge("batcher_cpu_us", key, point.cpu_us - without.cpu_us, BATCHER_TARGET_US, True))
    return found


def _targets_text(found: Sequence[Target]) -> list[str]:
    """The Targets block: one line per figure, grouped by kind."""
    if not found:
        return ["Targets: nothing to judge in these results (no CPU figures, no batching pair)."]
    lines = ["Targets (v2server; MET or MISSED against the issue's targets, info: shown, no target):"]
    titles = {
        "cpu_x_echo": "CPU x echo: v2server's CPU per inference over its echo's, same scenario, protocol and "
        "concurrency",
        "batching_gain": "Batching gain: infer/s with dynamic batching over infer/s without",
        "batcher_cpu_us": "Batcher's own CPU per request: CPU us/inf of mlp-b1-batching minus mlp-b1 at "
        "concurrency 1",
    }
    for kind, title in titles.items():
        entries = [e for e in found if e.kind == kind]
        if not entries:
            continue
        lines += ["", f"{title}:"]
        for e in entries:
            if kind == "cpu_x_echo":
                shown, bound = f"{e.value:.2f}", f"<= {e.target}"
            elif kind == "batching_gain":
                shown, bound = f"{e.value:.2f}x", f">= {e.target}x"
            else:
                shown, bound = f"{e.value:,.1f} us", f"<= {e.target} us"
            judged = f"(target {bound}) {e.verdict}" if e.target is not None else f"info (no target: {e.why})"
            series = f" ({e.series})" if e.series else ""
            lines.append(f"- {e.scenario}{series} {e.protocol} c={e.concurrency}: {shown} {judged}")
    return lines


def _duration(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} us" if seconds < 1e-3 else f"{seconds * 1e3:,.2f} ms"


def table(points: Sequence[Point], peers: Sequence[str], forward: dict[str, float]) -> str:
    """A Markdown table: one row per point, v2server's rows with their ratios; then the model-alone times and
    the Targets block."""
    extra = ratios(points, peers)
    lines = [
        "| scenario | protocol | conc | server | infer/s | p50 ms | p99 ms | CPU us/inf | peak RSS MiB | "
        "x best peer | p99 / best peer | of echo | CPU x echo | note |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    order = {name: i for i, name in enumerate(["v2server", *peers, "grpc-echo", "tornado-echo"])}
    ordered = sorted(
        points, key=lambda p: (p.scenario, p.series, p.protocol, p.concurrency, order.get(p.server, 99))
    )
    for point in ordered:
        row = extra.get(_key(point), {}) if point.server == "v2server" else {}
        cells = [
            point.scenario + (f" ({point.series})" if point.series else ""),
            point.protocol, str(point.concurrency), point.server,
            f"{point.rate:,.0f}" if point.rate else "-",
            f"{point.p50_us / 1e3:.2f}" if point.rate else "-",
            f"{point.p99_us / 1e3:.2f}" if point.rate else "-",
            f"{point.cpu_us:,.0f}" if point.cpu_us else "-",
            f"{point.rss_bytes / 2**20:,.0f}" if point.rss_bytes else "-",
            f"{row['x_best_peer']:.2f}" if "x_best_peer" in row else "",
            f"{row['p99_vs_best_peer']:.2f}" if "p99_vs_best_peer" in row else "",
            f"{row['of_echo']:.0%}" if "of_echo" in row else "",
            f"{row['cpu_x_echo']:.2f}" if "cpu_x_echo" in row else "",
            " ".join(point.note.split())[:120].replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if forward:
        lines.append("")
        lines.append("Model alone (in-process forward, one thread of the server's CPU): " + ", ".join(
            f"{scenario} {1 / seconds:,.0f}/s ({_duration(seconds)})" for scenario, seconds in sorted(forward.items())
        ))
        if "heavy-b1" in forward and "heavy-b64" in forward:
            one, many = forward["heavy-b1"], forward["heavy-b64"]
            lines.append(
                f"heavy_mlp: batch 1 {_duration(one)}, batch 64 {_duration(many)} ({_duration(many / 64)} a row, "
                f"{one * 64 / many:.1f}x less than at batch 1)"
            )
    lines.append("")
    lines += _targets_text(targets(points))
    return "\n".join(lines)


def write_json(path: Path, points: Sequence[Point], peers: Sequence[str], meta: dict[str, object]) -> None:
    data = {
        **meta,
        "points": [asdict(point) for point in points],
        "ratios": [
            {"scenario": s, "protocol": p, "concurrency": c, **({"series": series} if series else {}), **row}
            for (s, p, c, series), row in ratios(points, peers).items()
        ],
        "targets": [asdict(target) for target in targets(points)],
    }
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))


def chart(path: Path, points: Sequence[Point], servers: Sequence[str], concurrency: int, title: str) -> None:
    """Grouped bars of infer/s (log scale) per scenario and protocol at one concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [p for p in points if p.concurrency == concurrency and p.rate > 0 and not p.note and not p.series]
    groups = sorted({(p.scenario, p.protocol) for p in chosen if p.server == "v2server"})
    if not groups:
        return
    rates = {(p.server, p.scenario, p.protocol): p.rate for p in chosen}
    shown = [s for s in servers if any((s, *g) in rates for g in groups)]
    figure, axes = plt.subplots(figsize=(max(8.0, 0.9 * len(groups) + 2), 5.0))
    width = 0.8 / max(1, len(shown))
    for i, server in enumerate(shown):
        xs = [g + (i - (len(shown) - 1) / 2) * width for g in range(len(groups))]
        ys = [rates.get((server, *group), 0.0) for group in groups]
        axes.bar(xs, ys, width, label=server)
    axes.set_xticks(range(len(groups)), [f"{s}\n{p}" for s, p in groups], fontsize=7)
    axes.set_yscale("log")
    axes.set_ylabel("infer/s (log scale)")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8)
    axes.grid(axis="y", which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.report RESULTS.json``: the table and charts again from a run's numbers (no servers)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    data = orjson.loads(args.results.read_bytes())
    known = {f.name for f in dataclasses.fields(Point)}
    points = [Point(**{k: v for k, v in point.items() if k in known}) for point in data["points"]]
    servers = data["settings"]["servers"].split(",")
    peers = [s for s in servers if s in ("mlserver", "kserve")]
    text = table(points, peers, data.get("forward_seconds", {}))
    print(text)
    out = args.results.parent
    (out / "table.md").write_text(text + "\n")
    for concurrency in sorted({p.concurrency for p in points if p.server in peers}):
        chart(out / f"chart-c{concurrency}.png", points, servers, concurrency,
              f"infer/s at concurrency {concurrency} ({data['machine']['cpu']}, server and client pinned "
              "to one CPU each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
