"""(Re)build the bundled Triton-style model repository.

Usage::

    python scripts/build_models.py model_repository

For every model this writes ``<repo>/<model>/config.pbtxt`` (Triton's ``ModelConfig`` in protobuf text format)
and ``<repo>/<model>/1/model.pt`` (TorchScript, saved with ``torch.jit.save``). Each model's directory is
replaced as a whole, so stale versions and files disappear; other directories in the repository are left alone.

The build is deterministic: the random generator is seeded with 0 before each model is built, so rebuilding
gives the same weights, and the script re-executes itself with ``PYTHONHASHSEED=0`` because TorchScript
serializes some class members in set order, which string hash randomization would shuffle from run to run.
Rebuilding from the same checkout path then gives byte-identical files; from another path only the debug
records differ (``code/*.debug_pkl``, which name the absolute path of this script, and the archive's
``.data/serialization_id``). TorchScript compiles from source, so every module and function it scripts is
defined at module level here.

Models:

* ``simple``, ``simple_int8``, ``simple_string``: Triton's classic example, ``OUTPUT0 = INPUT0 + INPUT1`` and
  ``OUTPUT1 = INPUT0 - INPUT1`` over 16 INT32, INT8 or decimal-string elements per batch row.
* ``simple_identity``: returns its variable-length string input.
* ``mlp``: a small seeded FP32 classifier (784 -> 128 -> 10) with dynamic batching.
* ``example_doubler``, ``example_dict_doubler``, ``example_adder``: scripted *functions* (not modules) taking
  Python scalars or a dict, which load back as modules whose ``forward`` is the function. The dict argument
  travels as one BYTES element holding a JSON object.
* ``sentiment``: a tiny deterministic text classifier (embedding, mean-pool under ``attention_mask``, linear)
  from INT64 ``input_ids`` and ``attention_mask`` ``[-1]`` to two FP32 ``logits``, ``max_batch_size: 8``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["MODELS", "ModelSpec", "TensorSpec", "build_model", "build_repository", "render_config"]

SEED = 0
VERSION = "1"
PLATFORM = "pytorch_libtorch"

Scripted = Union[torch.jit.ScriptModule, torch.jit.ScriptFunction]


# --------------------------------------------------------------------------------------------------------------
# TorchScript sources (module level: torch.jit.script needs to read their source).
# --------------------------------------------------------------------------------------------------------------


class Simple(nn.Module):
    """Triton's ``simple`` model: element-wise sum and difference of two INT32 tensors."""

    def forward(self, INPUT0: Tensor, INPUT1: Tensor) -> Tuple[Tensor, Tensor]:  # noqa: N803 (config names)
        return INPUT0 + INPUT1, INPUT0 - INPUT1


class SimpleInt8(nn.Module):
    """``simple`` over INT8: computes in INT32 and casts the results back to INT8 (wrapping on overflow)."""

    def forward(self, INPUT0: Tensor, INPUT1: Tensor) -> Tuple[Tensor, Tensor]:  # noqa: N803 (config names)
        a = INPUT0.to(torch.int32)
        b = INPUT1.to(torch.int32)
        return (a + b).to(torch.int8), (a - b).to(torch.int8)


class SimpleString(nn.Module):
    """``simple`` over decimal strings.

    The server passes each BYTES input as a flat ``List[str]`` (all batch rows concatenated, row-major); the
    outputs are flat lists of the same length holding the decimal sum and difference of each element pair.
    """

    def forward(
        self, INPUT0: List[str], INPUT1: List[str]  # noqa: N803 (config names)
    ) -> Tuple[List[str], List[str]]:
        sums: List[str] = []
        differences: List[str] = []
        for i in range(len(INPUT0)):
            a = int(INPUT0[i])
            b = int(INPUT1[i])
            sums.append(str(a + b))
            differences.append(str(a - b))
        return sums, differences


class SimpleIdentity(nn.Module):
    """Returns its string input unchanged."""

    def forward(self, INPUT0: List[str]) -> List[str]:  # noqa: N803 (config names)
        return INPUT0


