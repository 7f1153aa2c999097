"""model_warmup: requests built from a config as Triton builds them, and run on real TorchScript instances.

Models are scripted into ``tmp_path`` and loaded through ``load_instance``. ``Recorder`` only observes: it
delegates every ``execute`` to the real instance and notes the call, so tests can count runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from v2server._proto import model_config_pb2 as mc
from v2server.backends import StageTimes
from v2server.backends.torchscript import TorchScriptInstance, load_instance
from v2server.errors import ModelLoadError
from v2server.repository.config import complete_config
from v2server.signature import Signature
from v2server.tensors import Tensor, serialize_bytes
from v2server.warmup import WarmupRequest, run_warmup, warmup_requests

Load = Callable[[torch.nn.Module, mc.ModelConfig], TorchScriptInstance]

FP32_IO = """
input [{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ 2, 3 ] }]
output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2, 3 ] }]
"""
FP32_ZEROS = 'data_type: TYPE_FP32 dims: [ 2, 3 ] zero_data: true'


class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


class Words(torch.nn.Module):
    def forward(self, words: list[str]) -> list[str]:
        return [w.upper() for w in words]


class MaybeAdd(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: UP045
        return x if y is None else x + y


class Fails(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() >= 0):
            raise ValueError("no warmup for me")
        return x


class Recorder:
    """Delegates to a real instance and notes each call (batch size and input names)."""

    def __init__(self, instance: TorchScriptInstance) -> None:
        self.instance = instance
        self.pending = 0
        self.calls: list[tuple[int, tuple[str, ...]]] = []

    async def execute_timed(
        self, inputs: Sequence[Tensor], outputs: Sequence[str], batch_size: int
    ) -> tuple[list[Tensor], StageTimes]:
        self.calls.append((batch_size, tuple(t.name for t in inputs)))
        return await self.instance.execute_timed(inputs, outputs, batch_size)

    def close(self) -> None:
        self.instance.close()


def _config(text: str, *entries: str) -> mc.ModelConfig:
    config = text_format.Parse(text + "".join(entries), mc.ModelConfig())
    return complete_config(config, "m", "<test>")


def _entry(name: str, batch_size: int = 0, count: int = 0, **inputs: str) -> str:
    """A ``model_warmup`` entry; each keyword is an input name and the text of its ``Input`` message."""
    maps = " ".join(f'inputs {{ key: "{key}" value {{ {value} }} }}' for key, value in inputs.items())
    return f' model_warmup {{ name: "{name}" batch_size: {batch_size} count: {count} {maps} }}'


def _one(config: mc.ModelConfig, model_dir: Path) -> WarmupRequest:
    (request,) = warmup_requests(config, model_dir)
    return request


@pytest.fixture
def load(tmp_path: Path) -> Iterator[Load]:
    instances: list[TorchScriptInstance] = []

    def load_(module: torch.nn.Module, config: mc.ModelConfig) -> TorchScriptInstance:
        path = tmp_path / f"model_{len(instances)}.pt"
        torch.jit.script(module).save(str(path))
        instance = load_instance(path, "cpu", Signature.from_config(config), "warmup-test")
        instances.append(instance)
        return instance

    yield load_
    for instance in instances:
        instance.close()


# -- building requests --------------------------------------------------------------------------------------


def test_zero_data_has_the_batch_dimension_when_the_model_batches(tmp_path: Path) -> None:
    config = _config("max_batch_size: 8" + FP32_IO, _entry("zeros", batch_size=3, INPUT__0=FP32_ZEROS))
    request = _one(config, tmp_path)
    (tensor,) = request.inputs
    assert (request.name, request.batch_size, request.count) == ("zeros", 3, 1)
    assert (tensor.name, tensor.datatype.name, tensor.shape) == ("INPUT__0", "FP32", (3, 2, 3))
    assert tensor.array.dtype == np.float32 and not tensor.array.any()


def test_zero_data_without_batching_is_dims_and_batch_size_0(tmp_path: Path) -> None:
    request = _one(_config(FP32_IO, _entry("zeros", INPUT__0=FP32_ZEROS)), tmp_path)
    assert request.batch_size == 0 and request.inputs[0].shape == (2, 3)


def test_batch_size_0_means_1_and_count_0_means_1(tmp_path: Path) -> None:
    request = _one(_config("max_batch_size: 2" + FP32_IO, _entry("w", INPUT__0=FP32_ZEROS)), tmp_path)
    assert (request.batch_size, request.count, request.inputs[0].shape) == (1, 1, (1, 2, 3))
    request = _one(_config(FP32_IO, _entry("w", batch_size=1, count=5, INPUT__0=FP32_ZEROS)), tmp_path)
    assert (request.batch_size, request.count) == (0, 5)


def test_entries_keep_their_order_and_unnamed_ones_get_their_index(tmp_path: Path) -> None:
    config = _config(FP32_IO, _entry("first", INPUT__0=FP32_ZEROS), _entry("", INPUT__0=FP32_ZEROS))
    assert [r.name for r in warmup_requests(config, tmp_path)] == ["first", "#1"]
    assert warmup_requests(_config(FP32_IO), tmp_path) == []


def test_zero_bytes_are_empty_strings(tmp_path: Path) -> None:
    config = _config(
        'input [{ name: "words" data_type: TYPE_STRING dims: [ -1 ] }]'
        ' output [{ name: "OUTPUT__0" data_type: TYPE_STRING dims: [ -1 ] }]',
        _entry("empty", words="data_type: TYPE_STRING dims: [ 3 ] zero_data: true"),
    )
    (tensor,) = _one(config, tmp_path).inputs
    assert tensor.datatype.name == "BYTES" and tensor.array.tolist() == [b"", b"", b""]


@pytest.mark.parametrize(
    "config_type", ["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "UINT64", "FP16", "FP32", "FP64"]
)
def test_random_data_has_the_datatype_and_plausible_values(tmp_path: Path, config_type: str) -> None:
    config = _config(
        f'input [{{ name: "x" data_type: TYPE_{config_type} dims: [ 1000 ] }}]'
        f' output [{{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 1 ] }}]',
        _entry("random", x=f"data_type: TYPE_{config_type} dims: [ 1000 ] random_data: true"),
    )
    (tensor,) = _one(config, tmp_path).inputs
    assert tensor.shape == (1000,) and tensor.array.dtype == tensor.datatype.numpy
    values = tensor.array
    if config_type == "BOOL":
        assert set(values.tolist()) == {False, True}
    elif values.dtype.kind == "f":
        assert values.min() >= 0 and values.max() < 1 and len(np.unique(values)) > 10
    else:
        assert len(np.unique(values)) > 10  # spread over the type's range, not a constant


def test_random_bf16_is_in_unit_interval(tmp_path: Path) -> None:
    config = _config(
        'input [{ name: "x" data_type: TYPE_BF16 dims: [ 500 ] }]'
        ' output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 1 ] }]',
        _entry("random", x="data_type: TYPE_BF16 dims: [ 500 ] random_data: true"),
    )
    (tensor,) = _one(config, tmp_path).inputs
    values = torch.from_numpy(tensor.array.astype(np.int16)).view(torch.bfloat16).float()
    assert tensor.array.dtype == np.uint16 and values.min() >= 0 and values.max() < 1


def test_random_bytes_are_short_ascii_strings(tmp_path: Path) -> None:
    config = _config(
        'input [{ name: "words" data_type: TYPE_STRING dims: [ -1 ] }]'
        ' output [{ name: "OUTPUT__0" data_type: TYPE_STRING dims: [ -1 ] }]',
        _entry("random", words="data_type: TYPE_STRING dims: [ 50 ] random_data: true"),
    )
    (tensor,) = _one(config, tmp_path).inputs
    items = tensor.array.tolist()
    assert len(items) == 50 and all(isinstance(i, bytes) and 1 <= len(i) <= 8 and i.isalnum() for i in items)


def test_input_data_file_holds_one_sample_repeated_per_batch(tmp_path: Path) -> None:
    (tmp_path / "warmup").mkdir()
    sample = np.arange(6, dtype=np.float32)
    (tmp_path / "warmup" / "x.bin").write_bytes(sample.tobytes() + b"extra bytes are ignored, as in Triton")
    config = _config(
        "max_batch_size: 4" + FP32_IO,
        _entry("file", batch_size=2, INPUT__0='data_type: TYPE_FP32 dims: [ 2, 3 ] input_data_file: "x.bin"'),
    )
    (tensor,) = _one(config, tmp_path).inputs
    np.testing.assert_array_equal(tensor.array, np.stack([sample.reshape(2, 3)] * 2))


def test_input_data_file_for_bytes_is_length_prefixed(tmp_path: Path) -> None:
    (tmp_path / "warmup" / "nested").mkdir(parents=True)
    words = np.array([b"hello", b"", b"world"], dtype=object)
    (tmp_path / "warmup" / "nested" / "words.bin").write_bytes(serialize_bytes(words))
    config = _config(
        'input [{ name: "words" data_type: TYPE_STRING dims: [ -1 ] }]'
        ' output [{ name: "OUTPUT__0" data_type: TYPE_STRING dims: [ -1 ] }]',
        _entry("file", words='data_type: TYPE_STRING dims: [ 3 ] input_data_file: "nested/words.bin"'),
    )
    (tensor,) = _one(config, tmp_path).inputs
    assert tensor.array.tolist() == [b"hello", b"", b"world"]


# -- what a warmup entry must agree on with the model --------------------------------------------------------


def _bytes_file(tmp_path: Path, data: bytes) -> str:
    (tmp_path / "warmup").mkdir(exist_ok=True)
    (tmp_path / "warmup" / "data.bin").write_bytes(data)
    return "data.bin"


@pytest.mark.parametrize(
    ("header", "entry", "message"),
    [
        (
            "",
            _entry("zeros", INPUT__0=FP32_ZEROS, INPUT1=FP32_ZEROS),
            "model_warmup 'zeros': input 'INPUT1' is not an input of the model",
        ),
        (
            'input [{ name: "INPUT__1" data_type: TYPE_FP32 dims: [ 1 ] }]',
            _entry("zeros", INPUT__0=FP32_ZEROS),
            "model_warmup 'zeros': input(s) ['INPUT__1'] of the model are missing",
        ),
        (
            "",
            _entry("typed", INPUT__0="data_type: TYPE_FP64 dims: [ 2, 3 ] zero_data: true"),
            "model_warmup 'typed': input 'INPUT__0': data_type TYPE_FP64 differs from the model's TYPE_FP32",
        ),
        (
            "",
            _entry("shaped", INPUT__0="data_type: TYPE_FP32 dims: [ 3, 2 ] zero_data: true"),
            "model_warmup 'shaped': input 'INPUT__0': dims [3, 2] do not match the model's dims [2, 3]",
        ),
        (
            "",
            _entry("ranked", INPUT__0="data_type: TYPE_FP32 dims: [ 6 ] zero_data: true"),
            "dims [6] do not match the model's dims [2, 3]",
        ),
        (
            "",
            _entry("nodata", INPUT__0="data_type: TYPE_FP32 dims: [ 2, 3 ]"),
            "model_warmup 'nodata': input 'INPUT__0': set one of zero_data, random_data or input_data_file",
        ),
        (
            "max_batch_size: 4",
            _entry("big", batch_size=5, INPUT__0=FP32_ZEROS),
            "model_warmup 'big': batch_size 5 exceeds max_batch_size 4",
        ),
        (
            "",
            _entry("batched", batch_size=2, INPUT__0=FP32_ZEROS),
            "model_warmup 'batched': batch_size 2 needs a batching model, but max_batch_size is 0",
        ),
        (
            "",
            _entry("missing", INPUT__0='data_type: TYPE_FP32 dims: [ 2, 3 ] input_data_file: "nope.bin"'),
            "model_warmup 'missing': input 'INPUT__0': cannot read",
        ),
        (
            "",
            _entry("escape", INPUT__0='data_type: TYPE_FP32 dims: [ 2, 3 ] input_data_file: "../x.bin"'),
            "'../x.bin' must be a relative path inside its folder; its component '..' must not be '.' or '..'",
        ),
        (
            "",
            _entry("absolute", INPUT__0='data_type: TYPE_FP32 dims: [ 2, 3 ] input_data_file: "/etc/passwd"'),
            "'/etc/passwd' must be a relative path inside its folder; its component '' must not be empty",
        ),
    ],
)
def test_entries_that_do_not_fit_the_model_fail_the_load(
    tmp_path: Path, header: str, entry: str, message: str
) -> None:
    with pytest.raises(ModelLoadError) as caught:
        warmup_requests(_config(header + FP32_IO, entry), tmp_path)
    assert message in caught.value.message


def test_variable_dims_need_a_concrete_warmup_shape(tmp_path: Path) -> None:
    header = (
        'input [{ name: "x" data_type: TYPE_FP32 dims: [ -1 ] }]'
        ' output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ -1 ] }]'
    )
    seven = _entry("ok", x="data_type: TYPE_FP32 dims: [ 7 ] zero_data: true")
    assert _one(_config(header, seven), tmp_path).inputs[0].shape == (7,)
    open_ = _entry("open", x="data_type: TYPE_FP32 dims: [ -1 ] zero_data: true")
    with pytest.raises(ModelLoadError, match=r"model_warmup 'open': input 'x': dims \[-1\] must be concrete"):
        warmup_requests(_config(header, open_), tmp_path)


def test_a_short_data_file_fails_the_load(tmp_path: Path) -> None:
    name = _bytes_file(tmp_path, np.zeros(5, dtype=np.float32).tobytes())
    entry = _entry("short", INPUT__0=f'data_type: TYPE_FP32 dims: [ 2, 3 ] input_data_file: "{name}"')
    expected = r"^model_warmup 'short': input 'INPUT__0': .*data.bin holds 20 bytes, but .* FP32 needs 24$"
    with pytest.raises(ModelLoadError, match=expected):
        warmup_requests(_config(FP32_IO, entry), tmp_path)


def test_a_bytes_file_with_the_wrong_element_count_fails_the_load(tmp_path: Path) -> None:
    name = _bytes_file(tmp_path, serialize_bytes(np.array([b"a", b"b"], dtype=object)))
    config = _config(
        'input [{ name: "words" data_type: TYPE_STRING dims: [ -1 ] }]'
        ' output [{ name: "OUTPUT__0" data_type: TYPE_STRING dims: [ -1 ] }]',
        _entry("count", words=f'data_type: TYPE_STRING dims: [ 3 ] input_data_file: "{name}"'),
    )
    with pytest.raises(ModelLoadError, match=r"model_warmup 'count': input 'words': expected 3 BYTES"):
        warmup_requests(config, tmp_path)


# -- running on real instances -------------------------------------------------------------------------------


async def test_every_instance_runs_every_request_count_times_in_order(tmp_path: Path, load: Load) -> None:
    config = _config(
        "max_batch_size: 4" + FP32_IO,
        _entry("zeros", batch_size=2, count=3, INPUT__0=FP32_ZEROS),
        _entry("random", batch_size=4, INPUT__0="data_type: TYPE_FP32 dims: [ 2, 3 ] random_data: true"),
    )
    recorders = [Recorder(load(Double(), config)), Recorder(load(Double(), config))]
    await run_warmup(recorders, warmup_requests(config, tmp_path), ["OUTPUT__0"])
    for recorder in recorders:
        assert recorder.calls == [(2, ("INPUT__0",))] * 3 + [(4, ("INPUT__0",))]


async def test_bytes_and_optional_inputs_run_through_the_model(tmp_path: Path, load: Load) -> None:
    words = _config(
        'input [{ name: "words" data_type: TYPE_STRING dims: [ -1 ] }]'
        ' output [{ name: "OUTPUT__0" data_type: TYPE_STRING dims: [ -1 ] }]',
        _entry("random", words="data_type: TYPE_STRING dims: [ 4 ] random_data: true"),
    )
    await run_warmup([load(Words(), words)], warmup_requests(words, tmp_path), ["OUTPUT__0"])
    maybe = _config(
        'input [{ name: "x" data_type: TYPE_FP32 dims: [ 2 ] },'
        ' { name: "y" data_type: TYPE_FP32 dims: [ 2 ] optional: true }]'
        ' output [{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2 ] }]',
        _entry("x only", x="data_type: TYPE_FP32 dims: [ 2 ] zero_data: true"),
    )
    recorder = Recorder(load(MaybeAdd(), maybe))
    await run_warmup([recorder], warmup_requests(maybe, tmp_path), ["OUTPUT__0"])
    assert recorder.calls == [(0, ("x",))]


async def test_a_failing_model_fails_the_load_once_every_instance_is_done(tmp_path: Path, load: Load) -> None:
    config = _config(FP32_IO, _entry("zeros", count=2, INPUT__0=FP32_ZEROS))
    healthy, failing = Recorder(load(Double(), config)), Recorder(load(Fails(), config))
    with pytest.raises(ModelLoadError) as caught:
        await run_warmup([failing, healthy], warmup_requests(config, tmp_path), ["OUTPUT__0"])
    assert caught.value.message.startswith("model_warmup 'zeros' failed: model 'm' failed:")
    assert "no warmup for me" in caught.value.message
    assert len(failing.calls) == 1 and len(healthy.calls) == 2


async def test_an_error_that_is_not_ours_is_reported_with_its_text(tmp_path: Path, load: Load) -> None:
    config = _config(FP32_IO, _entry("zeros", INPUT__0=FP32_ZEROS))
    instance = load(Double(), config)
    instance.close()  # its worker is gone: the executor raises RuntimeError
    with pytest.raises(ModelLoadError, match=r"^model_warmup 'zeros' failed: .*shutdown"):
        await run_warmup([instance], warmup_requests(config, tmp_path), ["OUTPUT__0"])
