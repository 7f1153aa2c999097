"""The benchmark's model repository: the bundled TorchScript files, plus a batching-free copy, an identity and
a compute-bound MLP.

Every server (ours and the peers) loads these very files; peers get them through our wrappers in ``peers/``.

``heavy_mlp`` is built here at bench time (random weights, fixed seed, about 24 MiB): FP32 ``[N, 1024]`` ->
Linear 2048 -> ReLU -> Linear 2048 -> ReLU -> Linear 16. At batch 1 each forward reads every weight once for
one row (a few milliseconds on one thread); at batch 64 the same read serves 64 rows, so a row costs several
times less. ``heavy_mlp_batching`` is the same file with dynamic batching: the pair shows what batching buys
when the model, not the transport, is the cost.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "model_repository"

__all__ = ["HEAVY_WIDTHS", "MODELS", "BenchModel", "build_repository"]


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
        BenchModel("heavy_mlp", ("INPUT__0",), ("OUTPUT__0",)),
        BenchModel("heavy_mlp_batching", ("INPUT__0",), ("OUTPUT__0",)),
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

#: heavy_mlp's layer widths, input to output
HEAVY_WIDTHS = (1024, 2048, 2048, 16)

_HEAVY_CONFIG = """name: "{name}"
platform: "pytorch_libtorch"
max_batch_size: 64
input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ {inputs} ] }} ]
output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ {outputs} ] }} ]
{batching}instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""

# A batch is sent when it reaches a preferred size or after 1 ms: a fraction of one batch-1 forward.
_HEAVY_BATCHING = """dynamic_batching {
  preferred_batch_size: [ 16, 32, 64 ]
  max_queue_delay_microseconds: 1000
}
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
    _build_heavy(repository)
    return repository


def _build_heavy(repository: Path) -> None:
    """``heavy_mlp`` and ``heavy_mlp_batching``: one TorchScript file (the second a hard link to it), two configs."""
    torch.manual_seed(0)
    heavy = torch.jit.script(_HeavyMLP(HEAVY_WIDTHS).eval())
    first = MODELS["heavy_mlp"].file(repository)
    for name, batching in (("heavy_mlp", ""), ("heavy_mlp_batching", _HEAVY_BATCHING)):
        model = MODELS[name].file(repository)
        model.parent.mkdir(parents=True)
        config = _HEAVY_CONFIG.format(
            name=name, inputs=HEAVY_WIDTHS[0], outputs=HEAVY_WIDTHS[-1], batching=batching
        )
        (model.parents[1] / "config.pbtxt").write_text(config)
        if model == first:
            heavy.save(str(model))
        else:
            try:
                os.link(first, model)
            except OSError:
                shutil.copyfile(first, model)


class _Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _HeavyMLP(torch.nn.Module):
    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(inputs, outputs) for inputs, outputs in zip(widths, widths[1:], strict=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x
