"""DataPlane load limits: in-flight input bytes, a stream's unanswered requests, large decode and encode in a
worker thread (design rule 13)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from v2server import dataplane as dataplane_module
from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import model_config_pb2 as mc
from v2server.dataplane import DataPlane
from v2server.errors import InferenceFailed, QueueFull
from v2server.handle import Execution
from v2server.inference import OFFLOAD_STEPS
from v2server.signature import Signature
from v2server.tensors import Tensor, serialize_bytes


def _config(data_type: int) -> mc.ModelConfig:
    return mc.ModelConfig(
        name="m", max_batch_size=0,
        input=[mc.ModelInput(name="x", data_type=data_type, dims=[-1])],
        output=[mc.ModelOutput(name="OUT", data_type=data_type, dims=[-1])],
    )


@dataclass
class EchoHandle:
    """Echoes input ``x`` as ``OUT``; each execution waits for ``gate`` when one is set, and may fail."""

    config: mc.ModelConfig
    name: str = "m"
    version: int = 1
    gate: asyncio.Event | None = None
    started: int = 0
    fail: bool = False
    order: list[str] = field(default_factory=list)

    @property
    def signature(self) -> Signature:
        return Signature.from_config(self.config)

    async def execute(self, inputs: Sequence[Tensor], outputs: Sequence[str], batch_size: int,
                      priority: int = 0, timeout_us: int = 0, sequence: object = None) -> Execution:
        self.started += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise InferenceFailed("the model failed")
        [x] = inputs
        return Execution([Tensor("OUT", x.datatype, x.array)], 1, 0, 0)


class Registry:
    def __init__(self, handle: EchoHandle) -> None:
        self.handle = handle

    def get(self, name: str, version: str = "") -> EchoHandle:
        return self.handle


def _plane(handle: EchoHandle, **limits: int) -> DataPlane:
    return DataPlane(Registry(handle), **limits)  # type: ignore[arg-type]


def _fp32(count: int, request_id: str = "", sequence: int = 0) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(id=request_id, model_name="m",
                                   raw_input_contents=[np.arange(count, dtype=np.float32).tobytes()])
    request.inputs.add(name="x", datatype="FP32", shape=[count])
    if sequence:
        request.parameters["sequence_id"].int64_param = sequence
    return request


async def _until(condition: object, what: str) -> None:
    for _ in range(1000):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


# -- --max-inflight-bytes ------------------------------------------------------------------------------------


async def test_inflight_bytes_past_the_limit_are_refused_with_503_until_released() -> None:
    handle = EchoHandle(_config(mc.TYPE_FP32), gate=asyncio.Event())
    plane = _plane(handle, max_inflight_bytes=600)
    first = asyncio.create_task(plane.ModelInfer(_fp32(100)))  # 400 bytes
    await _until(lambda: handle.started == 1, "the first request to run")
    assert plane.inflight_bytes == 400
    with pytest.raises(QueueFull) as caught:
        await plane.ModelInfer(_fp32(100))
    assert caught.value.grpc_code.name == "UNAVAILABLE"
    assert caught.value.message == (
        "the server is serving 400 bytes of inputs; this request's 400 more would pass --max-inflight-bytes (600); "
        "retry later"
    )
    assert plane.inflight_bytes == 400  # a refused request holds nothing
    second = asyncio.create_task(plane.ModelInfer(_fp32(50)))  # 200 more fit
    await _until(lambda: handle.started == 2, "the second request to run")
    assert plane.inflight_bytes == 600
    handle.gate.set()  # type: ignore[union-attr]
    await first
    await second
    assert plane.inflight_bytes == 0
    await plane.ModelInfer(_fp32(100))  # released: the same request now fits
    assert plane.inflight_bytes == 0


async def test_a_request_larger_than_the_whole_limit_is_refused() -> None:
    plane = _plane(EchoHandle(_config(mc.TYPE_FP32)), max_inflight_bytes=100)
    with pytest.raises(QueueFull, match=r"this request's 400 more would pass --max-inflight-bytes \(100\)"):
        await plane.ModelInfer(_fp32(100))


async def test_inflight_bytes_are_released_after_an_error_and_a_cancellation() -> None:
    handle = EchoHandle(_config(mc.TYPE_FP32), fail=True)
    plane = _plane(handle, max_inflight_bytes=1000)
    with pytest.raises(InferenceFailed):
        await plane.ModelInfer(_fp32(100))
    assert plane.inflight_bytes == 0
    handle.fail, handle.gate = False, asyncio.Event()
    task = asyncio.create_task(plane.ModelInfer(_fp32(100)))
    await _until(lambda: plane.inflight_bytes == 400, "the request to hold its bytes")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert plane.inflight_bytes == 0


# -- large decode and encode run in a worker thread ---------------------------------------------------------


@pytest.fixture()
def threads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Records the thread ``decode_inputs`` and ``encode_response`` run on."""
    seen: dict[str, int] = {}
    for name in ("decode_inputs", "encode_response"):
        original = getattr(dataplane_module, name)

        def spy(*args: object, _original: object = original, _name: str = name) -> object:
            seen[_name] = threading.get_ident()
            return _original(*args)  # type: ignore[operator]

        monkeypatch.setattr(dataplane_module, name, spy)
    return seen


