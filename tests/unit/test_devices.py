"""Instance placement from ``instance_group``: devices per instance and the kind a group is rewritten to."""

from __future__ import annotations

import logging

import pytest
import torch
from google.protobuf import text_format

from v2server._proto import model_config_pb2 as mc
from v2server.backends.torchscript.devices import place_instances
from v2server.errors import ModelLoadError

Kind = mc.ModelInstanceGroup.Kind


def _config(groups: str) -> mc.ModelConfig:
    return text_format.Parse(f'name: "m" instance_group [ {groups} ]', mc.ModelConfig())


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> object:
    """Pretend ``count`` GPUs are visible (0: no CUDA); placement only asks torch how many there are."""

    def set_count(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return set_count


def test_cpu_group_places_count_instances_on_cpu(gpus: object) -> None:
    gpus(2)  # type: ignore[operator]
    config = _config('{ name: "g" kind: KIND_CPU count: 2 }')
    assert place_instances(config) == ["cpu", "cpu"]
    assert config.instance_group[0].kind == Kind.KIND_CPU


def test_groups_are_placed_in_order(gpus: object) -> None:
    gpus(0)  # type: ignore[operator]
    config = _config("{ kind: KIND_CPU count: 1 }, { kind: KIND_MODEL count: 2 }, { kind: KIND_AUTO count: 1 }")
    assert place_instances(config) == ["cpu"] * 4
    assert [g.kind for g in config.instance_group] == [Kind.KIND_CPU, Kind.KIND_MODEL, Kind.KIND_CPU]


def test_gpu_group_without_cuda_falls_back_to_cpu_and_keeps_its_kind(
    gpus: object, caplog: pytest.LogCaptureFixture
) -> None:
    gpus(0)  # type: ignore[operator]
    config = _config('{ name: "g" kind: KIND_GPU count: 3 gpus: [ 0 ] }')
    with caplog.at_level(logging.WARNING):
        assert place_instances(config) == ["cpu"] * 3
    assert config.instance_group[0].kind == Kind.KIND_GPU
    assert "model 'm' instance group 'g' asks for GPUs but CUDA is not available" in caplog.text


def test_auto_group_without_cuda_becomes_cpu(gpus: object) -> None:
    gpus(0)  # type: ignore[operator]
    config = _config("{ kind: KIND_AUTO count: 2 }")
    assert place_instances(config) == ["cpu", "cpu"]
    assert config.instance_group[0].kind == Kind.KIND_CPU


@pytest.mark.parametrize(
    ("groups", "devices", "listed"),
    [
        ("{ kind: KIND_AUTO count: 1 }", ["cuda:0", "cuda:1"], [0, 1]),
        ("{ kind: KIND_GPU count: 2 }", ["cuda:0", "cuda:0", "cuda:1", "cuda:1"], [0, 1]),
        ("{ kind: KIND_GPU count: 2 gpus: [ 1 ] }", ["cuda:1", "cuda:1"], [1]),
    ],
    ids=["auto", "all-gpus", "listed-gpu"],
)
def test_gpu_groups_with_cuda(gpus: object, groups: str, devices: list[str], listed: list[int]) -> None:
    gpus(2)  # type: ignore[operator]
    config = _config(groups)
    assert place_instances(config) == devices
    assert config.instance_group[0].kind == Kind.KIND_GPU
    assert list(config.instance_group[0].gpus) == listed


def test_gpu_that_is_not_visible(gpus: object) -> None:
    gpus(1)  # type: ignore[operator]
    with pytest.raises(ModelLoadError, match=r"model 'm' instance group 'g' lists GPU 1, but only 1 GPU\(s\)"):
        place_instances(_config('{ name: "g" kind: KIND_GPU gpus: [ 0, 1 ] }'))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_group_on_a_cuda_machine() -> None:
    config = _config("{ kind: KIND_AUTO count: 1 }")
    devices = place_instances(config)
    assert devices == [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    assert config.instance_group[0].kind == Kind.KIND_GPU
