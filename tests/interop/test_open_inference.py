"""The Open Inference Protocol's generated clients: ``open-inference-openapi`` (REST) and ``open-inference-grpc``.

``clients/oip_probe.py`` runs once in ``.venv-interop/oip``. The openapi client has every V2 REST call but no
binary extension (JSON only) and sends integers as floats (``[0.0, 1.0, ...]``), which we accept for integer
datatypes when they are integral; its success calls return ``None`` and its failures raise ``ApiError``
(``BadRequestError`` for 400) with the server's JSON body. open-inference-grpc is bare stubs.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.interop.conftest import InteropServer, RunClient

SUMS = [value + 3 for value in range(16)]
DIFFERENCES = [value - 3 for value in range(16)]
WORDS = ["hello", "grüße", "", "a b"]
UNKNOWN = "Request for unknown model: 'wrong_model_name' is not found"
WRONG_SHAPE = "unexpected shape for input 'INPUT0' for model 'simple'. Expected [-1,16], got [1,8] (-1 is any size)"
WRONG_DATATYPE = "inference input 'INPUT0' data-type is 'FP32', but model 'simple' expects 'INT32'"
SIMPLE_IO = {
    "inputs": [{"name": "INPUT0", "datatype": "INT32"}, {"name": "INPUT1", "datatype": "INT32"}],
    "outputs": [{"name": "OUTPUT0", "datatype": "INT32"}, {"name": "OUTPUT1", "datatype": "INT32"}],
}


@pytest.fixture(scope="module")
def seen(interop_server: InteropServer, run_client: RunClient) -> dict[str, Any]:
    observed: dict[str, Any] = run_client("oip", "oip_probe.py", interop_server.http_url, interop_server.grpc_address)
    return observed


def _io(metadata: dict[str, Any], shape: list[Any]) -> None:
    for kind in ("inputs", "outputs"):
        assert metadata[kind] == [{**item, "shape": shape} for item in SIMPLE_IO[kind]]


def test_openapi_health(rest: dict[str, Any]) -> None:
    """``check_server_liveness`` / ``check_server_readiness`` return None on 2xx and raise otherwise."""
    assert rest["live"] == {"value": None} and rest["ready"] == {"value": None}


def test_openapi_model_ready(rest: dict[str, Any]) -> None:
    """Not ready is Triton's 400 with ``{"ready": false}``: the client raises its generic ``ApiError`` (it only
    names 404 and 503), which is the protocol's "4xx means not ready"."""
    assert rest["model_ready"]["simple"] == {"value": None}
    assert rest["model_ready"]["wrong_model_name"] == {"error": "ApiError", "status": 400, "body": {"ready": False}}


def test_openapi_metadata(rest: dict[str, Any]) -> None:
    assert rest["server_metadata"]["value"]["name"] == "v2server"
    metadata = rest["metadata"]["value"]
    assert metadata["name"] == "simple" and metadata["versions"] == ["1"] and metadata["platform"]
    _io(metadata, [-1, 16])


def test_openapi_infer_integers_as_floats(rest: dict[str, Any]) -> None:
    """The client serialises INT32 data as floats; the server takes integral floats and answers integers, which
    the client parses back into floats (its ``TensorData`` has no int)."""
    sent = rest["sent_body"]["inputs"][0]["data"]
    assert sent[:3] == [0.0, 1.0, 2.0] and all(isinstance(value, float) for value in sent)
    result = rest["infer"]["value"]
    assert result["id"] == "oip-json"
    assert result["outputs"]["OUTPUT0"]["data"] == SUMS and result["outputs"]["OUTPUT1"]["data"] == DIFFERENCES
    assert all(isinstance(value, float) for value in result["outputs"]["OUTPUT0"]["data"])
    assert result["outputs"]["OUTPUT0"]["datatype"] == "INT32" and result["outputs"]["OUTPUT0"]["shape"] == [1, 16]


def test_openapi_infer_bytes(rest: dict[str, Any]) -> None:
    assert rest["infer_bytes"]["value"]["outputs"]["OUTPUT0"]["data"] == WORDS


def test_openapi_request_id(rest: dict[str, Any]) -> None:
    """Without an id (the client sends none) the server makes one up."""
    generated = rest["infer_no_id"]["value"]["id"]
    assert isinstance(generated, str) and generated and generated != "oip-json"


def test_openapi_errors(rest: dict[str, Any]) -> None:
    """404s surface as ``ApiError``, 400s as ``BadRequestError``; ``body`` is the server's ``{"error": ...}``."""
    assert rest["metadata_unknown"] == {"error": "ApiError", "status": 404, "body": {"error": UNKNOWN}}
    assert rest["infer_unknown"] == {"error": "ApiError", "status": 404, "body": {"error": UNKNOWN}}
    assert rest["infer_wrong_shape"] == {"error": "BadRequestError", "status": 400, "body": {"error": WRONG_SHAPE}}
    assert rest["infer_wrong_datatype"] == {
        "error": "BadRequestError", "status": 400, "body": {"error": WRONG_DATATYPE},
    }


def test_grpc_health(grpc: dict[str, Any]) -> None:
    assert grpc["live"] == {"value": True} and grpc["ready"] == {"value": True}


def test_grpc_model_ready(grpc: dict[str, Any]) -> None:
    assert grpc["model_ready"] == {"simple": {"value": True}, "wrong_model_name": {"value": False}}


def test_grpc_metadata(grpc: dict[str, Any]) -> None:
    """Protobuf JSON renders the int64 dims as strings."""
    assert grpc["server_metadata"]["value"]["name"] == "v2server"
    metadata = grpc["metadata"]["value"]
    assert metadata["name"] == "simple" and metadata["versions"] == ["1"]
    _io(metadata, ["-1", "16"])


@pytest.mark.parametrize("case", ["infer_typed", "infer_raw"])
def test_grpc_infer(grpc: dict[str, Any], case: str) -> None:
    """``int_contents`` or ``raw_input_contents`` in; outputs come back raw either way (as Triton answers)."""
    result = grpc[case]["value"]
    assert result["OUTPUT0"] == SUMS and result["OUTPUT1"] == DIFFERENCES and result["raw"] is True
    assert result["id"] == ("oip-typed" if case == "infer_typed" else "oip-raw")


def test_grpc_infer_bytes(grpc: dict[str, Any]) -> None:
    assert grpc["infer_bytes"]["value"]["OUTPUT0"] == WORDS


def test_grpc_request_id(grpc: dict[str, Any]) -> None:
    generated = grpc["infer_no_id"]["value"]["id"]
    assert isinstance(generated, str) and generated and generated not in ("oip-typed", "oip-raw")


def test_grpc_errors(grpc: dict[str, Any]) -> None:
    error = "_InactiveRpcError"
    assert grpc["metadata_unknown"] == {"error": error, "code": "NOT_FOUND", "message": UNKNOWN}
    assert grpc["infer_unknown"] == {"error": error, "code": "NOT_FOUND", "message": UNKNOWN}
    assert grpc["infer_wrong_shape"] == {"error": error, "code": "INVALID_ARGUMENT", "message": WRONG_SHAPE}
    assert grpc["infer_wrong_datatype"] == {"error": error, "code": "INVALID_ARGUMENT", "message": WRONG_DATATYPE}
