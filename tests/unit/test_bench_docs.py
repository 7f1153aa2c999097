"""docs/benchmark.md shows the heavy-request table of the last run, docs/bench/heavy.md, unchanged."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _table(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| case |"))
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[start:end]


def test_the_heavy_table_in_the_docs_is_the_last_run() -> None:
    docs = (ROOT / "docs" / "benchmark.md").read_text()
    section = docs.split("<!-- heavy:begin", 1)[1].split("<!-- heavy:end -->", 1)[0]
    shown = _table(section)
    assert len(shown) > 10
    assert shown == _table((ROOT / "docs" / "bench" / "heavy.md").read_text()), (
        "copy the table of docs/bench/heavy.md into docs/benchmark.md between the heavy markers"
    )
