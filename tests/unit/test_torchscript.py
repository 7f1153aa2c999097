"""TorchScript instances: Triton's rules for binding inputs to ``forward`` and results to outputs.

Every test scripts a tiny module into ``tmp_path``, loads it through ``load_instance`` and runs it through
``execute``, with inputs decoded from raw bytes as a request's would be.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from v2server._proto import model_config_pb2 as mc
from v2server.backends.torchscript import TorchScriptInstance, load_instance
from v2server.errors import InferenceFailed, InvalidRequest, ModelLoadError, V2Error
from v2server.repository.config import complete_config
from v2server.signature import Signature
from v2server.tensors import Tensor, from_raw, serialize_bytes

Load = Callable[..., TorchScriptInstance]


@pytest.fixture
def load(tmp_path: Path) -> Iterator[Load]:
    """Script ``module``, save it, and load it with a signature from config text (instances closed after)."""
    instances: list[TorchScriptInstance] = []

    def load_(module: torch.nn.Module, config: str, device: str = "cpu") -> TorchScriptInstance:
        path = tmp_path / f"model_{len(instances)}.pt"
        torch.jit.script(module).save(str(path))
        instance = load_instance(path, device, _signature(config), "test")
        instances.append(instance)
        return instance

    yield load_
    for instance in instances:
        instance.close()


def _signature(config: str) -> Signature:
    return Signature.from_config(complete_config(text_format.Parse(config, mc.ModelConfig()), "m", "<test>"))


def _tensor(name: str, datatype: str, values: object, shape: list[int] | None = None) -> Tensor:
    """A request input decoded from raw bytes, as the data plane decodes it."""
    if datatype == "BYTES":
        array = np.empty(len(values), dtype=object)  # type: ignore[arg-type]
        array[:] = values
        raw = serialize_bytes(array)
    elif datatype == "BF16":
        raw = torch.tensor(values, dtype=torch.bfloat16).view(torch.int16).numpy().tobytes()
    else:
        raw = np.array(values, dtype=np.dtype(datatype.lower().replace("fp", "float"))).tobytes()
    return from_raw(name, datatype, shape if shape is not None else list(np.shape(values)), raw)


def _io(kind: str, *specs: str) -> str:
    """``input``/``output`` config entries from ``NAME:TYPE:dims`` strings (dims comma separated)."""
    entries = []
    for spec in specs:
        name, type_, dims = spec.split(":")
        entries.append(f'{{ name: "{name}" data_type: TYPE_{type_} dims: [ {dims} ] }}')
    return f"{kind} [ {', '.join(entries)} ]"


class Subtract(torch.nn.Module):
    def forward(self, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return a - b


class SubtractXY(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x - y


@pytest.mark.parametrize(
    ("module", "listed", "first", "second"),
    [
        (Subtract(), ("a", "b"), "a", "b"),  # by forward argument name: forward(b, a)
        (SubtractXY(), ("SECOND__1", "FIRST__0"), "FIRST__0", "SECOND__1"),  # by the __<index> suffix
        (SubtractXY(), ("FIRST", "SECOND"), "FIRST", "SECOND"),  # by config order
    ],
    ids=["argument-name", "index-suffix", "config-order"],
)
async def test_input_binding(
    load: Load, module: torch.nn.Module, listed: tuple[str, str], first: str, second: str
) -> None:
    """Each model computes first - second; binding by config order alone would get the first two negated."""
    instance = load(module, _io("input", *(f"{n}:INT32:2" for n in listed)) + _io("output", "OUT:INT32:2"))
    [out] = await instance.execute([_tensor(second, "INT32", [2, 3]), _tensor(first, "INT32", [10, 20])], ["OUT"], 0)
    assert (out.name, out.datatype.name, out.array.tolist()) == ("OUT", "INT32", [8, 17])


class DictInput(torch.nn.Module):
    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return inputs["A"] * 10 + inputs["B"]


async def test_dict_argument_receives_all_inputs_by_name(load: Load) -> None:
    instance = load(DictInput(), _io("input", "B:INT64:1", "A:INT64:1") + _io("output", "OUT:INT64:1"))
    [out] = await instance.execute([_tensor("A", "INT64", [4]), _tensor("B", "INT64", [2])], ["OUT"], 0)
    assert out.array.tolist() == [42]


class TupleResult(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + 1, x * 10


class ListResult(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x + 1, x * 10]


class DictResult(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"TEN": x * 10, "PLUS": x + 1}


@pytest.mark.parametrize(
    ("module", "outputs"),
    [
        (TupleResult(), ("PLUS", "TEN")),  # config order
        (ListResult(), ("PLUS", "TEN")),
        (TupleResult(), ("OUTPUT__1", "OUTPUT__0")),  # by index, listed out of order on purpose
        (DictResult(), ("TEN", "PLUS")),  # by key
    ],
    ids=["tuple-config-order", "list-config-order", "tuple-output-index", "dict-by-key"],
)
async def test_output_mapping(load: Load, module: torch.nn.Module, outputs: tuple[str, str]) -> None:
    plus, ten = ("OUTPUT__0", "OUTPUT__1") if outputs[0].startswith("OUTPUT__") else ("PLUS", "TEN")
    instance = load(module, _io("input", "x:INT32:2") + _io("output", *(f"{n}:INT32:2" for n in outputs)))
    result = await instance.execute([_tensor("x", "INT32", [1, 2])], [ten, plus], 0)
    assert [(t.name, t.array.tolist()) for t in result] == [(ten, [10, 20]), (plus, [2, 3])]


class Exclaim(torch.nn.Module):
    def forward(self, words: list[str]) -> list[str]:
        return [w + "!" for w in words]


async def test_strings_in_and_out(load: Load) -> None:
    instance = load(Exclaim(), "max_batch_size: 4 " + _io("input", "words:STRING:1") + _io("output", "OUT:STRING:1"))
    [out] = await instance.execute([_tensor("words", "BYTES", [b"abc", "é".encode()], [2, 1])], ["OUT"], 2)
    assert (out.datatype.name, out.shape, out.array.tolist()) == ("BYTES", (2, 1), [[b"abc!"], ["é!".encode()]])


async def test_non_utf8_bytes_into_list_of_str(load: Load) -> None:
    instance = load(Exclaim(), _io("input", "words:STRING:1") + _io("output", "OUT:STRING:1"))
    with pytest.raises(InvalidRequest, match="input 'words': an element is not valid UTF-8"):
        await instance.execute([_tensor("words", "BYTES", [b"\xff\xfe"])], ["OUT"], 0)


class Count(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> int:
        return x.numel()


async def test_scalar_int_result(load: Load) -> None:
    instance = load(Count(), "max_batch_size: 2 " + _io("input", "x:FP32:3") + _io("output", "N:INT64:1"))
    [out] = await instance.execute([_tensor("x", "FP32", [[1, 2, 3]])], ["N"], 1)
    assert (out.datatype.name, str(out.array.dtype), out.shape, out.array.tolist()) == ("INT64", "int64", (1, 1), [[3]])


class Repeat(torch.nn.Module):
    def forward(self, x: torch.Tensor, times: int) -> torch.Tensor:
        return x.repeat(times)


async def test_scalar_argument(load: Load) -> None:
    instance = load(Repeat(), _io("input", "x:INT32:-1", "times:INT64:-1") + _io("output", "OUT:INT32:-1"))
    [out] = await instance.execute([_tensor("x", "INT32", [1, 2]), _tensor("times", "INT64", [3])], ["OUT"], 0)
    assert out.array.tolist() == [1, 2] * 3
    with pytest.raises(InvalidRequest) as caught:
        await instance.execute([_tensor("x", "INT32", [1]), _tensor("times", "INT64", [2, 3])], ["OUT"], 0)
    assert caught.value.message == (
        "input 'times': forward argument 'times' is a scalar int, so the tensor must hold exactly one element, not 2"
    )


class IntDict(torch.nn.Module):
    def forward(self, x: torch.Tensor, options: dict[str, int]) -> torch.Tensor:
        return x * options["scale"]


class IntList(torch.nn.Module):
    def forward(self, x: torch.Tensor, options: list[int]) -> torch.Tensor:
        return x


async def test_argument_no_tensor_can_carry(load: Load) -> None:
    instance = load(IntList(), _io("input", "x:INT32:1", "options:INT32:1") + _io("output", "OUT:INT32:1"))
    with pytest.raises(InvalidRequest) as caught:
        await instance.execute([_tensor("x", "INT32", [1]), _tensor("options", "INT32", [1])], ["OUT"], 0)
    assert caught.value.message == (
        "model 'm': forward argument 'options' is List[int], which no V2 tensor can carry"
    )


def _json(name: str, text: bytes) -> Tensor:
    return from_raw(name, "BYTES", [1], serialize_bytes(np.array([text], dtype=object)))


async def test_dict_argument_takes_a_json_object(load: Load) -> None:
    instance = load(IntDict(), _io("input", "x:INT32:1", "options:STRING:1") + _io("output", "OUT:INT32:1"))
    x = _tensor("x", "INT32", [1])
    result = await instance.execute([x, _json("options", b'{"scale": 3}')], ["OUT"], 0)
    np.testing.assert_array_equal(result[0].array, x.array * 3)
    where = "input 'options': forward argument 'options' is Dict[str, int]"
    cases = {
        b"[1]": f"{where}, but the element holds a JSON list, not an object",
        b"{": f"{where}, but the element is not valid JSON",
        b'{"scale": "3"}': f"{where}: the value of key 'scale' is \"3\", not int",
        b'{"scale": 1.5}': f"{where}: the value of key 'scale' is 1.5, not int",
        b'{"scale": true}': f"{where}: the value of key 'scale' is true, not int",
    }
    for text, message in cases.items():
        with pytest.raises(InvalidRequest) as caught:
            await instance.execute([x, _json("options", text)], ["OUT"], 0)
        assert caught.value.message.startswith(message), caught.value.message
    with pytest.raises(InvalidRequest) as caught:
        await instance.execute([x, _tensor("options", "INT32", [1])], ["OUT"], 0)
    assert caught.value.message == f"{where}, which takes one BYTES element holding a JSON object, not INT32"


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


async def test_bytes_cannot_become_a_tensor_argument(load: Load) -> None:
    instance = load(Identity(), _io("input", "x:STRING:1") + _io("output", "OUT:STRING:1"))
    with pytest.raises(InvalidRequest, match="input 'x': BYTES cannot become a Tensor argument; use List\\[str\\]"):
        await instance.execute([_tensor("x", "BYTES", [b"a"])], ["OUT"], 0)


class ToFloat(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


async def test_output_dtype_that_differs_from_the_config(load: Load) -> None:
    instance = load(ToFloat(), _io("input", "x:INT32:1") + _io("output", "OUT:INT32:1"))
    with pytest.raises(InferenceFailed) as caught:
        await instance.execute([_tensor("x", "INT32", [1])], ["OUT"], 0)
    assert caught.value.message == "model 'm' output 'OUT' has dtype torch.float32, but the config declares TYPE_INT32"


async def test_output_the_model_does_not_return(load: Load) -> None:
    instance = load(DictResult(), _io("input", "x:INT32:1") + _io("output", "TEN:INT32:1", "ELEVEN:INT32:1"))
    with pytest.raises(InferenceFailed, match="model 'm' returned no value for output 'ELEVEN'"):
        await instance.execute([_tensor("x", "INT32", [1])], ["TEN", "ELEVEN"], 0)


class Words(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> list[str]:
        return ["a", "b"]


@pytest.mark.parametrize(
    ("module", "output"),
    [
        (Words(), "OUT:INT32:2"),
        (Identity(), "OUT:STRING:1"),
    ],
    ids=["strings-for-int32", "tensor-for-bytes"],
)
async def test_result_kind_that_differs_from_the_config(load: Load, module: torch.nn.Module, output: str) -> None:
    instance = load(module, _io("input", "x:INT32:1") + _io("output", output))
    with pytest.raises(InferenceFailed, match="output 'OUT'"):
        await instance.execute([_tensor("x", "INT32", [7])], ["OUT"], 0)


class CountWords(torch.nn.Module):
    def forward(self, words: list[str]) -> int:
        return len(words)


class Echo(torch.nn.Module):
    def forward(self, n: int) -> int:
        return n


@pytest.mark.parametrize(
    ("module", "config", "tensor"),
    [
        (CountWords(), _io("input", "words:INT32:2"), ("words", "INT32", [1, 2])),
        (Echo(), _io("input", "n:STRING:1"), ("n", "BYTES", [b"abc"])),
    ],
    ids=["int32-into-list-of-str", "bytes-into-int"],
)
async def test_input_datatype_the_argument_cannot_take(
    load: Load, module: torch.nn.Module, config: str, tensor: tuple[str, str, list[object]]
) -> None:
    # Refused at load (ModelLoadError) or per request (InvalidRequest): either way an error that names it.
    with pytest.raises(V2Error, match=f"'{tensor[0]}'"):
        instance = load(module, config + _io("output", "OUT:INT64:1"))
        await instance.execute([_tensor(*tensor)], ["OUT"], 0)


class Guarded(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < 0).any()):
            raise RuntimeError("negative input is not allowed")
        return x


async def test_model_that_raises(load: Load) -> None:
    instance = load(Guarded(), _io("input", "x:FP32:1") + _io("output", "OUT:FP32:1"))
    with pytest.raises(InferenceFailed) as caught:
        await instance.execute([_tensor("x", "FP32", [-1])], ["OUT"], 0)
    assert caught.value.message.startswith("model 'm' failed: ")
    assert "negative input is not allowed" in caught.value.message
    [out] = await instance.execute([_tensor("x", "FP32", [1])], ["OUT"], 0)  # the instance still serves
    assert out.array.tolist() == [1.0]


class Transpose(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1:] == (2, 3)
        return x.transpose(1, 2).contiguous()


async def test_reshape_of_input_and_output(load: Load) -> None:
    config = """
    max_batch_size: 4
    input [ { name: "x" data_type: TYPE_FP32 dims: [ 6 ] reshape: { shape: [ 2, 3 ] } } ]
    output [ { name: "y" data_type: TYPE_FP32 dims: [ 6 ] reshape: { shape: [ 3, 2 ] } } ]
    """
    instance = load(Transpose(), config)
    [out] = await instance.execute([_tensor("x", "FP32", [[0, 1, 2, 3, 4, 5]] * 2)], ["y"], 2)
    assert out.shape == (2, 6)
    assert out.array.tolist() == [[0, 3, 1, 4, 2, 5]] * 2


class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


async def test_bf16_in_and_out(load: Load) -> None:
    instance = load(Double(), _io("input", "x:BF16:3") + _io("output", "y:BF16:3"))
    [out] = await instance.execute([_tensor("x", "BF16", [1.5, -0.25, 3.0])], ["y"], 0)
    assert (out.datatype.name, str(out.array.dtype)) == ("BF16", "uint16")
    assert torch.from_numpy(out.array.copy()).view(torch.bfloat16).tolist() == [3.0, -0.5, 6.0]


class OptionalSecond(torch.nn.Module):
    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return x if bias is None else x + bias


async def test_optional_argument_may_have_no_input(load: Load) -> None:
    instance = load(OptionalSecond(), _io("input", "x:INT32:1") + _io("output", "OUT:INT32:1"))
    [out] = await instance.execute([_tensor("x", "INT32", [5])], ["OUT"], 0)
    assert out.array.tolist() == [5]


def test_synchronous_run_path(load: Load) -> None:
    instance = load(Double(), _io("input", "x:INT16:2") + _io("output", "y:INT16:2"))
    assert instance._run([_tensor("x", "INT16", [3, -4])], ["y"], 0)[0][0].array.tolist() == [6, -8]


@pytest.mark.parametrize(
    ("module", "inputs", "message"),
    [
        (SubtractXY(), ("INPUT__0", "INPUT__5"), "input 'INPUT__5' binds to argument 5 of forward, which takes 2"),
        (SubtractXY(), ("ONLY",), "forward argument 'y' has no input in the config"),
    ],
    ids=["index-beyond-arguments", "unbound-argument"],
)
def test_binding_errors_at_load(load: Load, module: torch.nn.Module, inputs: tuple[str, ...], message: str) -> None:
    with pytest.raises(ModelLoadError, match=f"^model 'm': {message}$"):
        load(module, _io("input", *(f"{n}:INT32:1" for n in inputs)) + _io("output", "OUT:INT32:1"))


def test_load_errors(tmp_path: Path) -> None:
    signature = _signature(_io("input", "x:INT32:1") + _io("output", "OUT:INT32:1"))
    with pytest.raises(ModelLoadError, match="model file .*missing.pt does not exist"):
        load_instance(tmp_path / "missing.pt", "cpu", signature, "test")
    (tmp_path / "junk.pt").write_bytes(b"not a TorchScript archive")
    with pytest.raises(ModelLoadError, match="cannot load TorchScript file .*junk.pt: "):
        load_instance(tmp_path / "junk.pt", "cpu", signature, "test")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
async def test_runs_on_cuda_and_returns_to_the_cpu(load: Load) -> None:
    instance = load(Double(), _io("input", "x:FP16:2") + _io("output", "y:FP16:2"), device="cuda:0")
    [out] = await instance.execute([_tensor("x", "FP16", [1.5, 2])], ["y"], 0)
    assert (instance.device.type, str(out.array.dtype), out.array.tolist()) == ("cuda", "float16", [3.0, 4.0])
