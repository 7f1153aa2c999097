"""The backend catalog: entry points, the default backend, and refusals that list what is installed."""

from __future__ import annotations

import pytest

from v2server._proto import model_config_pb2 as mc
from v2server.backends import ModelBackend, available, resolve
from v2server.errors import ModelLoadError


def test_torchscript_registers_itself_through_its_entry_point() -> None:
    backend = available()["pytorch"]
    assert isinstance(backend, ModelBackend)
    assert backend.platforms == ("pytorch_libtorch",) and backend.default_model_filename == "model.pt"


@pytest.mark.parametrize(
    "config",
    [mc.ModelConfig(), mc.ModelConfig(backend="pytorch"), mc.ModelConfig(platform="pytorch_libtorch")],
    ids=["neither", "backend", "platform"],
)
def test_a_config_finds_its_backend_and_gets_its_defaults(config: mc.ModelConfig) -> None:
    assert resolve(config, "<test>").name == "pytorch"
    assert (config.platform, config.backend, config.default_model_filename) == (
        "pytorch_libtorch", "pytorch", "model.pt"
    )


def test_a_model_file_name_in_the_config_is_kept() -> None:
    config = mc.ModelConfig(backend="pytorch", default_model_filename="traced.pt")
    resolve(config, "<test>")
    assert config.default_model_filename == "traced.pt"


@pytest.mark.parametrize(
    "config",
    [mc.ModelConfig(platform="onnxruntime_onnx"), mc.ModelConfig(backend="onnxruntime"),
     mc.ModelConfig(backend="pytorch", platform="tensorflow_savedmodel")],
    ids=["platform", "backend", "mismatch"],
)
def test_a_config_no_backend_serves_is_refused_naming_the_installed_ones(config: mc.ModelConfig) -> None:
    with pytest.raises(ModelLoadError) as caught:
        resolve(config, "m/config.pbtxt")
    assert caught.value.message.startswith("m/config.pbtxt: platform ")
    assert 'use backend "pytorch" (platform pytorch_libtorch)' in caught.value.message
