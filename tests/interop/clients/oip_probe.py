"""The Open Inference Protocol's generated Python clients against v2server, as one JSON object.

Usage: ``oip_probe.py HTTP_URL GRPC_ADDRESS``. Standalone: imports only ``open_inference`` (the namespace shared
by ``open-inference-openapi``, a Fern-generated httpx + pydantic.v1 client, and ``open-inference-grpc``, bare
generated stubs) plus grpcio and the stdlib. The openapi client's ``TensorData`` is
``List[Union[TensorData, float, str, bool]]``, so it sends integers as ``0.0, 1.0, ...`` and parses them back as
floats; the probe records the body it serialises so the tests can say so.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import json_format
from open_inference.grpc import protocol as pb
from open_inference.grpc.service import GRPCInferenceServiceStub
from open_inference.openapi.client import InferenceRequest, OpenInferenceClient
from open_inference.openapi.core.api_error import ApiError
from open_inference.openapi.core.jsonable_encoder import jsonable_encoder
from open_inference.openapi.types.request_input import RequestInput

A = list(range(16))
B = [3] * 16
WORDS = ["hello", "grüße", "", "a b"]


def attempt(call: Callable[[], Any]) -> dict[str, Any]:
    """``{"value": ...}`` or ``{"error": type name, "status"/"code": ..., "body"/"message": ...}``."""
    try:
        return {"value": call()}
    except ApiError as error:
        return {"error": type(error).__name__, "status": error.status_code, "body": error.body}
    except grpc.RpcError as error:
        return {"error": type(error).__name__, "code": error.code().name, "message": error.details()}


def rest_request(
    request_id: str | None, datatype: str = "INT32", shape: tuple[int, int] = (1, 16)
) -> InferenceRequest:
    count = shape[0] * shape[1]
    inputs = [
        RequestInput(name="INPUT0", shape=list(shape), datatype=datatype, data=A[:count]),
        RequestInput(name="INPUT1", shape=list(shape), datatype="INT32", data=B[:count]),
    ]
    return InferenceRequest(id=request_id, inputs=inputs) if request_id else InferenceRequest(inputs=inputs)


def probe_rest(url: str) -> dict[str, Any]:
    client = OpenInferenceClient(base_url=url, timeout=30)

    def infer(model: str, request: InferenceRequest) -> dict[str, Any]:
        response = client.model_infer(model, request=request)
        return {"id": response.id, "outputs": {out.name: out.dict() for out in response.outputs}}

    def metadata(name: str) -> dict[str, Any]:
        return client.read_model_metadata(name).dict()  # type: ignore[no-any-return]

    words = InferenceRequest(inputs=[RequestInput(name="INPUT0", shape=[1, 4], datatype="BYTES", data=WORDS)])
    return {
        "live": attempt(client.check_server_liveness),
        "ready": attempt(client.check_server_readiness),
        "model_ready": {m: attempt(lambda m=m: client.check_model_readiness(m)) for m in ("simple", "wrong_model_name")},
        "server_metadata": attempt(lambda: client.read_server_metadata().dict()),
        "metadata": attempt(lambda: metadata("simple")),
        "metadata_unknown": attempt(lambda: metadata("wrong_model_name")),
        "sent_body": jsonable_encoder(rest_request("oip-json")),
        "infer": attempt(lambda: infer("simple", rest_request("oip-json"))),
        "infer_no_id": attempt(lambda: infer("simple", rest_request(None))),
        "infer_bytes": attempt(lambda: infer("simple_identity", words)),
        "infer_unknown": attempt(lambda: infer("wrong_model_name", rest_request(None))),
        "infer_wrong_shape": attempt(lambda: infer("simple", rest_request(None, shape=(1, 8)))),
        "infer_wrong_datatype": attempt(lambda: infer("simple", rest_request(None, datatype="FP32"))),
    }


def grpc_request(raw: bool, request_id: str = "", model: str = "simple", datatype: str = "INT32") -> Any:
    """``simple``'s inputs as typed ``int_contents`` or as little-endian ``raw_input_contents``."""
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    for name, values in (("INPUT0", A), ("INPUT1", B)):
        tensor = request.inputs.add(name=name, datatype=datatype if name == "INPUT0" else "INT32", shape=[1, 16])
        if raw:
            request.raw_input_contents.append(struct.pack("<16i", *values))
        elif tensor.datatype == "FP32":
            tensor.contents.fp32_contents.extend(float(v) for v in values)
        else:
            tensor.contents.int_contents.extend(values)
    return request


