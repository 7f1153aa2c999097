"""Registry (with ModelEntry, ModelHandle and ModelLoader) over real TorchScript models in tmp_path repositories."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.assets.test_models import Scaled, _config, _save, _tensor
from v2server.datatypes import datatype
from v2server.errors import InvalidRequest, ModelNotFound, ModelNotReady
from v2server.handle import ModelHandle
from v2server.registry import ModelState, ModelStatus, Registry
from v2server.tensors import Tensor

KEPT = "reload failed, still serving the previous load"


class Slow(torch.nn.Module):
    """The identity, after enough matrix products that a request is still running when the test looks."""

    def __init__(self, rounds: int) -> None:
        super().__init__()
        self.rounds = rounds

    def forward(self, INPUT0: torch.Tensor) -> torch.Tensor:
        x = torch.ones(256, 256) / 256.0  # x @ x == x: the values stay put, the work is real
        for _ in range(self.rounds):
            x = x @ x
        return INPUT0 + (x.sum() * 0).to(INPUT0.dtype)


def _body(name: str, policy: str = "") -> str:
    return _config(
        name,
        "max_batch_size: 0\n" + policy
        + _tensor("input", "INPUT0", "TYPE_INT32", "[ 4 ]") + "\n"
        + _tensor("output", "OUTPUT0", "TYPE_INT32", "[ 4 ]"),
    )


def _model(repo: Path, name: str, versions: tuple[int, ...] = (1,), policy: str = "", factor: int = 0) -> Path:
    """``name`` with a Scaled model per version (factor: the version, unless ``factor`` says otherwise)."""
    for version in versions:
        _save(repo, name, Scaled(factor or version), _body(name, policy), version)
    return repo / name


ALL = "version_policy: { all { } }\n"


async def _run(handle: ModelHandle, values: tuple[int, ...] = (1, 2, 3, 4)) -> list[int]:
    tensor = Tensor("INPUT0", datatype("INT32"), np.array(values, dtype=np.int32))
    return (await handle.execute([tensor], ["OUTPUT0"], 0)).outputs[0].array.tolist()  # type: ignore[no-any-return]


def _rows(registry: Registry) -> list[tuple[str, int, str, str]]:
    return [(row.name, row.version, row.state.value, row.reason) for row in registry.index()]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "repo").mkdir()
    return tmp_path / "repo"


@pytest.fixture
def uploads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where uploads go (``tempfile.mkdtemp``'s folder), so a test can see exactly what is left."""
    folder = tmp_path / "uploads"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
async def registries() -> AsyncIterator[Callable[..., Registry]]:
    """Registries made by a test, closed after it (their instances own threads)."""
    made: list[Registry] = []

    def make(*repositories: Path, **options: object) -> Registry:
        registry = Registry(repositories, **options)  # type: ignore[arg-type]
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await registry.close()


# -- get: versions, unknown, not ready, malformed ----------------------------------------------------------------


async def test_get_resolves_latest_numbered_and_refuses_bad_versions(
    repo: Path, registries: Callable[..., Registry]
) -> None:
    _model(repo, "m", (1, 2, 3), ALL)
    registry = registries(repo)
    assert await registry.load_all() == []
    assert registry.get("m").version == 3
    assert registry.get("m", "-1") is registry.get("m", "") is registry.get("m", "3")
    assert await _run(registry.get("m", "2")) == [2, 4, 6, 8]
    assert registry.ready_versions("m") == [1, 2, 3]
    for bad in ("abc", "1.0", "-2", " 1", "\u0663", "0x1"):
        with pytest.raises(InvalidRequest) as info:
            registry.get("m", bad)
        assert info.value.message == f"model 'm': version '{bad}' is not a number"
    with pytest.raises(ModelNotFound) as missing:
        registry.get("m", "9")
    assert missing.value.message == "Request for unknown model: 'm' version 9 is not found (serving [1, 2, 3])"
    assert registry.is_ready("m", "2") and not registry.is_ready("m", "9")


