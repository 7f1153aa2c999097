"""Triton's shared-memory extensions through tritonclient, over REST and gRPC, against a real server.

Regions are created as Triton's examples create them (``tritonclient.utils.shared_memory``); each test
unregisters what it registered, since the server is shared by the session. The CUDA path needs a GPU and a
client in another process (a CUDA IPC handle cannot be opened by the process that exported it): it runs when
one is available and is skipped otherwise.
"""

from __future__ import annotations

import base64
import importlib.util
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size

from tests.conftest import RunningServer, cli_process, http_call, logged_port
from v2server.errors import http_status

TRANSPORTS = ("http", "grpc")
Client = Any  # httpclient.InferenceServerClient | grpcclient.InferenceServerClient


def _client(server: RunningServer, transport: str) -> Client:
    if transport == "http":
        return httpclient.InferenceServerClient(server.http_url)
    return grpcclient.InferenceServerClient(server.grpc_url)


def _module(transport: str) -> Any:
    return httpclient if transport == "http" else grpcclient


class Regions:
    """Regions made with tritonclient's utilities under unique names and keys; all undone at the end."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.tag = uuid.uuid4().hex[:12]
        self.handles: list[Any] = []
        self.names: list[str] = []

    def create(self, name: str, byte_size: int, register: bool = True) -> tuple[str, str, Any]:
        """(region name, key, handle) of a new segment of ``byte_size`` bytes."""
        region, key = f"{name}-{self.tag}", f"/v2s-{name}-{self.tag}"
        handle = shm.create_shared_memory_region(region, key, byte_size)
        self.handles.append(handle)
        if register:
            self.client.register_system_shared_memory(region, key, byte_size)
            self.names.append(region)
        return region, key, handle

    def close(self) -> None:
        for name in self.names:
            self.client.unregister_system_shared_memory(name)
        for handle in self.handles:
            shm.destroy_shared_memory_region(handle)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture()
def regions(server: RunningServer, transport: str) -> Iterator[Regions]:
    made = Regions(_client(server, transport))
    yield made
    made.close()


def _status(client: Client, name: str = "") -> dict[str, dict[str, Any]]:
    """Status by region name, as plain dicts on both transports."""
    answer = client.get_system_shared_memory_status(name)
    if isinstance(answer, list):
        return {entry["name"]: entry for entry in answer}
    return {
        n: {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
        for n, r in answer.regions.items()
    }


def test_simple_int32_inputs_and_outputs_in_shared_memory(regions: Regions, transport: str) -> None:
    module = _module(transport)
    in0 = np.arange(16, dtype=np.int32).reshape(1, 16)
    in1 = np.ones((1, 16), dtype=np.int32)
    inputs_region, _, inputs_handle = regions.create("in", 128)
    outputs_region, _, outputs_handle = regions.create("out", 128)
    shm.set_shared_memory_region(inputs_handle, [in0, in1])
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory(inputs_region, 64)
    inputs[1].set_shared_memory(inputs_region, 64, offset=64)
    outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory(outputs_region, 64)
    outputs[1].set_shared_memory(outputs_region, 64, offset=64)

    result = regions.client.infer("simple", inputs, outputs=outputs)

    for name, offset, expected in (("OUTPUT0", 0, in0 + in1), ("OUTPUT1", 64, in0 - in1)):
        output = result.get_output(name)
        if transport == "http":
            datatype, shape = output["datatype"], output["shape"]
        else:
            datatype, shape = output.datatype, output.shape
        assert (datatype, list(shape)) == ("INT32", [1, 16])
        np.testing.assert_array_equal(shm.get_contents_as_numpy(outputs_handle, np.int32, [1, 16], offset), expected)
    response = result.get_response()
    if transport == "http":
        assert all("data" not in o and "binary_data_size" not in o.get("parameters", {}) for o in response["outputs"])
        assert response["outputs"][0]["parameters"]["shared_memory_region"] == outputs_region
    else:
        assert list(response.raw_output_contents) == [b"", b""]  # one (empty) entry per output, as from Triton


def test_shared_memory_and_inline_tensors_mix(regions: Regions, transport: str) -> None:
    """An input in shared memory takes no raw entry: the other input's bytes are still matched to it."""
    module = _module(transport)
    in0, in1 = np.full((1, 16), 5, dtype=np.int32), np.full((1, 16), 2, dtype=np.int32)
    region, _, handle = regions.create("mix", 64)
    shm.set_shared_memory_region(handle, [in1])
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(in0)
    inputs[1].set_shared_memory(region, 64)
    result = regions.client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), in0 + in1)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), in0 - in1)


