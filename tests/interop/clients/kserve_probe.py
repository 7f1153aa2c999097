"""KServe's Python SDK (0.21) against v2server: its REST and gRPC inference clients, as one JSON object.

Usage: ``kserve_probe.py HTTP_URL GRPC_ADDRESS``. Standalone: imports only kserve (and what it brings: numpy,
grpcio, httpx) and the stdlib. ``InferenceRESTClient`` (``RESTConfig(protocol="v2")``) and
``InferenceGRPCClient`` have health, model ready and infer but no metadata call; metadata goes through the
SDK's own generated gRPC stub (``kserve.protocol.grpc``), which is what the SDK ships for it. Every call is
recorded as what it returned or the exception it raised, so the pytest side decides what is right.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from kserve.protocol.infer_type import RequestedOutput

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 3, dtype=np.int32)
WORDS = np.array([[b"hello", "grüße".encode(), b"", b"a b"]], dtype=np.object_)


async def attempt(call: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """``{"value": ...}`` or ``{"error": type name, "message": str(error), "code": gRPC code or HTTP status}``."""
    try:
        return {"value": await call()}
    except grpc.RpcError as error:
        return {"error": type(error).__name__, "message": error.details(), "code": error.code().name}
    except Exception as error:  # noqa: BLE001 (the observation is the exception)
        response = getattr(error, "response", None)
        code = response.status_code if response is not None else None
        return {"error": type(error).__name__, "message": str(error), "code": code}


def simple_request(binary: bool, request_id: str | None, shape: list[int] | None = None) -> InferRequest:
    """``simple``'s two INT32 inputs, as JSON lists or binary (REST: appended bytes; gRPC: raw contents)."""
    inputs = []
    for name, array in (("INPUT0", A), ("INPUT1", B)):
        if shape is not None:
            array = array.reshape(-1)[: int(np.prod(shape))].reshape(shape)
        infer_input = InferInput(name, list(array.shape), "INT32")
        infer_input.set_data_from_numpy(array, binary_data=binary)
        inputs.append(infer_input)
    outputs = [RequestedOutput(name, {"binary_data": binary}) for name in ("OUTPUT0", "OUTPUT1")]
    return InferRequest("simple", inputs, request_id=request_id, request_outputs=outputs)


def bytes_request(binary: bool) -> InferRequest:
    infer_input = InferInput("INPUT0", list(WORDS.shape), "BYTES")
    infer_input.set_data_from_numpy(WORDS, binary_data=binary)
    outputs = [RequestedOutput("OUTPUT0", {"binary_data": binary})]
    return InferRequest("simple_identity", [infer_input], request_outputs=outputs)


def wrong_datatype_request() -> InferRequest:
    floats = InferInput("INPUT0", [1, 16], "FP32")
    floats.set_data_from_numpy(A.astype(np.float32), binary_data=False)
    ints = InferInput("INPUT1", [1, 16], "INT32")
    ints.set_data_from_numpy(B, binary_data=False)
    return InferRequest("simple", [floats, ints])


def simple_result(response: Any) -> dict[str, Any]:
    out0 = response.get_output_by_name("OUTPUT0").as_numpy()
    out1 = response.get_output_by_name("OUTPUT1").as_numpy()
    return {
        "id": response.id, "OUTPUT0": out0.tolist(), "OUTPUT1": out1.tolist(), "dtype": str(out0.dtype),
    }


def bytes_result(response: Any) -> dict[str, Any]:
    values = response.get_output_by_name("OUTPUT0").as_numpy().tolist()
    return {
        "OUTPUT0": [[(v.encode() if isinstance(v, str) else v).hex() for v in row] for row in values],
        "element_type": sorted({type(v).__name__ for row in values for v in row}),
    }


async def probe_rest(url: str) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))

    async def infer(request: InferRequest, model: str | None = None) -> Any:
        return await client.infer(url, request, model_name=model or request.model_name)

    async def infer_seen(request: InferRequest, convert: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        """The converted response, and whether its body carried binary tensors (Triton's length header)."""
        headers: dict[str, str] = {}
        response = await client.infer(url, request, model_name=request.model_name, response_headers=headers)
        return {**convert(response), "binary_response": "inference-header-content-length" in headers}

    try:
        return {
            "live": await client.is_server_live(url),
            "ready": await client.is_server_ready(url),
            "model_ready": {m: await client.is_model_ready(url, m) for m in ("simple", "wrong_model_name")},
            "infer_json": await attempt(lambda: infer_seen(simple_request(False, "kserve-json"), simple_result)),
            "infer_binary": await attempt(lambda: infer_seen(simple_request(True, "kserve-bin"), simple_result)),
            "infer_no_id": await attempt(lambda: infer_seen(simple_request(True, None), simple_result)),
            "bytes_json": await attempt(lambda: infer_seen(bytes_request(False), bytes_result)),
            "bytes_binary": await attempt(lambda: infer_seen(bytes_request(True), bytes_result)),
            "infer_unknown": await attempt(lambda: infer(simple_request(False, None), "wrong_model_name")),
            "infer_wrong_shape": await attempt(lambda: infer(simple_request(False, None, [1, 8]))),
            "infer_wrong_datatype": await attempt(lambda: infer(wrong_datatype_request())),
        }
    finally:
        await client.close()


async def probe_grpc(address: str) -> dict[str, Any]:
    client = InferenceGRPCClient(address, retries=0, timeout=30)
    channel = grpc.aio.insecure_channel(address)
    stub = GRPCInferenceServiceStub(channel)

    async def metadata(name: str) -> dict[str, Any]:
        found = await stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=30)
        return json_format.MessageToDict(found)

    async def server_metadata() -> dict[str, Any]:
        return json_format.MessageToDict(await stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=30))

    try:
        return {
            "live": await client.is_server_live(),
            "ready": await client.is_server_ready(),
            "model_ready": {m: await attempt(lambda m=m: client.is_model_ready(m)) for m in ("simple", "wrong_model_name")},
            "server_metadata": await attempt(server_metadata),
            "metadata": await attempt(lambda: metadata("simple")),
            "metadata_unknown": await attempt(lambda: metadata("wrong_model_name")),
            "infer_json": await attempt(lambda: _map(client.infer(simple_request(False, "kserve-json")), simple_result)),
            "infer_binary": await attempt(lambda: _map(client.infer(simple_request(True, "kserve-bin")), simple_result)),
            "infer_no_id": await attempt(lambda: _map(client.infer(simple_request(True, None)), simple_result)),
            "bytes_json": await attempt(lambda: _map(client.infer(bytes_request(False)), bytes_result)),
            "bytes_binary": await attempt(lambda: _map(client.infer(bytes_request(True)), bytes_result)),
            "infer_unknown": await attempt(lambda: client.infer(_renamed(simple_request(True, None)))),
            "infer_wrong_shape": await attempt(lambda: client.infer(simple_request(True, None, [1, 8]))),
            "infer_wrong_datatype": await attempt(lambda: client.infer(wrong_datatype_request())),
        }
    finally:
        await channel.close()
        await client.close()


def _renamed(request: InferRequest) -> InferRequest:
    request.model_name = "wrong_model_name"
    return request


async def _map(response: Awaitable[Any], convert: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    return convert(await response)


async def main(http_url: str, grpc_address: str) -> dict[str, Any]:
    return {"rest": await probe_rest(http_url), "grpc": await probe_grpc(grpc_address)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2])), default=str))
