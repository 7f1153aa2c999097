"""Where aliases are kept: the model folder, or ``<state-dir>/aliases/<model>.json`` under a name we choose."""

from __future__ import annotations

from pathlib import Path

import pytest

from v2server.errors import NotWritable
from v2server.repository.aliases import AliasFiles


def test_paths(tmp_path: Path) -> None:
    model_dir = tmp_path / "repo" / "m"
    assert AliasFiles().path("m", model_dir) == model_dir / "aliases.json"
    state = AliasFiles(tmp_path / "state")
    assert state.path("m", model_dir) == tmp_path / "state" / "aliases" / "m.json"
    assert state.path("a b/ü", model_dir).name == "a%20b%2F%C3%BC.json"
    long = state.path("x" * 250, model_dir)
    assert long.parent == tmp_path / "state" / "aliases" and long.name.startswith("sha256-")


def test_round_trip_and_removal(tmp_path: Path) -> None:
    files = AliasFiles(tmp_path / "state")
    files.write("m", tmp_path, {"b": 2, "a": 1})
    assert files.read("m", tmp_path) == {"a": 1, "b": 2}
    files.write("m", tmp_path, {})
    assert files.read("m", tmp_path) == {} and not files.path("m", tmp_path).exists()


def test_a_write_that_cannot_happen_is_not_writable(tmp_path: Path) -> None:
    missing = tmp_path / "gone"  # no such model folder: the write fails like a read-only one
    with pytest.raises(NotWritable, match="--state-dir"):
        AliasFiles().write("m", missing, {"a": 1})