def test_simple_string_bytes_in_shared_memory(regions: Regions, transport: str) -> None:
    module = _module(transport)
    in0 = np.array([str(i).encode() for i in range(16)], dtype=object).reshape(1, 16)
    in1 = np.array([b"1"] * 16, dtype=object).reshape(1, 16)
    serialized = [serialize_byte_tensor(in0), serialize_byte_tensor(in1)]
    sizes = [serialized_byte_size(s) for s in serialized]
    in0_region, _, in0_handle = regions.create("sin0", sizes[0])
    in1_region, _, in1_handle = regions.create("sin1", sizes[1])
    out_region, _, out_handle = regions.create("sout", 512)
    shm.set_shared_memory_region(in0_handle, [serialized[0]])
    shm.set_shared_memory_region(in1_handle, [serialized[1]])
    inputs = [module.InferInput("INPUT0", [1, 16], "BYTES"), module.InferInput("INPUT1", [1, 16], "BYTES")]
    inputs[0].set_shared_memory(in0_region, sizes[0])
    inputs[1].set_shared_memory(in1_region, sizes[1])
    outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory(out_region, 256)
    outputs[1].set_shared_memory(out_region, 256, offset=256)

    regions.client.infer("simple_string", inputs, outputs=outputs)

    sums = shm.get_contents_as_numpy(out_handle, np.object_, [1, 16])
    differences = shm.get_contents_as_numpy(out_handle, np.object_, [1, 16], 256)
    assert [int(v) for v in sums.reshape(-1)] == [i + 1 for i in range(16)]
    assert [int(v) for v in differences.reshape(-1)] == [i - 1 for i in range(16)]


def test_status_unregister_and_unregister_all(regions: Regions, transport: str) -> None:
    client = regions.client
    a, key_a, _ = regions.create("a", 64)
    b, _, _ = regions.create("b", 64, register=False)
    client.register_system_shared_memory(b, key_a, 32, offset=16)  # a second region over the same segment
    assert _status(client, a) == {a: {"name": a, "key": key_a, "offset": 0, "byte_size": 64}}
    assert _status(client, b)[b]["offset"] == 16
    mine = {name for name in _status(client) if regions.tag in name}
    assert mine == {a, b}
    client.unregister_system_shared_memory(b)
    client.unregister_system_shared_memory(b)  # again: no error, as in Triton
    assert {name for name in _status(client) if regions.tag in name} == {a}
    client.unregister_system_shared_memory()
    assert _status(client) == {}
    regions.names.clear()