class Mlp(nn.Module):
    """A two-layer perceptron, 784 -> 128 -> ReLU -> 10 (MNIST-shaped), with seeded random weights."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(784, 128)
        self.output = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(torch.relu(self.hidden(x)))


class Sentiment(nn.Module):
    """Token ids (hashed into a small vocabulary) -> embeddings -> masked mean -> 2 logits."""

    def __init__(self, vocabulary: int = 1024, width: int = 16) -> None:
        super().__init__()
        self.vocabulary = vocabulary
        self.embedding = nn.Embedding(vocabulary, width)
        self.classifier = nn.Linear(width, 2)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        embedded = self.embedding(torch.remainder(input_ids, self.vocabulary))
        mask = attention_mask.to(embedded.dtype).unsqueeze(-1)
        pooled = (embedded * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.classifier(pooled)


def doubler(foo: int) -> int:
    """Twice ``foo``."""
    return 2 * foo


def dict_doubler(d: Dict[str, int]) -> int:
    """Twice ``d["value"]``."""
    return d["value"] * 2


def adder(a: int, b: int, c: int) -> int:
    """The sum of three integers."""
    return a + b + c


# --------------------------------------------------------------------------------------------------------------
# Model configurations.
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One ``input`` or ``output`` entry of a ``ModelConfig``."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A bundled model: its configuration and how to build its TorchScript."""

    name: str
    build: Callable[[], Scripted]
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    instance_kind: str = "KIND_CPU"
    comments: tuple[str, ...] = ()
    """``# comment`` lines at the top of the config."""
    extra: tuple[str, ...] = ()
    """Further top-level text-format fields, written verbatim between the outputs and the instance group."""


def _pair(data_type: str, dims: tuple[int, ...]) -> tuple[TensorSpec, ...]:
    return (TensorSpec("INPUT0", data_type, dims), TensorSpec("INPUT1", data_type, dims))


def _outputs(data_type: str, dims: tuple[int, ...]) -> tuple[TensorSpec, ...]:
    return (TensorSpec("OUTPUT0", data_type, dims), TensorSpec("OUTPUT1", data_type, dims))


_SCALAR_OUT = (TensorSpec("OUTPUT__0", "TYPE_INT64", (1,)),)

MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="simple",
        build=lambda: torch.jit.script(Simple()),
        max_batch_size=8,
        inputs=_pair("TYPE_INT32", (16,)),
        outputs=_outputs("TYPE_INT32", (16,)),
    ),
    ModelSpec(
        name="simple_int8",
        build=lambda: torch.jit.script(SimpleInt8()),
        max_batch_size=8,
        inputs=_pair("TYPE_INT8", (16,)),
        outputs=_outputs("TYPE_INT8", (16,)),
    ),
    ModelSpec(
        name="simple_string",
        build=lambda: torch.jit.script(SimpleString()),
        max_batch_size=8,
        inputs=_pair("TYPE_STRING", (16,)),
        outputs=_outputs("TYPE_STRING", (16,)),
    ),
    ModelSpec(
        name="simple_identity",
        build=lambda: torch.jit.script(SimpleIdentity()),
        max_batch_size=8,
        inputs=(TensorSpec("INPUT0", "TYPE_STRING", (-1,)),),
        outputs=(TensorSpec("OUTPUT0", "TYPE_STRING", (-1,)),),
    ),
    ModelSpec(
        name="mlp",
        build=lambda: torch.jit.script(Mlp().eval()),
        max_batch_size=64,
        inputs=(TensorSpec("INPUT__0", "TYPE_FP32", (784,)),),
        outputs=(TensorSpec("OUTPUT__0", "TYPE_FP32", (10,)),),
        instance_kind="KIND_AUTO",
        extra=(
            "dynamic_batching {\n"
            "  preferred_batch_size: [ 16, 32 ]\n"
            "  max_queue_delay_microseconds: 100\n"
            "}",
        ),
    ),
    ModelSpec(
        name="example_doubler",
        build=lambda: torch.jit.script(doubler),
        max_batch_size=0,
        inputs=(TensorSpec("foo", "TYPE_INT64", (1,)),),
        outputs=_SCALAR_OUT,
    ),
    ModelSpec(
        name="example_dict_doubler",
        build=lambda: torch.jit.script(dict_doubler),
        max_batch_size=0,
        inputs=(TensorSpec("d", "TYPE_STRING", (1,)),),
        outputs=_SCALAR_OUT,
        comments=(
            "forward takes Dict[str, int]: input d is one BYTES element holding a JSON object such as",
            '{"value": 10}; the /v1 route takes {"data": {"value": 10}} and sends that JSON.',
        ),
    ),
    ModelSpec(
        name="example_adder",
        build=lambda: torch.jit.script(adder),
        max_batch_size=0,
        inputs=tuple(TensorSpec(name, "TYPE_INT64", (1,)) for name in ("a", "b", "c")),
        outputs=_SCALAR_OUT,
    ),
    ModelSpec(
        name="sentiment",
        build=lambda: torch.jit.script(Sentiment().eval()),
        max_batch_size=8,
        inputs=(TensorSpec("input_ids", "TYPE_INT64", (-1,)), TensorSpec("attention_mask", "TYPE_INT64", (-1,))),
        outputs=(TensorSpec("logits", "TYPE_FP32", (2,)),),
    ),
)


