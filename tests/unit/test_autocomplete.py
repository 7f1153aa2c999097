"""Auto-complete: inputs and outputs filled from the ``forward`` schema of a TorchScript file.

Every model is scripted, saved into ``tmp_path`` and loaded back with ``torch.jit.load``, because the schema
of a loaded file is what the server sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from v2server._proto import model_config_pb2 as mc
from v2server.backends import resolve
from v2server.backends.torchscript import load_instance
from v2server.backends.torchscript.autocomplete import autocomplete_config
from v2server.errors import ModelLoadError
from v2server.repository.config import complete_config, default_config
from v2server.signature import Signature
from v2server.tensors import from_raw, serialize_bytes


def adder(a: int, b: int) -> int:
    return a + b


def words(x: list[str]) -> list[str]:
    return x


def pair(x: float) -> tuple[int, float]:
    return int(x), x


def flags(on: bool, label: str, scale: Optional[float] = None) -> tuple[bool, list[str]]:  # noqa: UP045
    return on, [label]


def counts(x: dict[str, int]) -> int:
    return len(x)


def ints(x: list[int]) -> int:
    return len(x)


def text(x: int) -> str:
    return str(x)


def nothing(x: int) -> None:
    return None


def mixed(x: int) -> tuple[int, torch.Tensor]:
    return x, torch.zeros(1)


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class TensorDict(torch.nn.Module):
    def forward(self, inputs: dict[str, torch.Tensor]) -> int:
        return len(inputs)


class Square(torch.nn.Module):
    def forward(self, x: int) -> torch.Tensor:
        return torch.tensor([x * x])


def _load(tmp_path: Path, model: Any) -> torch.jit.ScriptModule:
    path = tmp_path / "model.pt"
    torch.jit.script(model).save(str(path))
    return torch.jit.load(str(path))  # type: ignore[no-untyped-call,no-any-return]


def _tensors(tensors: Any) -> list[tuple[str, str, list[int], bool]]:
    """``(name, data_type, dims, optional)`` per tensor (outputs are never optional)."""
    return [
        (t.name, mc.DataType.Name(t.data_type), list(t.dims), getattr(t, "optional", False)) for t in tensors
    ]


def test_scalar_arguments_and_result(tmp_path: Path) -> None:
    config = default_config("adder")
    notes = autocomplete_config(config, _load(tmp_path, adder))
    assert _tensors(config.input) == [("a", "TYPE_INT64", [1], False), ("b", "TYPE_INT64", [1], False)]
    assert _tensors(config.output) == [("OUTPUT__0", "TYPE_INT64", [1], False)]
    assert config.max_batch_size == 0
    assert notes == [
        "input 'a': TYPE_INT64 dims [1] (from forward argument 'a: int')",
        "input 'b': TYPE_INT64 dims [1] (from forward argument 'b: int')",
        "output 'OUTPUT__0': TYPE_INT64 dims [1] (from forward's result int)",
    ]


def test_string_lists_are_variable_length_strings(tmp_path: Path) -> None:
    config = default_config("words")
    autocomplete_config(config, _load(tmp_path, words))
    assert _tensors(config.input) == [("x", "TYPE_STRING", [-1], False)]
    assert _tensors(config.output) == [("OUTPUT__0", "TYPE_STRING", [-1], False)]


def test_a_tuple_result_is_one_indexed_output_per_element(tmp_path: Path) -> None:
    config = default_config("pair")
    notes = autocomplete_config(config, _load(tmp_path, pair))
    assert _tensors(config.input) == [("x", "TYPE_FP64", [1], False)]
    assert _tensors(config.output) == [
        ("OUTPUT__0", "TYPE_INT64", [1], False),
        ("OUTPUT__1", "TYPE_FP64", [1], False),
    ]
    assert notes[-1] == (
        "output 'OUTPUT__1': TYPE_FP64 dims [1] (from element 1 of forward's Tuple[int, float])"
    )


def test_bool_str_and_optional_arguments(tmp_path: Path) -> None:
    config = default_config("flags")
    autocomplete_config(config, _load(tmp_path, flags))
    assert _tensors(config.input) == [
        ("on", "TYPE_BOOL", [1], False),
        ("label", "TYPE_STRING", [1], False),
        ("scale", "TYPE_FP64", [1], True),
    ]
    assert _tensors(config.output) == [
        ("OUTPUT__0", "TYPE_BOOL", [1], False),
        ("OUTPUT__1", "TYPE_STRING", [-1], False),
    ]


def test_a_script_module_completes_like_a_function(tmp_path: Path) -> None:
    config = text_format.Parse(
        'output [{ name: "squared" data_type: TYPE_INT64 dims: [ 1 ] }]', mc.ModelConfig()
    )
    autocomplete_config(config, _load(tmp_path, Square()))
    assert _tensors(config.input) == [("x", "TYPE_INT64", [1], False)]
    assert _tensors(config.output) == [("squared", "TYPE_INT64", [1], False)]


def test_the_completed_config_validates(tmp_path: Path) -> None:
    config = default_config("pair")
    autocomplete_config(config, _load(tmp_path, pair))
    resolve(config, "<auto-complete>")
    complete_config(config, "pair", "<auto-complete>")
    assert (config.platform, config.backend) == ("pytorch_libtorch", "pytorch")
    assert config.default_model_filename == "model.pt"


async def test_the_backend_serves_a_completed_config(tmp_path: Path) -> None:
    """The completed names and types are the ones the TorchScript backend binds and converts."""
    config = default_config("adder")
    autocomplete_config(config, _load(tmp_path, adder))
    complete_config(config, "adder", "<auto-complete>")
    instance = load_instance(tmp_path / "model.pt", "cpu", Signature.from_config(config), "autocomplete-test")
    try:
        inputs = [from_raw(name, "INT64", [1], np.int64(v).tobytes()) for name, v in (("a", 2), ("b", 3))]
        (total,) = await instance.execute(inputs, ["OUTPUT__0"], 0)
        assert total.array.tolist() == [5]
    finally:
        instance.close()
    config = default_config("words")
    autocomplete_config(config, _load(tmp_path, words))
    complete_config(config, "words", "<auto-complete>")
    instance = load_instance(tmp_path / "model.pt", "cpu", Signature.from_config(config), "autocomplete-test")
    try:
        raw = serialize_bytes(np.array([b"x", b"yz"], dtype=object))
        (echoed,) = await instance.execute([from_raw("x", "BYTES", [2], raw)], ["OUTPUT__0"], 0)
        assert echoed.array.tolist() == [b"x", b"yz"]
    finally:
        instance.close()


def test_declared_inputs_and_outputs_are_left_as_they_are(tmp_path: Path) -> None:
    declared = 'input [{ name: "INPUT__0" data_type: TYPE_INT32 dims: [ 1 ] }]'
    config = text_format.Parse(declared, mc.ModelConfig())
    notes = autocomplete_config(config, _load(tmp_path, adder))
    assert _tensors(config.input) == [("INPUT__0", "TYPE_INT32", [1], False)]  # partial, and kept so
    assert _tensors(config.output) == [("OUTPUT__0", "TYPE_INT64", [1], False)]
    assert len(notes) == 1
    both = declared + ' output [{ name: "sum" data_type: TYPE_INT32 dims: [ 1 ] }] max_batch_size: 2'
    config = text_format.Parse(both, mc.ModelConfig())
    assert autocomplete_config(config, _load(tmp_path, Identity())) == []  # nothing to infer, nothing refused
    assert config == text_format.Parse(both, mc.ModelConfig())


def test_a_declared_tensor_side_lets_the_other_side_complete(tmp_path: Path) -> None:
    config = text_format.Parse('input [{ name: "x" data_type: TYPE_FP32 dims: [ 3 ] }]', mc.ModelConfig())
    with pytest.raises(ModelLoadError, match="cannot auto-complete outputs: forward returns Tensor"):
        autocomplete_config(config, _load(tmp_path, Identity()))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            Identity(),
            (
                "cannot auto-complete inputs: forward argument 'x' is Tensor, and TorchScript records no "
                "datatype or shape for a Tensor; declare the model's inputs in config.pbtxt"
            ),
        ),
        (TensorDict(), "forward argument 'inputs' is Dict[str, Tensor], whose keys TorchScript does not"),
        (counts, "forward argument 'x' is Dict[str, int], which V2 cannot describe"),
        (ints, "forward argument 'x' is List[int]; only int, float, bool, str, List[str] and Optional ones"),
        (
            Square(),
            (
                "cannot auto-complete outputs: forward returns Tensor, and TorchScript records no "
                "datatype or shape for a Tensor; declare the model's outputs in config.pbtxt"
            ),
        ),
        (mixed, "cannot auto-complete outputs: element 1 of forward's Tuple[int, Tensor] is Tensor"),
        (text, "cannot auto-complete outputs: forward returns str; only int, float, bool and List[str]"),
        (nothing, "cannot auto-complete outputs: forward returns NoneType"),
    ],
)
def test_types_that_do_not_fix_a_datatype_and_shape_are_refused(
    tmp_path: Path, model: Any, message: str
) -> None:
    with pytest.raises(ModelLoadError) as caught:
        autocomplete_config(default_config("m"), _load(tmp_path, model))
    assert message in caught.value.message


def test_default_config_names_the_model_and_the_catalog_picks_the_default_backend() -> None:
    config = default_config("adder")
    assert config == mc.ModelConfig(name="adder")
    assert resolve(config, "<none>").name == "pytorch"
    assert config == mc.ModelConfig(
        name="adder", platform="pytorch_libtorch", backend="pytorch", default_model_filename="model.pt"
    )
