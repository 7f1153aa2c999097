"""The benchmark's output: a table with ratios, a JSON file of every number, and a PNG chart.

Ratios compare points measured in the same run: v2server over the better peer (the one with more infer/s) on the
same scenario, protocol and concurrency, and over the echo of its own stack (grpc.aio for gRPC, Tornado for REST),
the most any server on that stack can do with this client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import orjson

from bench.measure import Point

__all__ = ["chart", "ratios", "table", "write_json"]

_ECHO_OF = {"grpc": "grpc-echo", "rest-json": "tornado-echo", "rest-binary": "tornado-echo"}


def _key(point: Point) -> tuple[str, str, int]:
    return point.scenario, point.protocol, point.concurrency


def ratios(points: Sequence[Point], peers: Sequence[str]) -> dict[tuple[str, str, int], dict[str, float]]:
    """For each v2server point: ``x_best_peer``, ``p99_vs_best_peer``, ``of_echo`` (where both sides exist)."""
    index = {(p.server, *_key(p)): p for p in points if p.rate > 0 and not p.note}
    result: dict[tuple[str, str, int], dict[str, float]] = {}
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
        result[_key(point)] = row
    return result


def table(points: Sequence[Point], peers: Sequence[str], forward: dict[str, float]) -> str:
    """A Markdown table: one row per point, v2server's rows with their ratios."""
    extra = ratios(points, peers)
    lines = [
        "| scenario | protocol | conc | server | infer/s | p50 ms | p99 ms | peak RSS MiB | x best peer | "
        "p99 / best peer | of echo | note |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    order = {name: i for i, name in enumerate(["v2server", *peers, "grpc-echo", "tornado-echo"])}
    for point in sorted(points, key=lambda p: (p.scenario, p.protocol, p.concurrency, order.get(p.server, 99))):
        row = extra.get(_key(point), {}) if point.server == "v2server" else {}
        cells = [
            point.scenario, point.protocol, str(point.concurrency), point.server,
            f"{point.rate:,.0f}" if point.rate else "-",
            f"{point.p50_us / 1e3:.2f}" if point.rate else "-",
            f"{point.p99_us / 1e3:.2f}" if point.rate else "-",
            f"{point.rss_bytes / 2**20:,.0f}" if point.rss_bytes else "-",
            f"{row['x_best_peer']:.2f}" if "x_best_peer" in row else "",
            f"{row['p99_vs_best_peer']:.2f}" if "p99_vs_best_peer" in row else "",
            f"{row['of_echo']:.0%}" if "of_echo" in row else "",
            " ".join(point.note.split())[:120].replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if forward:
        lines.append("")
        lines.append("Model alone (in-process forward, one thread of the server's CPU): " + ", ".join(
            f"{scenario} {1 / seconds:,.0f}/s" for scenario, seconds in sorted(forward.items())
        ))
    return "\n".join(lines)


def write_json(path: Path, points: Sequence[Point], peers: Sequence[str], meta: dict[str, object]) -> None:
    data = {
        **meta,
        "points": [asdict(point) for point in points],
        "ratios": [
            {"scenario": s, "protocol": p, "concurrency": c, **row} for (s, p, c), row in ratios(points, peers).items()
        ],
    }
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))


def chart(path: Path, points: Sequence[Point], servers: Sequence[str], concurrency: int, title: str) -> None:
    """Grouped bars of infer/s (log scale) per scenario and protocol at one concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [p for p in points if p.concurrency == concurrency and p.rate > 0 and not p.note]
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
    points = [Point(**point) for point in data["points"]]
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