async def test_unknown_is_not_found_and_failed_is_not_ready(repo: Path, registries: Callable[..., Registry]) -> None:
    _model(repo, "good")
    _model(repo, "on_disk_only")
    _save(repo, "missing_file", None, _body("missing_file"), 1)
    registry = registries(repo)
    failures = await registry.load_all(["good", "missing_file"])
    assert [(s.name, s.version, s.state) for s in failures] == [("missing_file", 1, ModelState.UNAVAILABLE)]
    with pytest.raises(ModelNotFound) as unknown:
        registry.get("nope")
    assert unknown.value.message == "Request for unknown model: 'nope' is not found"
    with pytest.raises(ModelNotFound, match="Request for unknown model: 'on_disk_only' is not found"):
        registry.get("on_disk_only")  # on disk, never asked for
    with pytest.raises(ModelNotReady) as not_ready:
        registry.get("missing_file")
    assert not_ready.value.message.startswith("Request for unknown model: 'missing_file' has no available versions (model file ")
    assert not_ready.value.message.endswith("does not exist)")
    assert not registry.is_ready("nope") and not registry.is_ready("missing_file") and registry.is_ready("good")


@pytest.mark.parametrize("name", ["a/b", "..", "", "a\\b", "a\x00b", "x" * 256])
async def test_a_malformed_name_is_invalid_on_a_miss(
    name: str, repo: Path, registries: Callable[..., Registry]
) -> None:
    _model(repo, "good")
    registry = registries(repo)
    await registry.load_all()
    with pytest.raises(InvalidRequest, match="invalid model name"):
        registry.get(name)
    with pytest.raises(InvalidRequest, match="invalid model name"):
        registry.is_ready(name)  # a malformed name is the client's error, not "not ready"
    assert registry.get("good").name == "good"  # a served (hence checked) name goes straight through


# -- load_all -------------------------------------------------------------------------------------------------


async def test_load_all_loads_every_model_on_disk(repo: Path, registries: Callable[..., Registry]) -> None:
    _model(repo, "a")
    _model(repo, "b", (1, 2), ALL)
    registry = registries(repo)
    assert await registry.load_all() == []
    assert registry.all_ready()
    assert [(h.name, h.version) for h in registry.handles()] == [("a", 1), ("b", 1), ("b", 2)]
    assert _rows(registry) == [("a", 1, "READY", ""), ("b", 1, "READY", ""), ("b", 2, "READY", "")]


async def test_load_all_with_names_reports_misses_as_failure_rows(
    repo: Path, registries: Callable[..., Registry]
) -> None:
    _model(repo, "a")
    _model(repo, "b")
    registry = registries(repo)
    failures = await registry.load_all(["a", "nowhere", "a/b", "a"])
    assert sorted((s.name, s.version, s.state.value, s.reason) for s in failures) == [
        ("a/b", 0, "UNAVAILABLE", "invalid model name 'a/b': a model name must not contain '/' or '\\'"),
        ("nowhere", 0, "UNAVAILABLE", "failed to load 'nowhere': not found in the model repository"),
    ]
    assert [h.name for h in registry.handles()] == ["a"]
    assert _rows(registry) == [
        ("a", 1, "READY", ""),
        ("b", 0, "UNAVAILABLE", "not loaded"),
        ("nowhere", 0, "UNAVAILABLE", "failed to load 'nowhere': not found in the model repository"),
    ]
    assert not registry.all_ready()  # a model asked for at start that is not serving


async def test_strict_readiness_is_false_until_the_models_serve(
    repo: Path, registries: Callable[..., Registry]
) -> None:
    _model(repo, "a")
    _save(repo, "broken", None, _body("broken"), 1)
    registry = registries(repo)
    assert registry.all_ready()  # nothing asked for yet
    loading = asyncio.create_task(registry.load_all(["a"]))
    for _ in range(100):
        if ("a", 0, "LOADING", "") in _rows(registry):
            break
        await asyncio.sleep(0)
    assert ("a", 0, "LOADING", "") in _rows(registry)
    assert not registry.all_ready()
    with pytest.raises(ModelNotReady, match=r"'a' has no available versions \(LOADING\)"):
        registry.get("a")
    assert await loading == []
    assert registry.all_ready()
    assert [s.name for s in await registry.load_all(["broken"])] == ["broken"]
    assert not registry.all_ready()  # the failed one counts


