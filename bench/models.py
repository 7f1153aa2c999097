"""The benchmark's model repository: the bundled TorchScript files, plus a batching-free copy and an identity.

Every server (ours and the peers) loads these very files; peers get them through our wrappers in ``peers/``.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "model_repository"

__all__ = ["BenchModel", "MODELS", "build_repository"]


@dataclass(frozen=True)
class BenchModel:
    name: str
    inputs: tuple[str, ...]  # in the order forward() takes them
    outputs: tuple[str, ...]  # in the order forward() returns them

    def file(self, repository: Path) -> Path:
        return repository / self.name / "1" / "model.pt"


MODELS = {
    model.name: model
    for model in (
        BenchModel("simple", ("INPUT0", "INPUT1"), ("OUTPUT0", "OUTPUT1")),
        BenchModel("mlp", ("INPUT__0",), ("OUTPUT__0",)),
        BenchModel("mlp_nobatch", ("INPUT__0",), ("OUTPUT__0",)),
        BenchModel("identity_fp32", ("INPUT0",), ("OUTPUT0",)),
        # bench.heavy only (build_repository(extra=...)): BYTES [-1] identity, and /v1's three-scalar adder
        BenchModel("simple_identity", ("INPUT0",), ("OUTPUT0",)),
        BenchModel("example_adder", ("a", "b", "c"), ("OUTPUT__0",)),
    )
}

_IDENTITY_CONFIG = """name: "identity_fp32"
platform: "pytorch_libtorch"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


def build_repository(repository: Path, extra: tuple[str, ...] = ()) -> Path:
    """(Re)write the benchmark repository under ``repository``, plus the ``extra`` bundled models; returns it."""
    if repository.exists():
        shutil.rmtree(repository)
    repository.mkdir(parents=True)
    for name in ("simple", "mlp", *extra):
        shutil.copytree(BUNDLED / name, repository / name, ignore=shutil.ignore_patterns("aliases.json"))
    # The same MLP without dynamic batching: what the peers do (neither batches by default).
    shutil.copytree(BUNDLED / "mlp", repository / "mlp_nobatch")
    config = (BUNDLED / "mlp" / "config.pbtxt").read_text()
    config = re.sub(r"dynamic_batching \{[^}]*\}\n", "", config).replace('name: "mlp"', 'name: "mlp_nobatch"')
    (repository / "mlp_nobatch" / "config.pbtxt").write_text(config)
    identity = repository / "identity_fp32"
    (identity / "1").mkdir(parents=True)
    (identity / "config.pbtxt").write_text(_IDENTITY_CONFIG)
    torch.jit.script(_Identity()).save(str(identity / "1" / "model.pt"))
    return repository


class _Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