def _failure(call: Callable[[], object]) -> tuple[int, str]:
    """(HTTP status, message) of a tritonclient call that must fail, on either transport."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    status = caught.value.status() or ""
    if status.startswith("StatusCode."):
        return http_status(getattr(grpc.StatusCode, status.removeprefix("StatusCode."))), caught.value.message()
    return int(status), caught.value.message()


def _error_cases(regions: Regions, module: Any) -> dict[str, Callable[[], object]]:
    client = regions.client
    region, key, _ = regions.create("err", 64)

    def infer_with(region_name: str, byte_size: int, offset: int = 0) -> object:
        inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
        for tensor in inputs:
            tensor.set_shared_memory(region_name, byte_size, offset=offset)
        return client.infer("simple", inputs)

    return {
        "register-taken": lambda: client.register_system_shared_memory(region, key, 64),
        "register-past-the-end": lambda: client.register_system_shared_memory("past-" + regions.tag, key, 65),
        "register-hostile-key": lambda: client.register_system_shared_memory("h-" + regions.tag, "/../etc/passwd", 4),
        "register-unknown-key": lambda: client.register_system_shared_memory("u-" + regions.tag, "/v2s-none", 4),
        "status-unknown": lambda: client.get_system_shared_memory_status("nope-" + regions.tag),
        "infer-unknown-region": lambda: infer_with("nope-" + regions.tag, 64),
        "infer-size-mismatch": lambda: infer_with(region, 32),
        "infer-past-the-region": lambda: infer_with(region, 64, offset=32),
        "cuda-status-unknown": lambda: client.get_cuda_shared_memory_status("nope-" + regions.tag),
    }


EXPECTED = {
    "register-taken": (400, "shared memory region 'err-{tag}' already in manager"),
    "register-past-the-end": (400, "failed to register shared memory region 'past-{tag}': invalid args"),
    "register-hostile-key": (400, "shared memory key: '../etc/passwd' is not a plain file name"),
    "register-unknown-key": (400, "Unable to open shared memory region: '/v2s-none'"),
    "status-unknown": (404, "Unable to find system shared memory region: 'nope-{tag}'"),
    "infer-unknown-region": (404, "Unable to find shared memory region: 'nope-{tag}'"),
    "infer-size-mismatch": (400, "input byte size mismatch for input 'INPUT0' for model 'simple'. Expected 64, got 32"),
    "infer-past-the-region": (400, "Invalid offset + byte size for shared memory region: 'err-{tag}'"),
    "cuda-status-unknown": (404, "Unable to find CUDA shared memory region: 'nope-{tag}'"),
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_errors_are_triton_s_and_the_same_on_both_transports(server: RunningServer, case: str) -> None:
    seen = []
    for transport in TRANSPORTS:
        made = Regions(_client(server, transport))
        try:
            status, message = _failure(_error_cases(made, _module(transport))[case])
        finally:
            made.close()
        expected_status, expected = EXPECTED[case]
        assert status == expected_status, (transport, message)
        assert message.startswith(expected.format(tag=made.tag)), (transport, message)
        seen.append(message.replace(made.tag, "TAG"))
    assert seen[0] == seen[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a server without a GPU")
def test_cuda_registration_without_a_gpu_is_a_clear_invalid_argument(server: RunningServer) -> None:
    messages = []
    for transport in TRANSPORTS:
        client = _client(server, transport)
        status, message = _failure(
            lambda: client.register_cuda_shared_memory("gpu", base64.b64encode(bytes(64)), 0, 64)
        )
        assert status == 400 and "this server has no GPU" in message
        messages.append(message)
        client.unregister_cuda_shared_memory()  # unregister-all works without a GPU
        answer = client.get_cuda_shared_memory_status()
        assert answer == [] if transport == "http" else not answer.regions
    assert messages[0] == messages[1]


def test_rest_routes_refuse_bad_bodies_and_methods(server: RunningServer) -> None:
    status, _, body = http_call(server, "POST", "/v2/systemsharedmemory/region/x/register", b'{"key": 5}')
    assert status == 400 and b"'key' must be a string" in body
    negative = b'{"key": "/k", "byte_size": -1}'
    status, _, body = http_call(server, "POST", "/v2/systemsharedmemory/region/x/register", negative)
    assert status == 400 and b"'byte_size' must be a non-negative integer" in body
    status, _, body = http_call(server, "POST", "/v2/cudasharedmemory/region/x/register",
                                b'{"raw_handle": {"b64": "!!"}, "device_id": 0, "byte_size": 8}')
    assert status == 400 and b"not valid base64" in body
    status, _, _ = http_call(server, "GET", "/v2/systemsharedmemory/region/x/register")
    assert status == 405
    status, _, body = http_call(server, "POST", "/v2/systemsharedmemory/unregister", b"")
    assert status == 200 and body == b""
    status, _, body = http_call(server, "GET", "/v2/cudasharedmemory/status")
    assert status == 200 and body == b"[]"


def test_rest_input_with_data_and_a_region_is_refused(server: RunningServer) -> None:
    body = (b'{"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [0],'
            b' "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 64}}]}')
    status, _, answer = http_call(server, "POST", "/v2/models/simple/infer", body)
    assert status == 400 and b"Input must set only one of the following fields" in answer


# -- CUDA shared memory, on a real GPU -----------------------------------------------------------------------

_CUDA_CLIENT = """
import numpy as np, sys
import tritonclient.grpc as grpcclient, tritonclient.http as httpclient
import tritonclient.utils.cuda_shared_memory as cudashm
module = grpcclient if sys.argv[1] == "grpc" else httpclient
client = module.InferenceServerClient(sys.argv[2])
in0 = np.arange(16, dtype=np.int32).reshape(1, 16); in1 = np.ones((1, 16), dtype=np.int32)
inputs_handle = cudashm.create_shared_memory_region("cin", 128, 0)
outputs_handle = cudashm.create_shared_memory_region("cout", 128, 0)
cudashm.set_shared_memory_region(inputs_handle, [in0, in1])
client.register_cuda_shared_memory("cin", cudashm.get_raw_handle(inputs_handle), 0, 128)
client.register_cuda_shared_memory("cout", cudashm.get_raw_handle(outputs_handle), 0, 128)
status = client.get_cuda_shared_memory_status()
assert len(status if isinstance(status, list) else status.regions) == 2, status
inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
inputs[0].set_shared_memory("cin", 64); inputs[1].set_shared_memory("cin", 64, offset=64)
outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
outputs[0].set_shared_memory("cout", 64); outputs[1].set_shared_memory("cout", 64, offset=64)
client.infer("simple", inputs, outputs=outputs)
both = cudashm.get_contents_as_numpy(outputs_handle, np.int32, [2, 16])
assert (both[0] == (in0 + in1)[0]).all() and (both[1] == (in0 - in1)[0]).all(), both
client.unregister_cuda_shared_memory()
cudashm.destroy_shared_memory_region(inputs_handle); cudashm.destroy_shared_memory_region(outputs_handle)
print("CUDA SHM OK")
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA shared memory needs a GPU")
@pytest.mark.skipif(importlib.util.find_spec("cuda") is None, reason="tritonclient's CUDA utilities need cuda-python")
def test_cuda_shared_memory_round_trip(server: RunningServer, transport: str) -> None:
    url = server.grpc_url if transport == "grpc" else server.http_url
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_CUDA_CLIENT), transport, url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "CUDA SHM OK" in done.stdout, done.stdout + done.stderr


