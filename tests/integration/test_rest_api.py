"""The REST gateway driven by tritonclient.http (sync and aio) and by plain HTTP, as curl would."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

from tests.assets.test_models import NUMERIC_DATATYPES
from tests.conftest import RunningServer, http_call
from tests.integration.test_grpc_core import _sample


@pytest.fixture(scope="module")
def client(server: RunningServer) -> httpclient.InferenceServerClient:
    c = httpclient.InferenceServerClient(server.http_url)
    yield c
    c.close()


def _input(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _simple_inputs(binary: bool = True, batch: int = 1) -> tuple[np.ndarray, np.ndarray, list[httpclient.InferInput]]:
    a = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
    b = np.full((batch, 16), 3, dtype=np.int32)
    return a, b, [_input("INPUT0", a, "INT32", binary), _input("INPUT1", b, "INT32", binary)]




# -- tritonclient.http ---------------------------------------------------------------------------------------


def test_health_metadata_config_index(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("simple") and not client.is_model_ready("no_such_model")
    assert not client.is_model_ready("simple", "7")
    metadata = client.get_server_metadata()
    assert metadata["name"] == "v2server" and "binary_tensor_data" in metadata["extensions"]
    model = client.get_model_metadata("simple")
    assert model["versions"] == ["1"] and model["platform"] == "pytorch_libtorch"
    assert model["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]}
    config = client.get_model_config("simple")
    assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == [16]
    assert config["input"][0]["data_type"] == "TYPE_INT32"
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert index["simple"]["state"] == "READY" and index["simple"]["version"] == "1"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_simple_infer(client: httpclient.InferenceServerClient, binary: bool) -> None:
    a, b, inputs = _simple_inputs(binary, batch=2)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
               httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary)]
    result = client.infer("simple", inputs, outputs=outputs, request_id="r1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response["id"] == "r1" and response["model_name"] == "simple" and response["model_version"] == "1"


def test_mixed_binary_and_json_inputs_and_outputs(client: httpclient.InferenceServerClient) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [_input("INPUT0", a, "INT32", True), _input("INPUT1", a, "INT32", False)]
    outputs = [httpclient.InferRequestedOutput("OUTPUT1", binary_data=False),
               httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)]
    result = client.infer("simple", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * a)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), 0 * a)
    described = {o["name"]: o for o in result.get_response()["outputs"]}
    assert "data" in described["OUTPUT1"] and "data" not in described["OUTPUT0"]
    assert described["OUTPUT0"]["parameters"]["binary_data_size"] == 64


@pytest.mark.parametrize("datatype", [*NUMERIC_DATATYPES, "BYTES"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_datatype(client: httpclient.InferenceServerClient, datatype: str, binary: bool) -> None:
    if datatype == "BF16" and not binary:
        pytest.skip("tritonclient refuses BF16 as JSON")
    if datatype == "BYTES":
        data, model = np.array([["é", "", "xyz"]], dtype=object), "simple_identity"
    else:
        data, model = _sample(datatype), f"identity_{datatype.lower()}"
    result = client.infer(model, [_input("INPUT0", data, datatype, binary)],
                          outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)])
    output = result.as_numpy("OUTPUT0")
    if datatype == "BYTES":
        assert [x if isinstance(x, bytes) else x.encode() for x in output.reshape(-1)] == ["é".encode(), b"", b"xyz"]
    elif datatype == "BF16":
        np.testing.assert_array_equal(output.view(np.uint16), data.view(np.uint16))
    else:
        np.testing.assert_array_equal(output, data)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compression_both_ways(client: httpclient.InferenceServerClient, algorithm: str) -> None:
    a, b, inputs = _simple_inputs()
    result = client.infer("simple", inputs, request_compression_algorithm=algorithm,
                          response_compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


def test_output_subset(client: httpclient.InferenceServerClient) -> None:
    a, b, inputs = _simple_inputs()
    result = client.infer("simple", inputs, outputs=[httpclient.InferRequestedOutput("OUTPUT1")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


@pytest.mark.parametrize(
    ("model", "inputs", "status", "message"),
    [
        ("no_such_model", lambda: _simple_inputs()[2], "404", "Request for unknown model: 'no_such_model' is not found"),
        ("simple", lambda: _simple_inputs()[2][:1], "400", "INPUT1"),
        ("simple", lambda: [_input("INPUT0", np.zeros((1, 16), np.float32), "FP32"), _simple_inputs()[2][1]],
         "400", "inference input 'INPUT0' data-type is 'FP32', but model 'simple' expects 'INT32'"),
        ("simple", lambda: _simple_inputs(batch=9)[2], "400", "batch-size must be <= 8 for 'simple'"),
        ("failing", lambda: [_input("INPUT0", np.array([[-1.0]], np.float32), "FP32")], "500",
         "negative input is not allowed"),
        ("example_dict_doubler", lambda: [_input("d", np.array([b"[1]"], dtype=object), "BYTES")], "400",
         "Dict[str, int]"),
    ],
    ids=["unknown-model", "missing-input", "datatype", "batch", "model-raises", "dict-argument"],
)
def test_errors(client: httpclient.InferenceServerClient, model: str, inputs, status: str, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, inputs())
    assert info.value.status() == status
    assert message in info.value.message()


def test_unknown_version_is_404(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("simple", _simple_inputs()[2], model_version="9")
    assert info.value.status() == "404" and "version 9" in info.value.message()


async def test_aio_client(server: RunningServer) -> None:
    async with aiohttpclient.InferenceServerClient(server.http_url) as client:
        assert await client.is_server_live() and await client.is_server_ready()
        assert (await client.get_model_metadata("simple"))["name"] == "simple"
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        inputs = [aiohttpclient.InferInput("INPUT0", [1, 16], "INT32"), aiohttpclient.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(a, binary_data=False)
        result = await client.infer("simple", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * a)
        with pytest.raises(InferenceServerException, match="Request for unknown model"):
            await client.infer("nope", inputs)
        assert len(await client.get_model_repository_index()) >= 8


# -- plain HTTP, as curl sends it ------------------------------------------------------------------------------


SIMPLE_JSON = {
    "inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [[1] * 16]},
    ]
}


def test_plain_json_infer_without_content_type(server: RunningServer) -> None:
    status, headers, body = http_call(server, "POST", "/v2/models/simple/infer", json.dumps(SIMPLE_JSON).encode())
    assert status == 200 and headers["content-type"] == "application/json"
    response = json.loads(body)
    assert response["model_name"] == "simple"
    # KServe's InferenceResponse requires an id: one is made up when the request brings none, new each time.
    again = json.loads(http_call(server, "POST", "/v2/models/simple/infer", json.dumps(SIMPLE_JSON).encode())[2])
    assert response["id"] and again["id"] and response["id"] != again["id"]
    out = {o["name"]: o for o in response["outputs"]}
    assert out["OUTPUT0"] == {"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16], "data": [i + 1 for i in range(16)]}


def test_nested_data_and_versioned_path(server: RunningServer) -> None:
    body = {"inputs": [{"name": "INPUT0", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]}]}
    body["inputs"][0]["shape"] = [4]
    body["inputs"][0]["data"] = [[1, 2], [3, 4]]
    status, _, payload = http_call(server, "POST", "/v2/models/versioned/versions/2/infer", json.dumps(body).encode())
    assert status == 200, payload
    response = json.loads(payload)
    assert response["model_version"] == "2" and response["outputs"][0]["data"] == [2, 4, 6, 8]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "JSON"),
        (b"[1, 2]", "object"),
        (json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [1, 2]}]}).encode(),
         "INPUT0"),
        (json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": ["x"] * 16},
                                SIMPLE_JSON["inputs"][1]]}).encode(), "INPUT0"),
        (json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "NOPE", "data": [1] * 16}]}).encode(),
         "NOPE"),
        (json.dumps({"inputs": [{"name": "INPUT0", "shape": "1x16", "datatype": "INT32", "data": [1] * 16}]}).encode(),
         "shape"),
    ],
    ids=["bad-json", "not-object", "count-mismatch", "wrong-type", "unknown-datatype", "bad-shape"],
)
def test_malformed_json_is_400(server: RunningServer, body: bytes, message: str) -> None:
    status, headers, payload = http_call(server, "POST", "/v2/models/simple/infer", body)
    assert status == 400, payload
    assert headers["content-type"] == "application/json"
    assert message in json.loads(payload)["error"]
    assert http_call(server, "GET", "/v2/health/live")[0] == 200  # and the server carries on


def test_health_answers_triton_status_and_kserve_body(server: RunningServer) -> None:
    """tritonclient reads the status code; KServe's SDK reads ``{"live": ...}`` / ``{"ready": ...}``."""
    status, headers, body = http_call(server, "GET", "/v2/health/live")
    assert status == 200 and headers["content-type"] == "application/json" and json.loads(body) == {"live": True}
    status, _, body = http_call(server, "GET", "/v2/health/ready")
    assert status == 200 and json.loads(body) == {"ready": True}
    status, _, body = http_call(server, "GET", "/v2/models/simple/ready")
    assert status == 200 and json.loads(body) == {"ready": True}
    status, _, body = http_call(server, "GET", "/v2/models/no_such_model/ready")
    assert status == 400 and json.loads(body) == {"ready": False}


