"""KServe's Python SDK 0.21 (``InferenceRESTClient`` with ``RESTConfig(protocol="v2")``, ``InferenceGRPCClient``).

``clients/kserve_probe.py`` runs once in ``.venv-interop/kserve`` and reports what the SDK saw. The SDK has no
metadata call on either client; over gRPC its generated stub (shipped in ``kserve.protocol.grpc``) does it.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.interop.conftest import InteropServer, RunClient

SUMS = [[value + 3 for value in range(16)]]
DIFFERENCES = [[value - 3 for value in range(16)]]
WORDS_HEX = [[b"hello".hex(), "grüße".encode().hex(), "", b"a b".hex()]]
UNKNOWN = "Request for unknown model: 'wrong_model_name' is not found"
WRONG_SHAPE = "unexpected shape for input 'INPUT0' for model 'simple'. Expected [-1,16], got [1,8] (-1 is any size)"
WRONG_DATATYPE = "inference input 'INPUT0' data-type is 'FP32', but model 'simple' expects 'INT32'"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def seen(interop_server: InteropServer, run_client: RunClient) -> dict[str, Any]:
    observed: dict[str, Any] = run_client(
        "kserve", "kserve_probe.py", interop_server.http_url, interop_server.grpc_address
    )
    return observed


def _assert_simple(result: dict[str, Any], request_id: str) -> None:
    assert result["OUTPUT0"] == SUMS and result["OUTPUT1"] == DIFFERENCES and result["dtype"] == "int32"
    assert result["id"] == request_id


def test_rest_health(rest: dict[str, Any]) -> None:
    """``is_server_live`` / ``is_server_ready`` read ``{"live": true}`` / ``{"ready": true}`` from the body."""
    assert rest["live"] is True and rest["ready"] is True


def test_grpc_health(grpc: dict[str, Any]) -> None:
    assert grpc["live"] is True and grpc["ready"] is True


def test_rest_model_ready(rest: dict[str, Any]) -> None:
    """The REST SDK maps any non-2xx answer to False: our 400 for an unknown model reads as not ready."""
    assert rest["model_ready"] == {"simple": True, "wrong_model_name": False}


def test_grpc_model_ready(grpc: dict[str, Any]) -> None:
    """Triton answers ``ready: false`` (not NOT_FOUND) for an unknown model, and so do we."""
    assert grpc["model_ready"] == {"simple": {"value": True}, "wrong_model_name": {"value": False}}


def test_grpc_metadata(grpc: dict[str, Any]) -> None:
    """Through the SDK's generated stub (protobuf JSON renders int64 dims as strings)."""
    assert grpc["server_metadata"]["value"]["name"] == "v2server"
    metadata = grpc["metadata"]["value"]
    io = {"datatype": "INT32", "shape": ["-1", "16"]}
    assert metadata["name"] == "simple" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "INPUT0", **io}, {"name": "INPUT1", **io}]
    assert metadata["outputs"] == [{"name": "OUTPUT0", **io}, {"name": "OUTPUT1", **io}]
    assert grpc["metadata_unknown"] == {"error": "AioRpcError", "message": UNKNOWN, "code": "NOT_FOUND"}


def test_rest_infer_json(rest: dict[str, Any]) -> None:
    """``binary_data=False`` on inputs and outputs: a plain JSON body each way."""
    result = rest["infer_json"]["value"]
    _assert_simple(result, "kserve-json")
    assert result["binary_response"] is False


def test_rest_infer_binary(rest: dict[str, Any]) -> None:
    """Binary inputs (``Inference-Header-Content-Length``, octet-stream) and binary outputs on request."""
    result = rest["infer_binary"]["value"]
    _assert_simple(result, "kserve-bin")
    assert result["binary_response"] is True


def test_grpc_infer_typed_contents(grpc: dict[str, Any]) -> None:
    """``binary_data=False`` over gRPC: the SDK fills ``contents.int_contents``."""
    _assert_simple(grpc["infer_json"]["value"], "kserve-json")


def test_grpc_infer_raw(grpc: dict[str, Any]) -> None:
    """``binary_data=True`` over gRPC: ``raw_input_contents``."""
    _assert_simple(grpc["infer_binary"]["value"], "kserve-bin")


@pytest.mark.parametrize("case", ["bytes_json", "bytes_binary"])
def test_rest_infer_bytes(rest: dict[str, Any], case: str) -> None:
    """BYTES through ``simple_identity``; the SDK decodes BYTES outputs to str over REST either way."""
    result = rest[case]["value"]
    assert result["OUTPUT0"] == WORDS_HEX and result["element_type"] == ["str"]
    assert result["binary_response"] is (case == "bytes_binary")


@pytest.mark.parametrize("case", ["bytes_json", "bytes_binary"])
def test_grpc_infer_bytes(grpc: dict[str, Any], case: str) -> None:
    result = grpc[case]["value"]
    assert result["OUTPUT0"] == WORDS_HEX and result["element_type"] == ["bytes"]


def test_rest_request_id(rest: dict[str, Any]) -> None:
    """Without an id the REST SDK sends a uuid4 of its own; the server echoes it."""
    assert UUID.fullmatch(rest["infer_no_id"]["value"]["id"])


def test_grpc_request_id(grpc: dict[str, Any]) -> None:
    """Without an id the gRPC SDK sends none; the server makes one up."""
    generated = grpc["infer_no_id"]["value"]["id"]
    assert isinstance(generated, str) and generated and generated != grpc["infer_binary"]["value"]["id"]


def test_rest_errors(rest: dict[str, Any]) -> None:
    """``httpx.HTTPStatusError`` whose text starts with the server's ``error`` (read from a JSON body)."""
    for case, status, message in (
        ("infer_unknown", 404, UNKNOWN), ("infer_wrong_shape", 400, WRONG_SHAPE),
        ("infer_wrong_datatype", 400, WRONG_DATATYPE),
    ):
        error = rest[case]
        assert error["error"] == "HTTPStatusError" and error["code"] == status, case
        assert error["message"].startswith(message + ", "), error


def test_grpc_errors(grpc: dict[str, Any]) -> None:
    """The SDK re-raises grpc.aio's ``AioRpcError``: the server's code and message as they are."""
    assert grpc["infer_unknown"] == {"error": "AioRpcError", "message": UNKNOWN, "code": "NOT_FOUND"}
    assert grpc["infer_wrong_shape"] == {"error": "AioRpcError", "message": WRONG_SHAPE, "code": "INVALID_ARGUMENT"}
    assert grpc["infer_wrong_datatype"] == {
        "error": "AioRpcError", "message": WRONG_DATATYPE, "code": "INVALID_ARGUMENT",
    }