# -- load -----------------------------------------------------------------------------------------------------


async def test_load_of_an_unknown_name_raises_and_changes_nothing(
    repo: Path, registries: Callable[..., Registry]
) -> None:
    _model(repo, "a")
    registry = registries(repo)
    await registry.load_all()
    before = registry.index()
    with pytest.raises(InvalidRequest) as info:
        await registry.load("ghost")
    assert info.value.message == "failed to load 'ghost': not found in the model repository"
    with pytest.raises(InvalidRequest, match="invalid model name"):
        await registry.load("../a")
    assert registry.index() == before
    assert registry.all_ready()
    with pytest.raises(ModelNotFound, match="Request for unknown model: 'ghost' is not found"):
        registry.get("ghost")


def _scripted(tmp_path: Path, factor: int) -> bytes:
    path = tmp_path / f"scaled_{factor}.pt"
    torch.jit.script(Scaled(factor)).save(str(path))
    return path.read_bytes()


OVERRIDE = json.dumps({
    "platform": "pytorch_libtorch",
    "max_batch_size": 0,
    "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [4]}],
    "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [4]}],
    "instance_group": [{"kind": "KIND_CPU"}],
})


async def _settled(folder: Path, count: int) -> list[Path]:
    """The folder's entries once there are ``count`` (replaced uploads are removed in the background)."""
    for _ in range(500):
        entries = sorted(folder.iterdir())
        if len(entries) == count:
            return entries
        await asyncio.sleep(0.01)
    return sorted(folder.iterdir())


async def test_an_upload_serves_and_unload_removes_its_folder(
    repo: Path, uploads: Path, tmp_path: Path, registries: Callable[..., Registry]
) -> None:
    registry = registries(repo)
    statuses = await registry.load("up", OVERRIDE, {"1/model.pt": _scripted(tmp_path, 5)})
    assert statuses == [ModelStatus("up", 1, ModelState.READY)]
    assert await _run(registry.get("up")) == [5, 10, 15, 20]
    [first] = await _settled(uploads, 1)
    assert first.name.startswith("v2server-upload-")

    await registry.load("up", OVERRIDE, {"1/model.pt": _scripted(tmp_path, 7)})  # a new upload replaces it
    assert await _run(registry.get("up")) == [7, 14, 21, 28]
    [second] = await _settled(uploads, 1)
    assert second != first

    await registry.unload("up")
    assert list(uploads.iterdir()) == []
    with pytest.raises(ModelNotReady, match=r"'up' has no available versions \(unloaded\)"):
        registry.get("up")
    assert _rows(registry) == [("up", 1, "UNAVAILABLE", "unloaded")]


async def test_a_failed_upload_of_a_new_name_leaves_no_row_and_no_folder(
    repo: Path, uploads: Path, registries: Callable[..., Registry]
) -> None:
    registry = registries(repo)
    [status] = await registry.load("bad", OVERRIDE, {"1/model.pt": b"not a model"})
    assert status.state is ModelState.UNAVAILABLE
    assert "<uploaded model>" in status.reason and str(uploads) not in status.reason  # no private path leaks
    assert list(uploads.iterdir()) == []
    assert registry.index() == []
    with pytest.raises(ModelNotFound, match="Request for unknown model: 'bad' is not found"):
        registry.get("bad")


# -- reload ---------------------------------------------------------------------------------------------------


async def test_a_version_that_fails_to_reload_keeps_serving_its_previous_handle(
    repo: Path, registries: Callable[..., Registry]
) -> None:
    model_dir = _model(repo, "m", (1, 2), ALL)
    registry = registries(repo)
    await registry.load_all()
    old_1, old_2 = registry.get("m", "1"), registry.get("m", "2")
    (model_dir / "2" / "model.pt").write_bytes(b"not a model any more")

    statuses = await registry.load("m")

    assert registry.get("m", "2") is old_2
    assert registry.get("m", "1") is not old_1  # the version that loaded was replaced
    assert await _run(registry.get("m", "2")) == [2, 4, 6, 8]
    assert await _run(registry.get("m", "1")) == [1, 2, 3, 4]
    # the caller hears that version 2 failed; the index shows it still serving its previous copy
    assert [(s.version, s.state) for s in statuses] == [(1, ModelState.READY), (2, ModelState.UNAVAILABLE)]
    assert statuses[0].reason == ""
    assert statuses[1].reason.startswith("cannot load TorchScript file ")
    rows = registry.index()
    assert [(r.version, r.state) for r in rows] == [(1, ModelState.READY), (2, ModelState.READY)]
    assert rows[1].reason == f"{KEPT}: {statuses[1].reason}"
    assert registry.all_ready()


