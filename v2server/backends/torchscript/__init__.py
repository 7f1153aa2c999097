"""The TorchScript backend (Triton's ``pytorch`` backend, platform ``pytorch_libtorch``).

It registers itself like any third-party backend would, through the ``v2server.backends`` entry point in
``pyproject.toml`` (``pytorch = "v2server.backends.torchscript:backend"``). Nothing outside this package
imports ``torch.jit``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from v2server._proto import model_config_pb2 as mc
from v2server.backends.torchscript.autocomplete import autocomplete_config
from v2server.backends.torchscript.devices import place_instances
from v2server.backends.torchscript.instance import TorchScriptInstance, load_instance
from v2server.errors import ModelLoadError
from v2server.signature import Signature

__all__ = ["TorchScriptBackend", "TorchScriptInstance", "backend", "load_instance"]


class TorchScriptBackend:
    """``ModelBackend`` for TorchScript files (``model.pt``)."""

    name = "pytorch"
    platforms = ("pytorch_libtorch",)
    default_model_filename = "model.pt"

    def devices(self, config: mc.ModelConfig) -> list[str]:
        return place_instances(config)

    def complete(self, config: mc.ModelConfig, path: Path) -> list[str]:
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise ModelLoadError(f"cannot load {path} to complete the config: {exc}") from exc
        return autocomplete_config(config, module)

    def load(
        self, path: Path, device: str, signature: Signature, label: str, parameters: Mapping[str, str]
    ) -> TorchScriptInstance:
        return load_instance(path, device, signature, label, parameters)


def backend() -> TorchScriptBackend:
    """The entry point's factory."""
    return TorchScriptBackend()
