"""The layering of docs/architecture.md, checked against every import in ``v2server/``.

The table in the doc is parsed here, so the doc cannot drift from the code: an import that points up, a
transport that imports the other, Tornado or grpcio below the transports, or ``torch.jit`` outside the
TorchScript backend fails this test with the import that did it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "v2server"
LEAVES = "leaves"


def _layers() -> dict[str, int | str]:
    """Top-level module or package name -> layer number (or ``leaves``), from docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("<!-- layers:begin -->", 1)[1].split("<!-- layers:end -->", 1)[0]
    layers: dict[str, int | str] = {}
    for line in [line for line in table.splitlines() if line.strip()][2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 2:
            continue
        layer: int | str = LEAVES if cells[0] == LEAVES else int(cells[0])
        for name in re.findall(r"`([\w.]+)`", cells[1]):
            layers[name] = layer
    return layers


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT).with_suffix("")
        if "_proto" in relative.parts:
            continue
        name = ".".join(relative.parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def _imports(tree: ast.Module) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "v2server":
                names += [f"v2server.{alias.name}" for alias in node.names]
            else:
                names.append(node.module)
    return names


def _top(module: str) -> str:
    """``v2server.rest_api.handlers`` -> ``rest_api``; ``v2server`` itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


LAYERS = _layers()
MODULES = _modules()


def _layer(module: str) -> int | str:
    top = _top(module)
    if top in ("__init__", "__version__"):
        return LEAVES  # the package itself holds only __version__
    assert top in LAYERS, f"{module} is in no layer of docs/architecture.md: add it to the table"
    return LAYERS[top]


def test_the_table_names_every_module() -> None:
    assert len(LAYERS) > 20
    for module in MODULES:
        _layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    mine = _layer(module)
    for imported in _imports(MODULES[module]):
        if not imported.startswith("v2server"):
            continue
        theirs = _layer(imported)
        if theirs == LEAVES or _top(imported) == _top(module):
            continue
        assert mine != LEAVES, f"{module} is a shared leaf but imports {imported} (layer {theirs})"
        assert isinstance(theirs, int) and isinstance(mine, int) and theirs >= mine, (
            f"{module} (layer {mine}) imports {imported} (layer {theirs}): imports must point down"
        )


@pytest.mark.parametrize("module", sorted(MODULES))
def test_transports_stay_apart_and_the_core_is_transport_free(module: str) -> None:
    top, layer = _top(module), _layer(module)
    for imported in _imports(MODULES[module]):
        if top in ("rest_api", "grpc_api"):
            other = {"rest_api": "grpc_api", "grpc_api": "rest_api"}[top]
            assert not imported.startswith(f"v2server.{other}"), f"{module} imports the other transport: {imported}"
        if isinstance(layer, int) and layer >= 4:
            assert not imported.startswith(("tornado", "grpc")), f"{module} (below the transports) imports {imported}"


def test_only_the_torchscript_backend_uses_torch_jit() -> None:
    offenders = [
        str(path.relative_to(ROOT)) for path in PACKAGE.rglob("*.py")
        if "torch.jit" in path.read_text() and "backends/torchscript" not in path.as_posix()
        and "_proto" not in path.parts
    ]
    assert offenders == []