def _render_tensors(field_name: str, tensors: Sequence[TensorSpec]) -> str:
    entries = ",\n".join(
        "  {\n"
        f'    name: "{t.name}"\n'
        f"    data_type: {t.data_type}\n"
        f"    dims: [ {', '.join(str(d) for d in t.dims)} ]\n"
        "  }"
        for t in tensors
    )
    return f"{field_name} [\n{entries}\n]"


def render_config(spec: ModelSpec) -> str:
    """``spec``'s ``config.pbtxt``: a ``ModelConfig`` in protobuf text format."""
    parts = [
        "\n".join(
            [f"# {line}" for line in spec.comments]
            + [
                f'name: "{spec.name}"',
                f'platform: "{PLATFORM}"',
                f"max_batch_size: {spec.max_batch_size}",
            ]
        ),
        _render_tensors("input", spec.inputs),
        _render_tensors("output", spec.outputs),
        *spec.extra,
        f"instance_group [ {{ count: 1 kind: {spec.instance_kind} }} ]",
    ]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------------------------
# Building.
# --------------------------------------------------------------------------------------------------------------


def build_model(spec: ModelSpec, repository: Path) -> Path:
    """Replace ``repository/<spec.name>`` with a fresh build of ``spec``; returns the model directory."""
    model_dir = repository / spec.name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    version_dir = model_dir / VERSION
    version_dir.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(render_config(spec), encoding="utf-8")
    torch.manual_seed(SEED)
    scripted = spec.build()
    torch.jit.save(scripted, str(version_dir / "model.pt"))
    return model_dir


def build_repository(repository: Path, names: Sequence[str] = ()) -> list[Path]:
    """Build the models named in ``names`` (all of them when empty) into ``repository``."""
    known = {spec.name: spec for spec in MODELS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(known)}")
    selected = [known[name] for name in names] if names else list(MODELS)
    repository.mkdir(parents=True, exist_ok=True)
    return [build_model(spec, repository) for spec in selected]


def _ensure_fixed_hash_seed() -> None:
    """Re-execute this script with ``PYTHONHASHSEED=0`` unless it already runs with it (see the module doc)."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: build the models named on the command line (default: all)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("repository", type=Path, help="the model repository directory to (re)build into")
    parser.add_argument("models", nargs="*", help="models to build (default: all)")
    args = parser.parse_args(argv)
    try:
        built = build_repository(args.repository, args.models)
    except ValueError as error:
        parser.error(str(error))
    for model_dir in built:
        print(f"built {model_dir}")
    return 0


if __name__ == "__main__":
    _ensure_fixed_hash_seed()
    sys.exit(main())