def grpc_outputs(response: Any) -> dict[str, Any]:
    """Each output's values, from typed contents or raw bytes (INT32 little-endian, BYTES length-prefixed)."""
    outputs: dict[str, Any] = {"id": response.id, "raw": len(response.raw_output_contents) > 0}
    for index, output in enumerate(response.outputs):
        if response.raw_output_contents:
            raw = response.raw_output_contents[index]
            outputs[output.name] = _bytes_elements(raw) if output.datatype == "BYTES" else list(
                struct.unpack(f"<{len(raw) // 4}i", raw)
            )
        elif output.datatype == "BYTES":
            outputs[output.name] = [value.decode() for value in output.contents.bytes_contents]
        else:
            outputs[output.name] = list(output.contents.int_contents)
    return outputs


def _bytes_elements(raw: bytes) -> list[str]:
    elements, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        elements.append(raw[offset + 4: offset + 4 + length].decode())
        offset += 4 + length
    return elements


def probe_grpc(address: str) -> dict[str, Any]:
    with grpc.insecure_channel(address) as channel:
        stub = GRPCInferenceServiceStub(channel)

        def as_dict(message: Any) -> dict[str, Any]:
            return json_format.MessageToDict(message)  # type: ignore[no-any-return]

        def infer(request: Any) -> dict[str, Any]:
            return grpc_outputs(stub.ModelInfer(request, timeout=30))

        words = pb.ModelInferRequest(model_name="simple_identity")
        words.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 4]).contents.bytes_contents.extend(
            word.encode() for word in WORDS
        )
        short = grpc_request(raw=True)
        short.inputs[0].shape[:] = [1, 8]
        short.raw_input_contents[0] = short.raw_input_contents[0][:32]
        return {
            "live": attempt(lambda: stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live),
            "ready": attempt(lambda: stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready),
            "model_ready": {
                m: attempt(lambda m=m: stub.ModelReady(pb.ModelReadyRequest(name=m), timeout=30).ready)
                for m in ("simple", "wrong_model_name")
            },
            "server_metadata": attempt(lambda: as_dict(stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=30))),
            "metadata": attempt(lambda: as_dict(stub.ModelMetadata(pb.ModelMetadataRequest(name="simple")))),
            "metadata_unknown": attempt(
                lambda: as_dict(stub.ModelMetadata(pb.ModelMetadataRequest(name="wrong_model_name")))
            ),
            "infer_typed": attempt(lambda: infer(grpc_request(raw=False, request_id="oip-typed"))),
            "infer_raw": attempt(lambda: infer(grpc_request(raw=True, request_id="oip-raw"))),
            "infer_no_id": attempt(lambda: infer(grpc_request(raw=True))),
            "infer_bytes": attempt(lambda: infer(words)),
            "infer_unknown": attempt(lambda: infer(grpc_request(raw=True, model="wrong_model_name"))),
            "infer_wrong_shape": attempt(lambda: infer(short)),
            "infer_wrong_datatype": attempt(lambda: infer(grpc_request(raw=False, datatype="FP32"))),
        }


if __name__ == "__main__":
    print(json.dumps({"rest": probe_rest(sys.argv[1]), "grpc": probe_grpc(sys.argv[2])}, default=str))