async def test_a_fully_failed_reload_keeps_every_old_version(
    repo: Path, registries: Callable[..., Registry]
) -> None:
    model_dir = _model(repo, "m", (1, 2), ALL)
    registry = registries(repo)
    await registry.load_all()
    old = {v: registry.get("m", str(v)) for v in (1, 2)}
    (model_dir / "config.pbtxt").write_text('name: "m"\nmax_batch_size: "eight"\n')

    [status] = await registry.load("m")

    assert (status.version, status.state) == (0, ModelState.UNAVAILABLE)
    assert {v: registry.get("m", str(v)) for v in (1, 2)} == old
    assert await _run(registry.get("m")) == [2, 4, 6, 8]
    rows = registry.index()
    assert [(r.version, r.state) for r in rows] == [(1, ModelState.READY), (2, ModelState.READY)]
    assert all(r.reason == f"{KEPT}: {status.reason}" for r in rows)
    assert registry.all_ready()


# -- unload ---------------------------------------------------------------------------------------------------


async def test_unload_drains_an_inflight_request_before_closing(
    repo: Path, registries: Callable[..., Registry]
) -> None:
    _save(repo, "slow", Slow(3000), _body("slow"))
    registry = registries(repo)
    await registry.load_all()
    handle = registry.get("slow")
    request = asyncio.create_task(_run(handle, (4, 3, 2, 1)))
    await asyncio.sleep(0)
    assert handle.inflight == 1

    unloading = asyncio.create_task(registry.unload("slow"))
    for _ in range(100):
        if ("slow", 1, "UNLOADING", "") in _rows(registry):
            break
        await asyncio.sleep(0)
    # New requests are refused at once; the one in flight still runs on its handle.
    assert _rows(registry) == [("slow", 1, "UNLOADING", "")]
    with pytest.raises(ModelNotReady, match=r"'slow' has no available versions \(UNLOADING\)"):
        registry.get("slow")
    assert handle.inflight == 1 and not request.done() and not unloading.done()

    await unloading
    assert request.done() and handle.inflight == 0
    assert await request == [4, 3, 2, 1]
    assert _rows(registry) == [("slow", 1, "UNAVAILABLE", "unloaded")]
    with pytest.raises(RuntimeError, match="shutdown"):
        await _run(handle)  # closed: its instance takes no more work
    assert registry.all_ready()  # an unloaded model is no longer wanted


async def test_unload_of_an_unknown_name_is_not_found(repo: Path, registries: Callable[..., Registry]) -> None:
    registry = registries(repo)
    with pytest.raises(ModelNotFound, match="failed to unload 'ghost': not found in the model repository"):
        await registry.unload("ghost")
    with pytest.raises(InvalidRequest, match="invalid model name"):
        await registry.unload("a/b")
    assert registry.index() == []


# -- aliases --------------------------------------------------------------------------------------------------


