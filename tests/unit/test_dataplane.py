"""DataPlane over a fake registry: the core interface, the raw binary rule, inference reports."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import model_config_pb2 as mc
from v2server.core import InferenceCore, InferenceReport
from v2server.dataplane import DataPlane
from v2server.datatypes import datatype
from v2server.errors import InvalidRequest, ModelNotFound, Unsupported
from v2server.handle import Execution
from v2server.inference import complete_raw_binary, is_raw_binary
from v2server.rest_api.remote_core import RemoteCore
from v2server.signature import Signature
from v2server.tensors import Tensor, serialize_bytes

RPCS = {method.name for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
EXTRA = {"for_caller", "observe", "resolve_alias", "model_aliases", "set_model_alias", "delete_model_alias"}


def _members(cls: type) -> set[str]:
    return {name for name in vars(cls) if not name.startswith("_")}


def _config(*inputs: tuple[str, Any, list[int]], max_batch_size: int = 0) -> mc.ModelConfig:
    return mc.ModelConfig(
        name="m", max_batch_size=max_batch_size,
        input=[mc.ModelInput(name=n, data_type=t, dims=d) for n, t, d in inputs],
        output=[mc.ModelOutput(name="OUT", data_type=mc.TYPE_FP32, dims=[-1])],
    )


# -- the core interface ------------------------------------------------------------------------------------


def test_the_core_protocol_lists_every_rpc_and_the_extras() -> None:
    assert _members(InferenceCore) == RPCS | EXTRA


@pytest.mark.parametrize("core", [DataPlane, RemoteCore])
def test_both_cores_satisfy_the_protocol(core: type) -> None:
    for name in RPCS | EXTRA:
        wanted, have = getattr(InferenceCore, name), getattr(core, name)
        assert inspect.iscoroutinefunction(have) == inspect.iscoroutinefunction(wanted), name
        assert inspect.isasyncgenfunction(have) or not inspect.isasyncgenfunction(wanted), name
        assert list(inspect.signature(have).parameters) == list(inspect.signature(wanted).parameters), name


def _both_cores_are_inference_cores(plane: DataPlane, remote: RemoteCore) -> tuple[InferenceCore, InferenceCore]:
    return plane, remote  # mypy checks this statically; the test above checks it at run time


async def test_a_remote_core_has_no_aliases_and_forwards_the_callers_key() -> None:
    sent: list[tuple[Any, Any]] = []

    class Stub:
        async def ModelReady(self, request: Any, metadata: Any = None) -> pb.ModelReadyResponse:
            sent.append((request, metadata))
            return pb.ModelReadyResponse(ready=True)

    core = RemoteCore(Stub())  # type: ignore[arg-type]
    assert (await core.for_caller("Bearer k").ModelReady(pb.ModelReadyRequest(name="m"))).ready
    assert (await core.for_caller(None).ModelReady(pb.ModelReadyRequest(name="m"))).ready
    assert [metadata for _, metadata in sent] == [(("authorization", "Bearer k"),), None]
    for call in (core.resolve_alias("m", "a"), core.model_aliases("m"), core.set_model_alias("m", "a", 1),
                 core.delete_model_alias("m", "a")):
        with pytest.raises(Unsupported, match="version aliases"):
            await call


# -- the raw binary request's shape rule -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "raw", "shape"),
    [
        (_config(("x", mc.TYPE_FP32, [-1])), np.zeros(6, np.float32).tobytes(), [6]),
        (_config(("x", mc.TYPE_FP32, [-1]), max_batch_size=8), np.zeros(6, np.float32).tobytes(), [1, 6]),
        (_config(("x", mc.TYPE_INT16, [2, -1]), max_batch_size=8), np.zeros(6, np.int16).tobytes(), [1, 2, 3]),
        (_config(("x", mc.TYPE_FP32, [2, 3])), b"", [2, 3]),  # fixed dims: the core checks the bytes later
        (_config(("x", mc.TYPE_STRING, [-1])), serialize_bytes(np.array([b"a", b"bc"], object)), [2]),
        (_config(("x", mc.TYPE_FP32, [0, -1])), b"\0" * 8, [0, 0]),
    ],
)
def test_a_raw_binary_request_is_described_from_the_config(config: mc.ModelConfig, raw: bytes,
                                                           shape: list[int]) -> None:
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=[raw])
    assert is_raw_binary(request)
    signature = Signature.from_config(config)
    complete_raw_binary(request, signature)
    [tensor] = request.inputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("x", signature.inputs["x"].datatype.name, shape)
    assert not is_raw_binary(request)


def test_a_raw_binary_request_needs_a_single_input_model() -> None:
    request = pb.ModelInferRequest(model_name="two", raw_input_contents=[b""])
    config = _config(("a", mc.TYPE_FP32, [1]), ("b", mc.TYPE_FP32, [1]))
    with pytest.raises(InvalidRequest) as caught:
        complete_raw_binary(request, Signature.from_config(config))
    assert caught.value.message == (
        "a raw binary request (Inference-Header-Content-Length: 0) needs a model with exactly one input; "
        "'two' has 2"
    )


def test_only_inputless_single_raw_requests_are_raw_binary() -> None:
    assert not is_raw_binary(pb.ModelInferRequest())
    assert not is_raw_binary(pb.ModelInferRequest(raw_input_contents=[b"", b""]))
    assert not is_raw_binary(pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(name="x")],
                                                  raw_input_contents=[b""]))


# -- inference over a fake registry ------------------------------------------------------------------------


@dataclass
class FakeHandle:
    """Executes by doubling its FP32 input; reports a batch of 5, 1.5 us queued, 2.25 us computing."""

    config: mc.ModelConfig
    name: str = "m"
    version: int = 3
    executed: list[tuple[list[Tensor], list[str], int]] = field(default_factory=list)

    @property
    def signature(self) -> Signature:
        return Signature.from_config(self.config)

    async def execute(self, inputs: Sequence[Tensor], outputs: Sequence[str], batch_size: int,
                      priority: int = 0, timeout_us: int = 0, sequence: object = None) -> Execution:
        self.executed.append((list(inputs), list(outputs), batch_size))
        return Execution([Tensor("OUT", datatype("FP32"), inputs[0].array * 2)], 5, 1500, 2250)


class FakeRegistry:
    def __init__(self, handle: FakeHandle) -> None:
        self.handle = handle

    def get(self, name: str, version: str = "") -> FakeHandle:
        if name != self.handle.name:
            raise ModelNotFound(f"unknown model '{name}'")
        return self.handle


class Observer:
    def __init__(self) -> None:
        self.reports: list[tuple[pb.ModelInferRequest, InferenceReport]] = []

    def inferred(self, request: pb.ModelInferRequest, report: InferenceReport) -> None:
        # the times and the response (checked in tests/unit/test_tracing.py) are left out of the comparisons
        assert report.start_ns <= report.end_ns
        self.reports.append((request, dataclasses.replace(report, start_ns=0, end_ns=0, response=None)))


@pytest.fixture()
def handle() -> FakeHandle:
    return FakeHandle(_config(("x", mc.TYPE_FP32, [-1]), max_batch_size=4))


@pytest.fixture()
def plane(handle: FakeHandle) -> DataPlane:
    return DataPlane(FakeRegistry(handle))  # type: ignore[arg-type]


async def test_model_infer_completes_a_raw_binary_request(plane: DataPlane, handle: FakeHandle) -> None:
    data = np.arange(3, dtype=np.float32)
    response = await plane.ModelInfer(pb.ModelInferRequest(model_name="m", raw_input_contents=[data.tobytes()]))
    [(inputs, outputs, batch_size)] = handle.executed
    assert (inputs[0].name, inputs[0].shape, outputs, batch_size) == ("x", (1, 3), ["OUT"], 1)
    assert list(response.outputs[0].shape) == [1, 3]
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], np.float32), 2 * data)


async def test_observers_hear_each_inference_once(plane: DataPlane) -> None:
    observer = Observer()
    plane.observe(observer)
    plane.observe(observer)
    request = pb.ModelInferRequest(id="r", model_name="m", raw_input_contents=[np.zeros(2, np.float32).tobytes()])
    await plane.ModelInfer(request)
    assert observer.reports == [(request, InferenceReport("r", "m", "3", 5, 1_500, 2_250))]
    assert observer.reports[0][0] is request


async def test_failed_inferences_are_reported_once_the_model_is_known(plane: DataPlane) -> None:
    observer = Observer()
    plane.observe(observer)
    bad = pb.ModelInferRequest(id="bad", model_name="m", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="INT32", shape=[1, 1])])
    with pytest.raises(InvalidRequest, match="expects 'FP32'"):
        await plane.ModelInfer(bad)
    with pytest.raises(ModelNotFound):
        await plane.ModelInfer(pb.ModelInferRequest(model_name="nope"))
    assert observer.reports == [(bad, InferenceReport("bad", "m", "3"))]