def _bytes_request(items: list[bytes]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=[serialize_bytes(np.array(items, dtype=object))])
    request.inputs.add(name="x", datatype="BYTES", shape=[len(items)])
    return request


@pytest.mark.parametrize("count", [10, OFFLOAD_STEPS + 1, 3 * OFFLOAD_STEPS], ids=["small", "threshold", "large"])
async def test_bytes_decode_and_encode_are_exact_inline_and_in_a_worker_thread(
    count: int, threads: dict[str, int]
) -> None:
    items = [b"%d" % i * (i % 4) for i in range(count)]
    request = _bytes_request(items)
    response = await _plane(EchoHandle(_config(mc.TYPE_STRING))).ModelInfer(request)
    assert response.raw_output_contents[0] == request.raw_input_contents[0]
    loop_thread = threading.get_ident()
    inline = count <= OFFLOAD_STEPS
    assert (threads["decode_inputs"] == loop_thread) is inline
    assert (threads["encode_response"] == loop_thread) is inline


async def test_a_large_fixed_size_input_stays_inline(threads: dict[str, int]) -> None:
    response = await _plane(EchoHandle(_config(mc.TYPE_FP32))).ModelInfer(_fp32(10 * OFFLOAD_STEPS))
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == list(range(10 * OFFLOAD_STEPS))
    assert threads["decode_inputs"] == threads["encode_response"] == threading.get_ident()


async def test_a_large_raw_binary_bytes_request_is_counted_and_decoded(threads: dict[str, int]) -> None:
    items = [b"x" * (i % 3) for i in range(2 * OFFLOAD_STEPS)]
    raw = serialize_bytes(np.array(items, dtype=object))
    response = await _plane(EchoHandle(_config(mc.TYPE_STRING))).ModelInfer(
        pb.ModelInferRequest(model_name="m", raw_input_contents=[raw])
    )
    assert list(response.outputs[0].shape) == [len(items)]
    assert response.raw_output_contents[0] == raw
    assert threads["decode_inputs"] != threading.get_ident()


async def test_a_bytes_shape_off_by_one_is_refused_before_decoding(threads: dict[str, int]) -> None:
    request = _bytes_request([b""] * 100_000)
    request.inputs[0].shape[0] = 100_001
    with pytest.raises(Exception, match=r"expected 100001 BYTES elements for its shape, got at most 100000"):
        await _plane(EchoHandle(_config(mc.TYPE_STRING))).ModelInfer(request)
    assert "decode_inputs" not in threads  # the byte count alone refused it
    request.inputs[0].shape[0] = 99_999
    with pytest.raises(Exception, match=r"^input 'x': expected 99999 BYTES elements for its shape, got 100000$"):
        await _plane(EchoHandle(_config(mc.TYPE_STRING))).ModelInfer(request)


# -- --grpc-max-stream-pending ----------------------------------------------------------------------------


class Requests:
    """An async iterator of requests that counts how many the stream has pulled."""

    def __init__(self, requests: list[pb.ModelInferRequest]) -> None:
        self._requests = requests
        self.pulled = 0

    def __aiter__(self) -> AsyncIterator[pb.ModelInferRequest]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[pb.ModelInferRequest]:
        for request in self._requests:
            self.pulled += 1
            yield request


async def test_a_stream_reads_no_further_than_its_unanswered_limit() -> None:
    handle = EchoHandle(_config(mc.TYPE_FP32), gate=asyncio.Event())
    requests = Requests([_fp32(1, str(i)) for i in range(10)])
    stream = _plane(handle, max_stream_pending=3).ModelStreamInfer(requests)
    first = asyncio.ensure_future(anext(stream))
    await _until(lambda: handle.started == 3, "three requests to run")
    await asyncio.sleep(0.01)
    assert requests.pulled == 3  # the fourth stays with the client (gRPC flow control)
    handle.gate.set()  # type: ignore[union-attr]
    answers = [await first]
    await asyncio.sleep(0.01)
    assert requests.pulled == 3  # answered, but the answer is not taken yet: still nothing more read
    answers.append(await anext(stream))  # the first answer was taken: one more request is read
    await _until(lambda: requests.pulled == 4, "a fourth request to be read")
    answers += [answer async for answer in stream]
    assert sorted(int(a.infer_response.id) for a in answers) == list(range(10))
    assert all(not a.error_message for a in answers)


async def test_a_stream_past_its_limit_keeps_a_sequence_in_order() -> None:
    handle = EchoHandle(_config(mc.TYPE_FP32))
    requests = [_fp32(1, f"s{i}", sequence=7) for i in range(12)]
    requests[4:4] = [_fp32(1, f"free{i}") for i in range(5)]
    bad = _fp32(1, "bad")
    bad.inputs[0].datatype = "INT32"
    requests.insert(8, bad)
    answers = [answer async for answer in _plane(handle, max_stream_pending=2).ModelStreamInfer(Requests(requests))]
    assert len(answers) == len(requests)
    ids = [a.infer_response.id for a in answers if not a.error_message]
    assert [i for i in ids if i.startswith("s")] == [f"s{i}" for i in range(12)]
    assert sorted(i for i in ids if i.startswith("free")) == [f"free{i}" for i in range(5)]
    assert [a.error_message for a in answers if a.error_message] == ["inference input 'x' data-type is 'INT32', but model 'm' expects 'FP32'"]
