"""tritonclient (http and grpc, from our own venv) against the real server, as Triton's example clients use it.

``clients/tritonclient_probe.py`` runs once per transport and reports what the client saw; each test checks one
operation on both transports, with the texts Triton's examples compare against.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.interop.conftest import InteropServer, RunClient

A = list(range(16))
SUMS = [[value + 3 for value in A]]
DIFFERENCES = [[value - 3 for value in A]]
WORDS_HEX = [[b"hello".hex(), "grüße".encode().hex(), "", b"a b".hex()]]
UNKNOWN = "Request for unknown model: 'wrong_model_name' is not found"


@pytest.fixture(scope="module", params=["http", "grpc"])
def seen(request: pytest.FixtureRequest, interop_server: InteropServer, run_client: RunClient) -> dict[str, Any]:
    """What tritonclient observed over one transport (``request.param``)."""
    address = interop_server.http_address if request.param == "http" else interop_server.grpc_address
    observed: dict[str, Any] = run_client("project", "tritonclient_probe.py", request.param, address)
    observed["protocol"] = request.param
    return observed


def test_health(seen: dict[str, Any]) -> None:
    assert seen["live"] is True and seen["ready"] is True


def test_model_ready(seen: dict[str, Any]) -> None:
    assert seen["model_ready"] == {"simple": True, "wrong_model_name": False}


def test_metadata(seen: dict[str, Any]) -> None:
    assert seen["server_name"] == "v2server"
    io = {"datatype": "INT32", "shape": [-1, 16]}
    assert seen["metadata"] == {
        "name": "simple",
        "inputs": [{"name": "INPUT0", **io}, {"name": "INPUT1", **io}],
        "outputs": [{"name": "OUTPUT0", **io}, {"name": "OUTPUT1", **io}],
    }


@pytest.mark.parametrize("case", ["infer_json", "infer_binary"])
def test_infer_simple(seen: dict[str, Any], case: str) -> None:
    """JSON and binary tensors over http; over gRPC both are raw contents. The request's id comes back."""
    result = seen[case]["value"]
    assert result["OUTPUT0"] == SUMS and result["OUTPUT1"] == DIFFERENCES and result["dtype"] == "int32"
    assert result["id"] == ("triton-json" if case == "infer_json" else "triton-binary")


def test_infer_generates_id(seen: dict[str, Any]) -> None:
    """Without a request id the server makes one up, and tritonclient sees it."""
    result = seen["infer_no_id"]["value"]
    assert result["OUTPUT0"] == SUMS and isinstance(result["id"], str) and result["id"]


@pytest.mark.parametrize("case", ["bytes_json", "bytes_binary"])
def test_infer_bytes(seen: dict[str, Any], case: str) -> None:
    """BYTES through ``simple_identity``; tritonclient.http hands JSON BYTES back as str, binary ones as bytes."""
    result = seen[case]["value"]
    assert result["OUTPUT0"] == WORDS_HEX
    expected_type = "str" if seen["protocol"] == "http" and case == "bytes_json" else "bytes"
    assert result["element_type"] == [expected_type]


@pytest.mark.parametrize("case", ["metadata_unknown", "infer_unknown"])
def test_unknown_model_error(seen: dict[str, Any], case: str) -> None:
    """The exact text Triton's ``simple_http_infer_client.py`` / ``simple_grpc_infer_client.py`` compare."""
    error = seen[case]
    assert error["error"] == "InferenceServerException" and error["message"] == UNKNOWN
    assert error["status"] == ("404" if seen["protocol"] == "http" else "StatusCode.NOT_FOUND")


def test_invalid_input_errors(seen: dict[str, Any]) -> None:
    bad_request = "400" if seen["protocol"] == "http" else "StatusCode.INVALID_ARGUMENT"
    shape, datatype = seen["infer_wrong_shape"], seen["infer_wrong_datatype"]
    assert shape["status"] == bad_request and datatype["status"] == bad_request
    assert shape["message"] == (
        "unexpected shape for input 'INPUT0' for model 'simple'. Expected [-1,16], got [1,8] (-1 is any size)"
    )
    assert datatype["message"] == "inference input 'INPUT0' data-type is 'FP32', but model 'simple' expects 'INT32'"
