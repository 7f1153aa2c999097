"""State outside the repository: with ``--state-dir`` a read-only repository keeps working aliases; without it
an alias write that cannot happen is a 409 that names the way out, never a 500."""

from __future__ import annotations

import errno
import http.client
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.assets.test_models import Scaled
from tests.conftest import RunningServer, loopback_settings
from v2server.repository import aliases as alias_module


def _call(server: RunningServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection(server.http_url, timeout=30)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body))
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.fixture()
def read_only_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A repository the server cannot write to: its files and folders lose their write bits, and, because
    root ignores those, every write into it fails as on a read-only volume (EROFS)."""
    repository = tmp_path / "repo"
    model = repository / "versioned"
    for version in (1, 2):
        (model / str(version)).mkdir(parents=True)
        torch.jit.script(Scaled(version)).save(str(model / str(version) / "model.pt"))
    (model / "config.pbtxt").write_text(
        'name: "versioned"\nplatform: "pytorch_libtorch"\nmax_batch_size: 0\nversion_policy: { all { } }\n'
        'input [{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 2 ] }]\n'
        'output [{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 2 ] }]\ninstance_group [{ kind: KIND_CPU }]\n'
    )
    write = alias_module._write

    def read_only_write(path: Path, aliases: Any) -> None:
        if repository in path.parents:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        write(path, aliases)

    monkeypatch.setattr(alias_module, "_write", read_only_write)
    paths = [repository, *repository.rglob("*")]
    for path in paths:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield repository
    for path in paths:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def _files(repository: Path) -> set[str]:
    return {str(path.relative_to(repository)) for path in repository.rglob("*")}


def test_a_read_only_repository_with_state_dir_keeps_aliases_in_the_state_dir(
    read_only_repository: Path, tmp_path: Path
) -> None:
    before = _files(read_only_repository)
    state = tmp_path / "state"
    settings = loopback_settings(read_only_repository, allow_grpc=False, allow_metrics=False, state_dir=state)
    server = RunningServer(settings)
    try:
        assert _call(server, "PUT", "/v1/versioned/aliases/official", {"version": 2}) == (200, {"official": 2})
        assert _call(server, "POST", "/v1/versioned/official", {"data": [1, 2]}) == (200, {"data": [2, 4]})
    finally:
        server.stop()
    assert json.loads((state / "aliases" / "versioned.json").read_text()) == {"official": 2}
    assert _files(read_only_repository) == before  # nothing written into the repository
    restarted = RunningServer(settings)
    try:
        assert _call(restarted, "GET", "/v1/versioned/aliases") == (200, {"official": 2})
        assert _call(restarted, "DELETE", "/v1/versioned/aliases/official") == (200, {})
    finally:
        restarted.stop()
    assert not (state / "aliases" / "versioned.json").exists()


def test_a_read_only_repository_without_state_dir_is_409_not_500(read_only_repository: Path) -> None:
    server = RunningServer(loopback_settings(read_only_repository, allow_grpc=False, allow_metrics=False))
    try:
        status, error = _call(server, "PUT", "/v1/versioned/aliases/official", {"version": 2})
        assert status == 409
        assert "cannot save the aliases of model 'versioned'" in error["error"] and "--state-dir" in error["error"]
        assert _call(server, "GET", "/v1/versioned/aliases") == (200, {})  # nothing changed
        assert _call(server, "POST", "/v1/versioned/official", {"data": [1, 2]})[0] == 404
    finally:
        server.stop()


def test_a_state_dir_that_refuses_the_write_is_409(read_only_repository: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "aliases").write_text("a file where the aliases folder should be")
    server = RunningServer(loopback_settings(read_only_repository, allow_grpc=False, allow_metrics=False,
                                             state_dir=state))
    try:
        status, error = _call(server, "PUT", "/v1/versioned/aliases/official", {"version": 2})
        assert status == 409 and "in the state folder" in error["error"]
    finally:
        server.stop()
