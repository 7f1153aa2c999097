"""TorchScript instances on a CUDA device: placement, pinned staging, streams, half types, out-of-memory
recovery and cache cleaning (GPU only; the backend is driven directly, without a server)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from v2server._proto import model_config_pb2 as mc
from v2server.backends.torchscript import TorchScriptInstance, load_instance
from v2server.errors import InferenceFailed
from v2server.repository.config import complete_config
from v2server.signature import Signature
from v2server.tensors import Tensor, from_raw

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

Load = Callable[..., TorchScriptInstance]
GiB = 1 << 30


@torch.library.custom_op("v2server_test::current_stream", mutates_args=())
def _current_stream(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor([torch.cuda.current_stream(x.device).cuda_stream], dtype=torch.int64)


@pytest.fixture
def load(tmp_path: Path) -> Iterator[Load]:
    """Script ``module`` and load it on ``device`` with a config of ``io`` (instances closed after)."""
    instances: list[TorchScriptInstance] = []

    def load_(
        module: torch.nn.Module, io: str, parameters: Mapping[str, str] | None = None, device: str = "cuda:0"
    ) -> TorchScriptInstance:
        path = tmp_path / f"model_{len(instances)}.pt"
        torch.jit.script(module).save(str(path))
        config = complete_config(text_format.Parse(io, mc.ModelConfig()), "m", "<test>")
        instance = load_instance(path, device, Signature.from_config(config), f"test-{len(instances)}", parameters)
        instances.append(instance)
        return instance

    yield load_
    for instance in instances:
        instance.close()


def _io(kind: str, *specs: str) -> str:
    entries = [f'{{ name: "{n}" data_type: TYPE_{t} dims: [ {d} ] }}' for n, t, d in (s.split(":") for s in specs)]
    return f"{kind} [ {', '.join(entries)} ]"


def _input(name: str, datatype: str, array: np.ndarray) -> Tensor:
    """A request input decoded from raw bytes, as the data plane decodes it (read-only, no copy)."""
    return from_raw(name, datatype, list(array.shape), array.tobytes())


class Placement(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full([1], 3.0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = torch.tensor([x.get_device(), self.weight.get_device()], dtype=torch.int32)
        return x * self.weight, device, torch.ops.v2server_test.current_stream(x)


_PLACEMENT = _io("input", "x:FP32:-1") + _io("output", "y:FP32:-1", "devices:INT32:2", "stream:INT64:1")


async def test_instances_run_on_cuda0_each_on_its_own_stream(load: Load) -> None:
    instances = [load(Placement(), _PLACEMENT) for _ in range(3)]
    assert {str(i.device) for i in instances} == {"cuda:0"}
    x = np.arange(5, dtype=np.float32)
    wanted = ["y", "devices", "stream"]
    rounds = [
        await asyncio.gather(*(i.execute([_input("x", "FP32", x)], wanted, 0) for i in instances)) for _ in range(3)
    ]
    for results in rounds:
        for y, devices, _ in results:
            np.testing.assert_array_equal(y.array, x * 3)
            assert devices.array.tolist() == [0, 0]  # input and weights on cuda:0
    streams = [[int(stream.array[0]) for _, _, stream in results] for results in rounds]
    assert streams[0] == streams[1] == streams[2]  # each instance keeps its stream
    assert len(set(streams[0])) == 3 and 0 not in streams[0]  # its own, not the default stream


class TwoInputs(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if bool((b < 0).any()):
            raise RuntimeError("negative b")
        return a * 2.0, b + 1


_TWO = _io("input", "a:FP32:-1", "b:INT64:-1") + _io("output", "A:FP32:-1", "B:INT64:-1")


def _pair(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.standard_normal(n).astype(np.float32), rng.integers(0, 1 << 40, 3 * n + 1, dtype=np.int64)


async def _check(instance: TorchScriptInstance, a: np.ndarray, b: np.ndarray) -> None:
    A, B = await instance.execute([_input("a", "FP32", a), _input("b", "INT64", b)], ["A", "B"], 0)
    np.testing.assert_array_equal(A.array, a * 2)
    np.testing.assert_array_equal(B.array, b + 1)


async def test_pinned_copies_give_exact_results_as_sizes_grow_and_shrink(load: Load) -> None:
    instance = load(TwoInputs(), _TWO)
    rng = np.random.default_rng(0)
    for n in (1, 0, 1000, 3, 1 << 20, 7, 1 << 22, 1 << 21, 1, 1 << 22, 5):
        await _check(instance, *_pair(rng, n))
    bad = [_input("a", "FP32", np.ones(4, np.float32)), _input("b", "INT64", -np.ones(4, np.int64))]
    with pytest.raises(InferenceFailed, match="negative b"):  # a failed request leaves the buffer usable
        await instance.execute(bad, ["A", "B"], 0)
    await _check(instance, *_pair(rng, 1 << 20))


async def test_concurrent_requests_of_varying_sizes_on_several_instances(load: Load) -> None:
    instances = [load(TwoInputs(), _TWO) for _ in range(3)]
    rng = np.random.default_rng(1)
    sizes = [int(s) for s in rng.choice([1, 17, 4096, 1 << 16, 1 << 19], size=60)]
    await asyncio.gather(*(_check(instances[k % 3], *_pair(rng, n)) for k, n in enumerate(sizes)))


class Half(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x * 2 + 1


@pytest.mark.parametrize(("datatype", "dtype"), [("FP16", torch.float16), ("BF16", torch.bfloat16)])
async def test_half_types_on_the_gpu(load: Load, datatype: str, dtype: torch.dtype) -> None:
    config = _io("input", f"x:{datatype}:-1") + _io("output", f"SAME:{datatype}:-1", f"AFFINE:{datatype}:-1")
    instance = load(Half(), "max_batch_size: 8 " + config)
    x = torch.tensor([[1.5, -2.25, 3.0, 1000.0]] * 2, dtype=dtype)
    bits = x.view(torch.int16).numpy()
    array = bits.view(np.uint16) if datatype == "BF16" else x.numpy()  # BF16 travels as its bit patterns
    same, affine = await instance.execute([_input("x", datatype, array)], ["SAME", "AFFINE"], 2)
    assert same.shape == affine.shape == (2, 4)
    np.testing.assert_array_equal(same.array.view(np.int16), bits)
    result = torch.from_numpy(affine.array.view(np.int16).copy()).view(dtype).float()
    np.testing.assert_allclose(result.numpy(), (x.float() * 2 + 1).numpy(), rtol=1e-2)


class Hog(torch.nn.Module):
    """Holds a GiB, then asks for ``n`` bytes more: a request that runs the GPU out of memory when n is huge."""

    def forward(self, n: torch.Tensor) -> torch.Tensor:
        held = torch.ones(1 << 28, device=n.device)
        extra = torch.zeros(int(n.item()), dtype=torch.uint8, device=n.device)
        return n + extra.sum() + held[0].long() - 1


async def test_out_of_memory_fails_the_request_and_the_next_one_succeeds(load: Load) -> None:
    instance = load(Hog(), "max_batch_size: 4 " + _io("input", "n:INT64:1") + _io("output", "OUT:INT64:1"))

    async def run(n: int) -> list[int]:
        [out] = await instance.execute([_input("n", "INT64", np.array([[n]], np.int64))], ["OUT"], 1)
        return out.array.reshape(-1).tolist()

    assert await run(8) == [8]
    torch.cuda.synchronize()
    allocated, reserved = torch.cuda.memory_allocated(0), torch.cuda.memory_reserved(0)
    with pytest.raises(InferenceFailed) as caught:
        await run(1 << 42)
    assert re.fullmatch(
        r"model 'm' ran out of GPU memory on cuda:0 \(batch of 1\): CUDA out of memory: "
        r"tried to allocate 4096\.00 GiB with [\d.]+ GiB free of [\d.]+ GiB",
        caught.value.message,
    ), caught.value.message
    assert torch.cuda.memory_allocated(0) == allocated  # nothing of the failed request is left behind
    assert torch.cuda.memory_reserved(0) <= reserved  # and its cached blocks went back to the device
    assert await run(1 << 20) == [1 << 20]


class Scratch(torch.nn.Module):
    """Uses a GiB of scratch memory and returns a scalar."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(1 << 28, device=x.device).sum() + x


@pytest.mark.parametrize(("cleaning", "kept"), [("false", True), ("true", False)])
async def test_cache_cleaning(load: Load, cleaning: str, kept: bool) -> None:
    config = _io("input", "x:FP32:1") + _io("output", "y:FP32:1")
    instance = load(Scratch(), config, {"ENABLE_CACHE_CLEANING": cleaning})
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved(0)
    [y] = await instance.execute([_input("x", "FP32", np.zeros(1, np.float32))], ["y"], 0)
    assert y.array.tolist() == [float(1 << 28)]
    assert (torch.cuda.memory_reserved(0) - before >= GiB) is kept
