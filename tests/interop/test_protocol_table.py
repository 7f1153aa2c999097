"""``docs/protocol.md``'s interoperability table and the interop suite back each other line by line.

Every cell is ``works`` or ``n/a: why``; every ``works`` cell names a test; every test named exists in
``tests/interop/`` (found by AST, so no client venv is imported); every interop test is named somewhere. A new
test without a row, a renamed test, or a claim without a test fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PROTOCOL = ROOT / "docs" / "protocol.md"
TEST_REF = re.compile(r"`(test_\w+\.py)::(test_\w+)(\[[^\]`]+\])?`")
CLIENTS = (
    "kserve REST", "kserve gRPC", "open-inference-openapi", "open-inference-grpc", "tritonclient http",
    "tritonclient grpc", "MLServer codecs", "`mlserver infer`",
)


def _table() -> tuple[list[str], list[list[str]]]:
    """The header and the rows of the first table in the ``## Interoperability`` section."""
    section = PROTOCOL.read_text().split("\n## Interoperability\n", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.strip().startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert len(cells) > 2 and set("".join(cells[1])) <= {"-", ":"}, "no table in ## Interoperability"
    return cells[0], cells[2:]


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {
        node.name for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    }


def _suite() -> dict[str, set[str]]:
    return {path.name: _test_functions(path) for path in sorted(HERE.glob("test_*.py")) if path != Path(__file__)}


def test_every_client_has_a_row_and_every_cell_is_works_or_na() -> None:
    header, rows = _table()
    assert header[0] == "client" and {"health", "metadata", "infer JSON", "infer binary", "errors"} <= set(header)
    assert [row[0].startswith(client) for row, client in zip(rows, CLIENTS, strict=True)] == [True] * len(CLIENTS)
    for row in rows:
        assert len(row) == len(header), row[0]
        for operation, cell in zip(header[1:], row[1:], strict=True):
            assert cell.startswith(("works", "n/a: ")), f"{row[0]} / {operation}: {cell!r}"
            if cell.startswith("works"):
                assert TEST_REF.search(cell), f"{row[0]} / {operation} names no test"


def test_every_test_named_exists() -> None:
    suite = _suite()
    _, rows = _table()
    named = [(file, name) for row in rows for cell in row for file, name, _ in TEST_REF.findall(cell)]
    assert named
    missing = [f"{file}::{name}" for file, name in named if name not in suite.get(file, set())]
    assert missing == []


def test_every_interop_test_is_named() -> None:
    _, rows = _table()
    named = {(file, name) for row in rows for cell in row for file, name, _ in TEST_REF.findall(cell)}
    unnamed = [f"{file}::{name}" for file, names in _suite().items() for name in sorted(names) if (file, name) not in named]
    assert unnamed == []
