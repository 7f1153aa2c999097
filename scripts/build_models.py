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
* ``simple_sequence``, ``simple_dyna_sequence``, ``simple_string_dyna_sequence``: Triton's sequence models,
  with ``sequence_batching`` (``direct``; ``oldest`` with a UINT64 CORRID; ``oldest`` with a string CORRID and an
  implicit state accumulating ``INPUT``), as ``simple_*_sequence_*_client.py`` (and ``--dyna``) check them.
* ``sentiment_labelled``: ``sentiment`` (the same weights) with its classes labelled ``negative`` and
  ``positive`` (``label_filename: "labels.txt"``), for Triton's classification extension (``class_count``).
* ``repeat_int32``: Triton's decoupled example: over ``ModelStreamInfer``, one response per element of ``IN``
  (``OUT = IN[i]``, ``IDX = i``), ``DELAY[i]`` ms apart; unary inference is refused, as Triton does.
* ``custom_identity_int32``: Triton's ``custom_identity_int32`` (INT32 ``[-1]`` identity, ``max_batch_size:
  1024``), used by ``memory_growth_test.py``.
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


class Repeat(nn.Module):
    """Triton's ``repeat_int32`` as a decoupled model: one response per element of ``IN``, carrying
    ``OUT = IN[i]`` and ``IDX = i``. Outputs have a leading response dimension (``[n, 1]``: n responses of
    ``[1]``); ``DELAY`` paces them (config ``response_delay_input``); ``WAIT`` is accepted and unused."""

    def forward(self, IN: Tensor, DELAY: Tensor, WAIT: Tensor) -> Tuple[Tensor, Tensor]:  # noqa: N803 (config names)
        if IN.shape != DELAY.shape:
            raise ValueError("expected IN and DELAY shape to match")
        count = IN.shape[0]
        return IN.reshape(count, 1), torch.arange(count, dtype=torch.int64).to(torch.uint32).reshape(count, 1)


class IdentityInt32(nn.Module):
    """Triton's ``custom_identity_int32``: returns its input."""

    def forward(self, INPUT0: Tensor) -> Tensor:  # noqa: N803 (config names)
        return INPUT0


class SimpleSequence(nn.Module):
    """Triton's ``simple_sequence``: ``OUTPUT = READY * (INPUT + START)``. Stateless: the server's START and READY
    control inputs (``direct`` strategy) carry what the example clients check."""

    def forward(self, INPUT: Tensor, START: Tensor, READY: Tensor) -> Tensor:  # noqa: N803 (config names)
        return READY * (INPUT + START)


class SimpleDynaSequence(nn.Module):
    """Triton's ``simple_dyna_sequence``: ``OUTPUT = READY * (INPUT + START + END * int32(CORRID))`` (``oldest``
    strategy, UINT64 correlation id)."""

    def forward(  # noqa: N803 (config names)
        self, INPUT: Tensor, START: Tensor, END: Tensor, READY: Tensor, CORRID: Tensor
    ) -> Tensor:
        return READY * (INPUT + START + END * CORRID.to(torch.int32))


class SimpleStringDynaSequence(nn.Module):
    """Triton's ``simple_string_dyna_sequence`` as an accumulator in implicit state: ``OUTPUT = INPUT_STATE +
    INPUT``, plus the decimal string correlation id on the END request (0 for an id that is not decimal);
    ``OUTPUT_STATE = OUTPUT`` is what the server feeds back as ``INPUT_STATE`` (zero at START)."""

    def forward(  # noqa: N803 (config names)
        self, INPUT: Tensor, START: Tensor, END: Tensor, READY: Tensor, CORRID: List[str], INPUT_STATE: Tensor
    ) -> Tuple[Tensor, Tensor]:
        ids: List[int] = []
        for value in CORRID:
            ids.append(int(value) if value.isdigit() else 0)
        corrid = torch.tensor(ids, dtype=torch.int32).reshape(INPUT.shape)
        output = READY * (INPUT_STATE + INPUT + END * corrid)
        return output, output


def _controls(*controls: str) -> str:
    """``control_input`` entries: ``NAME`` for an int32 [0, 1] control of kind CONTROL_SEQUENCE_NAME, or
    ``NAME:TYPE`` for a CORRID of that datatype."""
    entries = []
    for control in controls:
        name, _, data_type = control.partition(":")
        setting = f"data_type: {data_type}" if data_type else "int32_false_true: [ 0, 1 ]"
        kind = "CORRID" if data_type else name
        entries.append(f'    {{ name: "{name}" control [ {{ kind: CONTROL_SEQUENCE_{kind} {setting} }} ] }}')
    return "  control_input [\n" + ",\n".join(entries) + "\n  ]"