@pytest.mark.parametrize("path", ["/v2", "/v2/"])
def test_server_metadata_on_both_paths(server: RunningServer, path: str) -> None:
    status, _, body = http_call(server, "GET", path)
    assert status == 200 and json.loads(body)["name"] == "v2server"


def test_unknown_route_and_wrong_method(server: RunningServer) -> None:
    status, _, body = http_call(server, "GET", "/v3/nothing")
    assert status == 404 and "error" in json.loads(body)
    status, _, body = http_call(server, "GET", "/v2/models/simple/infer")
    assert status == 405 and "error" in json.loads(body)
    status, _, body = http_call(server, "GET", "/v2/models/simple/versions/x1")
    assert status == 400 and json.loads(body)["error"] == "model 'simple': version 'x1' is not a number"


def test_url_quoted_model_name(server: RunningServer) -> None:
    status, _, body = http_call(server, "GET", "/v2/models/simple%5Fint8")
    assert status == 200 and json.loads(body)["name"] == "simple_int8"


def test_empty_repository_index_body(server: RunningServer) -> None:
    status, _, body = http_call(server, "POST", "/v2/repository/index", b"")
    assert status == 200 and any(row["name"] == "simple" for row in json.loads(body))
    status, _, body = http_call(server, "POST", "/v2/repository/index", b'{"ready": true}')
    assert status == 200 and all(row["state"] == "READY" for row in json.loads(body))