# -- gateway mode: the REST routes reach a remote core through the same RPCs ---------------------------------


@pytest.fixture(scope="module")
def gateway_url(server: RunningServer) -> Iterator[str]:
    args = ["gateway", "--grpc-target", server.grpc_url, "--http-address", "127.0.0.1", "--http-port", "0"]
    with cli_process(args, until="REST gateway on") as (_, log):
        yield f"127.0.0.1:{logged_port(log, 'REST gateway on')}"


def test_the_gateway_forwards_shared_memory(gateway_url: str) -> None:
    regions = Regions(httpclient.InferenceServerClient(gateway_url))
    try:
        region, key, handle = regions.create("gw", 128)
        assert _status(regions.client, region)[region]["key"] == key
        data = np.full((1, 16), 3, dtype=np.int32)
        shm.set_shared_memory_region(handle, [data, data])
        inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"), httpclient.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_shared_memory(region, 64)
        inputs[1].set_shared_memory(region, 64, offset=64)
        output = httpclient.InferRequestedOutput("OUTPUT0")
        output.set_shared_memory(region, 64)  # over INPUT0: inputs are read before outputs are written
        regions.client.infer("simple", inputs, outputs=[output])
        np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.int32, [1, 16]), data * 2)
        status, message = _failure(lambda: regions.client.get_system_shared_memory_status("nope-" + regions.tag))
        assert (status, message) == (404, f"Unable to find system shared memory region: 'nope-{regions.tag}'")
    finally:
        regions.close()