_OLDEST = "  oldest {\n    max_candidate_sequences: 1024\n    max_queue_delay_microseconds: 10000\n  }"


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
    label_filename: str = ""
    """An output's classification labels file (in the model's folder; ``ModelSpec.files`` writes it)."""


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
    files: tuple[tuple[str, str], ...] = ()
    """Further files of the model's folder, as (name, text): an output's labels."""


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
        name="simple_sequence",
        build=lambda: torch.jit.script(SimpleSequence()),
        max_batch_size=8,
        inputs=(TensorSpec("INPUT", "TYPE_INT32", (1,)),),
        outputs=(TensorSpec("OUTPUT", "TYPE_INT32", (1,)),),
        comments=("the server fills START and READY (direct strategy: one batch row per sequence slot)",),
        extra=(
            "sequence_batching {\n  max_sequence_idle_microseconds: 5000000\n"
            + _controls("START", "READY") + "\n}",
        ),
    ),
    ModelSpec(
        name="simple_dyna_sequence",
        build=lambda: torch.jit.script(SimpleDynaSequence()),
        max_batch_size=8,
        inputs=(TensorSpec("INPUT", "TYPE_INT32", (1,)),),
        outputs=(TensorSpec("OUTPUT", "TYPE_INT32", (1,)),),
        comments=("the server fills START, END, READY and CORRID (oldest strategy)",),
        extra=(
            "sequence_batching {\n  max_sequence_idle_microseconds: 5000000\n" + _OLDEST + "\n"
            + _controls("START", "END", "READY", "CORRID:TYPE_UINT64") + "\n}",
        ),
    ),
    ModelSpec(
        name="simple_string_dyna_sequence",
        build=lambda: torch.jit.script(SimpleStringDynaSequence()),
        max_batch_size=8,
        inputs=(TensorSpec("INPUT", "TYPE_INT32", (1,)),),
        outputs=(TensorSpec("OUTPUT", "TYPE_INT32", (1,)),),
        comments=(
            "the server fills START, END, READY and the string CORRID, and keeps the running sum as implicit",
            "state: OUTPUT_STATE of one request is INPUT_STATE of the next (zero at START)",
        ),
        extra=(
            "sequence_batching {\n  max_sequence_idle_microseconds: 5000000\n" + _OLDEST + "\n"
            + _controls("START", "END", "READY", "CORRID:TYPE_STRING") + "\n"
            "  state [\n    {\n"
            '      input_name: "INPUT_STATE"\n      output_name: "OUTPUT_STATE"\n'
            "      data_type: TYPE_INT32\n      dims: [ 1 ]\n"
            '      initial_state: { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true name: "zero" }\n'
            "    }\n  ]\n}",
        ),
    ),
    ModelSpec(
        name="sentiment",
        build=lambda: torch.jit.script(Sentiment().eval()),
        max_batch_size=8,
        inputs=(TensorSpec("input_ids", "TYPE_INT64", (-1,)), TensorSpec("attention_mask", "TYPE_INT64", (-1,))),
        outputs=(TensorSpec("logits", "TYPE_FP32", (2,)),),
    ),
    ModelSpec(
        name="sentiment_labelled",
        build=lambda: torch.jit.script(Sentiment().eval()),
        max_batch_size=8,
        inputs=(TensorSpec("input_ids", "TYPE_INT64", (-1,)), TensorSpec("attention_mask", "TYPE_INT64", (-1,))),
        outputs=(TensorSpec("logits", "TYPE_FP32", (2,), label_filename="labels.txt"),),
        comments=("sentiment with labelled classes: ask for logits with classification (class_count) to get",
                  '"score:index:label" strings, e.g. "0.412345:1:positive".'),
        files=(("labels.txt", "negative\npositive\n"),),
    ),
    ModelSpec(
        name="repeat_int32",
        build=lambda: torch.jit.script(Repeat()),
        max_batch_size=0,
        inputs=(
            TensorSpec("IN", "TYPE_INT32", (-1,)),
            TensorSpec("DELAY", "TYPE_UINT32", (-1,)),
            TensorSpec("WAIT", "TYPE_UINT32", (1,)),
        ),
        outputs=(TensorSpec("OUT", "TYPE_INT32", (1,)), TensorSpec("IDX", "TYPE_UINT32", (1,))),
        comments=(
            "decoupled: one response per element of IN, sent over ModelStreamInfer only; forward returns",
            "OUT and IDX with a leading response dimension ([n, 1]), and DELAY[i] ms pass before response i.",
        ),
        extra=(
            "model_transaction_policy {\n  decoupled: true\n}",
            'parameters {\n  key: "response_delay_input"\n  value: { string_value: "DELAY" }\n}',
        ),
    ),
    ModelSpec(
        name="custom_identity_int32",
        build=lambda: torch.jit.script(IdentityInt32()),
        max_batch_size=1024,
        inputs=(TensorSpec("INPUT0", "TYPE_INT32", (-1,)),),
        outputs=(TensorSpec("OUTPUT0", "TYPE_INT32", (-1,)),),
    ),
)


def _render_tensors(field_name: str, tensors: Sequence[TensorSpec]) -> str:
    entries = ",\n".join(
        "  {\n"
        f'    name: "{t.name}"\n'
        f"    data_type: {t.data_type}\n"
        f"    dims: [ {', '.join(str(d) for d in t.dims)} ]\n"
        + (f'    label_filename: "{t.label_filename}"\n' if t.label_filename else "")
        + "  }"
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
    for file_name, text in spec.files:
        (model_dir / file_name).write_text(text, encoding="utf-8")
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