def test_raw_binary_request(server: RunningServer) -> None:
    data = np.arange(6, dtype=np.float32)
    status, headers, body = http_call(server, "POST", "/v2/models/identity_fp32/infer", data.tobytes(),
                                  {"Inference-Header-Content-Length": "0"})
    assert status == 200, body
    length = int(headers["inference-header-content-length"])
    header = json.loads(body[:length])
    assert header["outputs"][0]["shape"] == [1, 6]
    np.testing.assert_array_equal(np.frombuffer(body[length:], np.float32), data)


def test_binary_header_longer_than_body(server: RunningServer) -> None:
    status, _, body = http_call(server, "POST", "/v2/models/simple/infer", b"{}", {"Inference-Header-Content-Length": "99"})
    assert status == 400 and "error" in json.loads(body)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_plain_http_compression(server: RunningServer, encoding: str) -> None:
    raw = json.dumps(SIMPLE_JSON).encode()
    packed = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    status, headers, body = http_call(server, "POST", "/v2/models/simple/infer", packed,
                                      {"Content-Encoding": encoding, "Accept-Encoding": encoding})
    # the request inflates; the answer, a few hundred bytes, is not worth compressing and goes as it is
    assert status == 200 and "content-encoding" not in headers
    assert json.loads(body)["outputs"][0]["data"][0] == 1


def _identity_fp32(values: np.ndarray, binary_output: bool) -> bytes:
    return json.dumps({
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, len(values)], "data": values.tolist()}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": binary_output}}],
    }).encode()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_large_json_answer_is_compressed(server: RunningServer, encoding: str) -> None:
    values = np.random.default_rng(1).random(100_000).astype(np.float32)  # a 2 MB body: parsed off the loop
    status, headers, body = http_call(server, "POST", "/v2/models/identity_fp32/infer",
                                      _identity_fp32(values, False), {"Accept-Encoding": f"{encoding}, br"})
    assert status == 200 and headers["content-encoding"] == encoding
    plain = gzip.decompress(body) if encoding == "gzip" else zlib.decompress(body)
    assert len(body) < len(plain) * 0.7
    np.testing.assert_array_equal(np.array(json.loads(plain)["outputs"][0]["data"], np.float32), values)


