"""The shared-memory registry over real ``/dev/shm`` segments: keys, bounds, leases, limits, request binding."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import model_config_pb2 as mc
from v2server.dataplane import DataPlane
from v2server.datatypes import datatype
from v2server.errors import AlreadyExists, InvalidRequest, ModelNotFound, NotFound, QueueFull, Unsupported
from v2server.handle import Execution
from v2server.shared_memory import SHM_ROOT, SharedMemoryRegistry, bind_request, read_inputs, write_outputs
from v2server.signature import Signature
from v2server.tensors import Tensor, serialize_bytes

Input = pb.ModelInferRequest.InferInputTensor
Output = pb.ModelInferRequest.InferRequestedOutputTensor


@pytest.fixture()
def segment() -> Iterator[tuple[str, str]]:
    """A 4 KiB segment in /dev/shm, as tritonclient creates one: (key with its leading '/', path)."""
    name = f"v2server-test-{uuid.uuid4().hex}"
    path = os.path.join(SHM_ROOT, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.ftruncate(fd, 4096)
    os.close(fd)
    yield "/" + name, path
    if os.path.exists(path):
        os.unlink(path)


def _write(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(data)


def _read(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as file:
        file.seek(offset)
        return file.read(size)


# -- registration, status, unregistration ------------------------------------------------------------------


def test_register_status_unregister(segment: tuple[str, str]) -> None:
    key, path = segment
    registry = SharedMemoryRegistry()
    registry.register_system("a", key, 0, 128)
    registry.register_system("b", key, 128, 64)
    assert [(r.name, r.key, r.offset, r.byte_size) for r in registry.status("system")] == [
        ("a", key, 0, 128), ("b", key, 128, 64)
    ]
    assert [r.name for r in registry.status("system", "b")] == ["b"]
    assert registry.status("cuda") == []
    registry.unregister("system", "a")
    registry.unregister("system", "never-registered")  # Triton: no error
    assert [r.name for r in registry.status("system")] == ["b"]
    registry.unregister("system")
    registry.unregister("system")  # unregister-all of nothing: no error either
    assert registry.status("system") == [] and len(registry) == 0
    assert os.path.exists(path)  # the segment is the client's: never unlinked


def test_triton_errors_for_names(segment: tuple[str, str]) -> None:
    key, _ = segment
    registry = SharedMemoryRegistry()
    registry.register_system("a", key, 0, 16)
    with pytest.raises(AlreadyExists, match=r"^shared memory region 'a' already in manager$"):
        registry.register_system("a", key, 16, 16)
    with pytest.raises(NotFound, match=r"^Unable to find system shared memory region: 'nope'$"):
        registry.status("system", "nope")
    with pytest.raises(NotFound, match=r"^Unable to find CUDA shared memory region: 'nope'$"):
        registry.status("cuda", "nope")
    with pytest.raises(NotFound, match="The region named 'a' is registered as system shared memory, not CUDA"):
        registry.status("cuda", "a")
    registry.unregister("cuda", "a")  # a name of the other kind is left alone
    assert [r.name for r in registry.status("system")] == ["a"]
    with pytest.raises(NotFound, match=r"^Unable to find shared memory region: 'nope'$"):
        registry.lease("nope")
    for name in ("", "x\x00y", "r" * 300):
        with pytest.raises(InvalidRequest, match="region name"):
            registry.register_system(name, key, 0, 16)
    registry.close()


@pytest.mark.parametrize(
    ("offset", "byte_size", "message"),
    [
        (0, 4097, "invalid args (offset 0 + byte_size 4097 is past the end of segment"),
        (4096, 1, "invalid args (offset 4096 + byte_size 1 is past the end"),
        (0, 0, "invalid args (offset must be >= 0 and byte_size > 0"),
    ],
    ids=["too-long", "past-the-end", "empty"],
)
def test_register_refuses_spans_outside_the_segment(
    segment: tuple[str, str], offset: int, byte_size: int, message: str
) -> None:
    registry = SharedMemoryRegistry()
    with pytest.raises(InvalidRequest) as caught:
        registry.register_system("r", segment[0], offset, byte_size)
    assert caught.value.message.startswith("failed to register shared memory region 'r': ")
    assert message in caught.value.message
    assert len(registry) == 0


@pytest.mark.parametrize(
    "key",
    ["../etc/passwd", "/../etc/passwd", "a/b", "/a/b", "x\x00y", "k" * 300, "", "/", "..", "/.", "a\\b", "\n"],
    ids=["dotdot", "slash-dotdot", "subfolder", "slash-subfolder", "nul", "long", "empty", "root", "parent",
         "dot", "backslash", "control"],
)
def test_hostile_keys_never_reach_the_file_system(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    with pytest.raises(InvalidRequest, match="shared memory key: .* is not a plain file name"):
        SharedMemoryRegistry().register_system("r", key, 0, 16)
    assert opened == []


def test_unknown_keys_and_symbolic_links_are_refused(segment: tuple[str, str]) -> None:
    registry = SharedMemoryRegistry()
    with pytest.raises(InvalidRequest, match=r"^Unable to open shared memory region: '/v2server-no-such-key' "):
        registry.register_system("r", "/v2server-no-such-key", 0, 16)
    link = os.path.join(SHM_ROOT, f"v2server-link-{uuid.uuid4().hex}")
    os.symlink(segment[1], link)
    try:
        with pytest.raises(InvalidRequest, match="Unable to open shared memory region"):
            registry.register_system("r", "/" + os.path.basename(link), 0, 16)
    finally:
        os.unlink(link)


def test_the_number_of_regions_is_bounded(segment: tuple[str, str]) -> None:
    registry = SharedMemoryRegistry(max_regions=2)
    registry.register_system("a", segment[0], 0, 16)
    registry.register_system("b", segment[0], 0, 16)
    with pytest.raises(QueueFull, match="--max-shm-regions"):
        registry.register_system("c", segment[0], 0, 16)
    registry.unregister("system", "a")
    registry.register_system("c", segment[0], 0, 16)
    registry.close()


def test_client_shared_memory_can_be_disabled(segment: tuple[str, str]) -> None:
    registry = SharedMemoryRegistry(allowed=False)
    with pytest.raises(Unsupported, match="--allow-client-shm=false"):
        registry.register_system("a", segment[0], 0, 16)
    with pytest.raises(Unsupported, match="--allow-client-shm=false"):
        registry.lease("a")
    assert registry.status("system") == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a server without a GPU")
def test_cuda_registration_without_a_gpu_is_invalid_argument() -> None:
    registry = SharedMemoryRegistry()
    no_gpu = r"^failed to register CUDA shared memory region 'g': this server has no GPU"
    with pytest.raises(InvalidRequest, match=no_gpu):
        registry.register_cuda("g", bytes(64), 0, 64)
    registry.unregister("cuda")  # unregister-all works without a GPU
    assert len(registry) == 0


# -- bounds, overlap, leases --------------------------------------------------------------------------------


def test_tensor_spans_are_checked_against_the_region(segment: tuple[str, str]) -> None:
    registry = SharedMemoryRegistry()
    region = registry.register_system("r", segment[0], 64, 32)
    region.check_span(0, 32)
    region.check_span(16, 16)
    with pytest.raises(InvalidRequest, match=r"^Invalid offset for shared memory region: 'r'"):
        region.check_span(32, 0)
    with pytest.raises(InvalidRequest, match=r"^Invalid offset \+ byte size for shared memory region: 'r'"):
        region.check_span(16, 17)
    registry.close()


def test_overlapping_regions_see_each_others_writes(segment: tuple[str, str]) -> None:
    key, path = segment
    registry = SharedMemoryRegistry()
    wide = registry.register_system("wide", key, 0, 256)
    narrow = registry.register_system("narrow", key, 100, 8)  # not page aligned: mapped from the page below
    narrow.write(0, np.frombuffer(b"ABCDEFGH", dtype=np.uint8))
    assert wide.read(100, 8).tobytes() == b"ABCDEFGH" == _read(path, 100, 8)
    _write(path, 104, b"wxyz")
    assert narrow.read(0, 8).tobytes() == b"ABCDwxyz"
    registry.close()


def test_unregistering_a_region_in_use_waits_for_its_requests(segment: tuple[str, str]) -> None:
    key, path = segment
    registry = SharedMemoryRegistry()
    registry.register_system("r", key, 0, 64)
    region = registry.lease("r")
    view = region.read(0, 4)
    registry.unregister("system", "r")
    assert registry.status("system") == [] and not region.closed  # the name is gone, the memory is not
    registry.register_system("r", key, 0, 8)  # the name is free again at once
    _write(path, 0, b"\x01\x02\x03\x04")
    assert view.tolist() == [1, 2, 3, 4]  # the request still reads the mapping
    region.write(0, np.array([9], dtype=np.uint8))
    del view
    region.release()
    assert region.closed
    with pytest.raises(NotFound, match="it was unregistered"):
        region.acquire()
    assert _read(path, 0, 1) == b"\x09"
    registry.close()


def test_a_segment_that_shrank_is_refused_before_it_is_touched(segment: tuple[str, str]) -> None:
    key, path = segment
    registry = SharedMemoryRegistry()
    registry.register_system("r", key, 1024, 1024)
    os.truncate(path, 1500)  # touching a mapped page past the end would be a SIGBUS
    with pytest.raises(InvalidRequest, match="shrank to 1500 bytes"):
        registry.lease("r")
    registry.close()


# -- one request's tensors ----------------------------------------------------------------------------------


SIGNATURE = Signature.from_config(mc.ModelConfig(
    name="m", max_batch_size=8,
    input=[mc.ModelInput(name="I", data_type=mc.TYPE_INT32, dims=[4]),
           mc.ModelInput(name="S", data_type=mc.TYPE_STRING, dims=[2])],
    output=[mc.ModelOutput(name="O", data_type=mc.TYPE_INT32, dims=[4]),
            mc.ModelOutput(name="T", data_type=mc.TYPE_STRING, dims=[2])],
))


def _in_region(tensor: Any, region: str, byte_size: int, offset: int = 0) -> Any:
    tensor.parameters["shared_memory_region"].string_param = region
    tensor.parameters["shared_memory_byte_size"].int64_param = byte_size
    if offset:
        tensor.parameters["shared_memory_offset"].int64_param = offset
    return tensor


def test_inputs_are_read_in_place_and_outputs_written(segment: tuple[str, str]) -> None:
    key, path = segment
    registry = SharedMemoryRegistry()
    registry.register_system("r", key, 0, 4096)
    strings = np.array([b"hello", b""], dtype=object)
    _write(path, 0, np.arange(4, dtype=np.int32).tobytes())
    _write(path, 64, serialize_bytes(strings))
    request = pb.ModelInferRequest(
        inputs=[_in_region(Input(name="I", datatype="INT32", shape=[1, 4]), "r", 16),
                _in_region(Input(name="S", datatype="BYTES", shape=[1, 2]), "r", 13, 64)],
        outputs=[_in_region(Output(name="O"), "r", 16, 256), _in_region(Output(name="T"), "r", 100, 512)],
    )
    memory = bind_request(registry, request, SIGNATURE, 1)
    assert memory is not None and registry.lease("r").leases == 5  # 4 tensors and the lease just taken
    tensors = read_inputs(memory, request)
    assert tensors["I"].array.tolist() == [[0, 1, 2, 3]] and not tensors["I"].array.flags.writeable
    assert tensors["S"].array.tolist() == [[b"hello", b""]]
    _write(path, 0, np.full(4, 7, dtype=np.int32).tobytes())
    assert tensors["I"].array.tolist() == [[7, 7, 7, 7]]  # a view of the mapping: no copy was made
    words = np.array([[b"ab", b"c"]], dtype=object)
    write_outputs(memory, [Tensor("O", datatype("INT32"), np.array([[5, 6, 7, 8]], dtype=np.int32)),
                           Tensor("T", datatype("BYTES"), words)])
    assert np.frombuffer(_read(path, 256, 16), dtype=np.int32).tolist() == [5, 6, 7, 8]
    assert _read(path, 512, 11) == serialize_bytes(words)
    memory.release()
    registry.close()


@pytest.mark.parametrize(
    ("tensors", "error", "message"),
    [
        ([_in_region(Input(name="I", datatype="INT32", shape=[1, 4]), "r", 12)], InvalidRequest,
         "input byte size mismatch for input 'I' for model 'm'. Expected 16, got 12"),
        ([_in_region(Input(name="S", datatype="BYTES", shape=[1, 2]), "r", 7)], InvalidRequest,
         "input 'S': shared_memory_byte_size 7 cannot hold 2 BYTES elements"),
        ([_in_region(Input(name="I", datatype="INT32", shape=[1, 4]), "r", 16, 4090)], InvalidRequest,
         "Invalid offset + byte size for shared memory region: 'r'"),
        ([_in_region(Input(name="I", datatype="INT32", shape=[1, 4]), "gone", 16)], NotFound,
         "Unable to find shared memory region: 'gone'"),
        ([_in_region(Output(name="O"), "r", 15)], InvalidRequest,
         "shared memory size specified with the request for output 'O' (15 bytes) should be at least 16 bytes"),
        ([_in_region(Output(name="O", parameters={"classification": pb.InferParameter(int64_param=2)}), "r", 16)],
         InvalidRequest, "Output can't set both 'shared_memory_region' and 'classification'"),
    ],
    ids=["input-size", "bytes-prefixes", "bounds", "unknown-region", "output-too-small", "classification"],
)
def test_request_checks_come_before_any_work(
    segment: tuple[str, str], tensors: list[Any], error: type[Exception], message: str
) -> None:
    registry = SharedMemoryRegistry()
    region = registry.register_system("r", segment[0], 0, 4096)
    request = pb.ModelInferRequest(
        inputs=[t for t in tensors if isinstance(t, Input)], outputs=[t for t in tensors if isinstance(t, Output)]
    )
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        bind_request(registry, request, SIGNATURE, 1)
    assert region.leases == 0  # whatever was leased before the refusal is released
    registry.close()


def test_outputs_too_large_for_their_region_are_refused_before_any_write(segment: tuple[str, str]) -> None:
    key, path = segment
    registry = SharedMemoryRegistry()
    registry.register_system("r", key, 0, 4096)
    outputs = [_in_region(Output(name="O"), "r", 16), _in_region(Output(name="T"), "r", 8, 64)]
    request = pb.ModelInferRequest(outputs=outputs)
    memory = bind_request(registry, request, SIGNATURE, 1)
    assert memory is not None
    words = np.array([[b"too long", b"!"]], dtype=object)
    with pytest.raises(InvalidRequest, match=r"output 'T' \(8 bytes\) should be at least 17 bytes"):
        write_outputs(memory, [Tensor("O", datatype("INT32"), np.ones((1, 4), dtype=np.int32)),
                               Tensor("T", datatype("BYTES"), words)])
    assert _read(path, 0, 16) == bytes(16)  # nothing was written
    memory.release()
    registry.close()


# -- through the data plane: a region unregistered while a request holds it ----------------------------------


@dataclass
class SlowHandle:
    """Doubles its INT32 input once ``go`` is set, so a test can act while the request is in the model."""

    config: mc.ModelConfig
    name: str = "m"
    version: int = 1
    started: asyncio.Event = field(default_factory=asyncio.Event)
    go: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def signature(self) -> Signature:
        return Signature.from_config(self.config)

    async def execute(self, inputs: Sequence[Tensor], outputs: Sequence[str], batch_size: int, *args: Any,
                      **kwargs: Any) -> Execution:
        self.started.set()
        await self.go.wait()
        return Execution([Tensor("OUT", datatype("INT32"), inputs[0].array * 2)], batch_size, 0, 0)


class OneModel:
    def __init__(self, handle: SlowHandle) -> None:
        self.handle = handle

    def get(self, name: str, version: str = "") -> SlowHandle:
        if name != self.handle.name:
            raise ModelNotFound(name)
        return self.handle


async def test_a_region_unregistered_during_a_request_serves_it_to_the_end(segment: tuple[str, str]) -> None:
    key, path = segment
    config = mc.ModelConfig(
        name="m", input=[mc.ModelInput(name="IN", data_type=mc.TYPE_INT32, dims=[4])],
        output=[mc.ModelOutput(name="OUT", data_type=mc.TYPE_INT32, dims=[4])],
    )
    handle = SlowHandle(config)
    plane = DataPlane(OneModel(handle))  # type: ignore[arg-type]
    await plane.SystemSharedMemoryRegister(pb.SystemSharedMemoryRegisterRequest(name="r", key=key, byte_size=64))
    _write(path, 0, np.array([1, 2, 3, 4], dtype=np.int32).tobytes())
    request = pb.ModelInferRequest(
        model_name="m",
        inputs=[_in_region(Input(name="IN", datatype="INT32", shape=[4]), "r", 16)],
        outputs=[_in_region(Output(name="OUT"), "r", 16, 32)],
    )
    task = asyncio.create_task(plane.ModelInfer(request))
    await handle.started.wait()
    await plane.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="r"))
    status = await plane.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest())
    assert dict(status.regions) == {}
    with pytest.raises(NotFound, match="Unable to find shared memory region: 'r'"):
        await plane.ModelInfer(request)  # a new request no longer finds it
    handle.go.set()
    response = await task
    assert list(response.raw_output_contents) == [b""] and list(response.outputs[0].shape) == [4]
    assert response.outputs[0].parameters["shared_memory_region"].string_param == "r"
    assert np.frombuffer(_read(path, 32, 16), dtype=np.int32).tolist() == [2, 4, 6, 8]
    assert plane.shared_memory.status("system") == []