async def test_aliases_are_set_resolved_deleted_and_persisted(
    repo: Path, registries: Callable[..., Registry]
) -> None:
    model_dir = _model(repo, "m", (1, 2), ALL)
    registry = registries(repo)
    await registry.load_all()
    assert registry.aliases("m") == {}
    assert await registry.set_alias("m", "stable", 1) == {"stable": 1}
    assert await registry.set_alias("m", "canary", 2) == {"canary": 2, "stable": 1}
    assert json.loads((model_dir / "aliases.json").read_text()) == {"canary": 2, "stable": 1}
    assert registry.resolve_alias("m", "stable") == "1"
    assert await _run(registry.get("m", registry.resolve_alias("m", "canary"))) == [2, 4, 6, 8]

    with pytest.raises(InvalidRequest, match="alias 'x': model 'm' has no version 7 being served"):
        await registry.set_alias("m", "x", 7)
    for bad in ("latest", "1st", "a/b"):
        with pytest.raises(InvalidRequest, match="cannot be an alias"):
            await registry.set_alias("m", bad, 1)
    with pytest.raises(ModelNotFound, match="model 'm' has no version or alias 'nope'"):
        registry.resolve_alias("m", "nope")
    with pytest.raises(ModelNotFound, match="Request for unknown model: 'other' is not found"):
        registry.resolve_alias("other", "stable")

    # Another registry over the same repository (a restart) reads them back.
    again = registries(repo)
    await again.load_all()
    assert again.aliases("m") == {"canary": 2, "stable": 1}

    assert await registry.delete_alias("m", "canary") == {"stable": 1}
    assert json.loads((model_dir / "aliases.json").read_text()) == {"stable": 1}
    assert await registry.delete_alias("m", "stable") == {}
    assert not (model_dir / "aliases.json").exists()
    with pytest.raises(ModelNotFound, match="model 'm' has no alias 'stable'"):
        await registry.delete_alias("m", "stable")


async def test_an_alias_to_a_version_not_served_does_not_resolve(
    repo: Path, registries: Callable[..., Registry]
) -> None:
    model_dir = _model(repo, "m", (1, 2))  # the default policy serves only the latest version
    (model_dir / "aliases.json").write_text('{"first": 1, "second": 2}')
    registry = registries(repo)
    await registry.load_all()
    assert registry.aliases("m") == {"first": 1, "second": 2}
    assert registry.resolve_alias("m", "second") == "2"
    with pytest.raises(ModelNotFound) as info:
        registry.resolve_alias("m", "first")
    assert info.value.message == "alias 'first' of model 'm' points to version 1, which is not being served"


# -- poll -----------------------------------------------------------------------------------------------------


async def test_poll_loads_new_reloads_changed_and_unloads_removed_models(
    repo: Path, registries: Callable[..., Registry]
) -> None:
    changes: list[int] = []

    async def changed() -> None:
        changes.append(1)

    _model(repo, "a")
    registry = registries(repo, on_change=changed)
    await registry.load_all()
    assert len(changes) == 1  # the load told the listener
    changes.clear()
    a = registry.get("a")
    await registry.poll()
    assert registry.get("a") is a and not changes  # nothing changed on disk: nothing reloaded

    _model(repo, "b")
    await registry.poll()
    assert await _run(registry.get("b")) == [1, 2, 3, 4]
    assert registry.get("a") is a

    model_file = _model(repo, "a", factor=3) / "1" / "model.pt"
    stat = model_file.stat()
    os.utime(model_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a changed file, whatever its size
    await registry.poll()
    assert registry.get("a") is not a
    assert await _run(registry.get("a")) == [3, 6, 9, 12]

    shutil.rmtree(repo / "b")
    await registry.poll()
    with pytest.raises(ModelNotReady, match=r"'b' has no available versions \(unloaded\)"):
        registry.get("b")
    assert _rows(registry) == [("a", 1, "READY", ""), ("b", 1, "UNAVAILABLE", "unloaded")]
    assert registry.all_ready()  # a removed model is no longer wanted
    assert len(changes) == 3  # load b, reload a, unload b


# -- close ----------------------------------------------------------------------------------------------------


async def test_close_releases_every_handle_and_upload(
    repo: Path, uploads: Path, tmp_path: Path, registries: Callable[..., Registry]
) -> None:
    _model(repo, "a", (1, 2), ALL)
    registry = registries(repo)
    await registry.load_all()
    await registry.load("up", OVERRIDE, {"1/model.pt": _scripted(tmp_path, 5)})
    handles = registry.handles()
    assert [(h.name, h.version) for h in handles] == [("a", 1), ("a", 2), ("up", 1)]
    assert len(list(uploads.iterdir())) == 1

    await registry.close()

    assert registry.handles() == []
    assert list(uploads.iterdir()) == []
    for handle in handles:
        with pytest.raises(RuntimeError, match="shutdown"):
            await _run(handle)