def test_an_incompressible_binary_answer_is_not_compressed(server: RunningServer) -> None:
    values = np.random.default_rng(2).random(100_000).astype(np.float32)
    status, headers, body = http_call(server, "POST", "/v2/models/identity_fp32/infer",
                                      _identity_fp32(values, True), {"Accept-Encoding": "gzip, deflate"})
    assert status == 200 and "content-encoding" not in headers
    length = int(headers["inference-header-content-length"])
    np.testing.assert_array_equal(np.frombuffer(body[length:], np.float32), values)


def test_a_gzip_bomb_is_413_and_the_server_answers(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.conftest import BUNDLED_REPOSITORY, loopback_settings

    limit = 64 * 1024
    running = RunningServer(loopback_settings(BUNDLED_REPOSITORY, allow_grpc=False, http_max_body_size=limit,
                                              model_control_mode="explicit", load_models=("simple",)))
    try:
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)
        bomb = b"".join([*(packer.compress(bytes(1 << 20)) for _ in range(64)), packer.flush()])  # 64 MiB
        assert len(bomb) < limit
        status, _, body = http_call(running, "POST", "/v2/models/simple/infer", bomb, {"Content-Encoding": "gzip"})
        assert status == 413
        assert json.loads(body)["error"] == (
            f"request body inflates past the limit of {limit} bytes (--http-max-body-size)"
        )
        assert http_call(running, "GET", "/v2/health/live")[0] == 200
        status, _, _ = http_call(running, "POST", "/v2/models/simple/infer", gzip.compress(json.dumps(SIMPLE_JSON).encode()),
                                 {"Content-Encoding": "gzip"})
        assert status == 200
    finally:
        running.stop()


def test_unknown_content_type_is_400(server: RunningServer) -> None:
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "BYTES", "data": ["a", "b", "c"],
                        "parameters": {"content_type": "klingon"}}]}
    status, _, payload = http_call(server, "POST", "/v2/models/simple_identity/infer", json.dumps(body).encode())
    assert status == 400 and "klingon" in json.loads(payload)["error"]


def test_base64_content_type_both_ways(server: RunningServer) -> None:
    import base64

    # BYTES reach TorchScript as List[str], so the bundled identity model needs UTF-8 elements.
    values = ["héllo wörld".encode(), b"plain"]
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "BYTES",
                        "data": [base64.b64encode(v).decode() for v in values],
                        "parameters": {"content_type": "base64"}}],
            "outputs": [{"name": "OUTPUT0", "parameters": {"content_type": "base64"}}]}
    status, _, payload = http_call(server, "POST", "/v2/models/simple_identity/infer", json.dumps(body).encode())
    assert status == 200, payload
    output = json.loads(payload)["outputs"][0]
    assert output["parameters"]["content_type"] == "base64"
    assert [base64.b64decode(v) for v in output["data"]] == values


def test_request_parameters_pass_through(server: RunningServer) -> None:
    body = dict(SIMPLE_JSON, parameters={"custom": "x", "n": 3, "f": 0.5, "flag": True}, id="abc")
    status, _, payload = http_call(server, "POST", "/v2/models/simple/infer", json.dumps(body).encode())
    assert status == 200 and json.loads(payload)["id"] == "abc"


def test_body_size_limit_is_413(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.conftest import BUNDLED_REPOSITORY, loopback_settings

    running = RunningServer(loopback_settings(BUNDLED_REPOSITORY, allow_grpc=False, http_max_body_size=1024,
                                              model_control_mode="explicit", load_models=("simple",)))
    try:
        status, _, body = http_call(running, "POST", "/v2/models/simple/infer", b"x" * 4096)
        assert status == 413 and "1024" in json.loads(body)["error"]
        status, _, body = http_call(running, "POST", "/v2/models/simple/infer", json.dumps(SIMPLE_JSON).encode())
        assert status == 200
    finally:
        running.stop()
