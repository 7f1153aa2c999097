"""The gRPC core driven by tritonclient.grpc (sync), as a Triton user drives Triton."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.assets.test_models import NUMERIC_DATATYPES
from tests.conftest import RunningServer

try:
    from ml_dtypes import bfloat16
except ImportError:  # pragma: no cover - tritonclient depends on ml_dtypes
    bfloat16 = None


@pytest.fixture(scope="module")
def client(server: RunningServer) -> grpcclient.InferenceServerClient:
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


def _input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _simple_inputs(batch: int = 1) -> tuple[np.ndarray, np.ndarray, list[grpcclient.InferInput]]:
    a = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
    b = np.full((batch, 16), 3, dtype=np.int32)
    return a, b, [_input("INPUT0", a, "INT32"), _input("INPUT1", b, "INT32")]


def _error(call) -> InferenceServerException:  # type: ignore[no-untyped-def]
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


# -- health and metadata -----------------------------------------------------------------------------------


def test_health(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert client.is_model_ready("simple", "1")
    assert not client.is_model_ready("simple", "7")
    assert not client.is_model_ready("no_such_model")


def test_server_metadata(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "v2server"
    assert metadata["version"]
    assert "model_configuration" in metadata["extensions"]
    # Only what is really implemented is advertised.
    assert "binary_tensor_data" in metadata["extensions"]  # served by the REST gateway beside gRPC


def test_model_metadata_has_batch_dimension(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("simple", as_json=True)
    assert metadata["name"] == "simple"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "pytorch_libtorch"
    assert metadata["inputs"] == [
        {"name": "INPUT0", "datatype": "INT32", "shape": ["-1", "16"]},
        {"name": "INPUT1", "datatype": "INT32", "shape": ["-1", "16"]},
    ]
    assert [o["name"] for o in metadata["outputs"]] == ["OUTPUT0", "OUTPUT1"]


def test_model_metadata_without_batching(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("example_doubler", as_json=True)
    assert metadata["inputs"] == [{"name": "foo", "datatype": "INT64", "shape": ["1"]}]


def test_model_metadata_unknown_model(client: grpcclient.InferenceServerClient) -> None:
    error = _error(lambda: client.get_model_metadata("no_such_model"))
    assert error.status() == "StatusCode.NOT_FOUND"
    assert "no_such_model" in error.message()


def test_model_config_is_completed(client: grpcclient.InferenceServerClient) -> None:
    config = client.get_model_config("mlp", as_json=True)["config"]
    assert config["name"] == "mlp"
    assert config["max_batch_size"] == 64
    assert config["backend"] == "pytorch"
    assert config["default_model_filename"] == "model.pt"
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    assert config["dynamic_batching"]["preferred_batch_size"] == [16, 32]
    group = config["instance_group"][0]
    assert group["name"] == "mlp_0" and group["count"] == 1
    assert group["kind"] in ("KIND_CPU", "KIND_GPU")  # KIND_AUTO is resolved to what was used


def test_repository_index(client: grpcclient.InferenceServerClient) -> None:
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["simple"].state == "READY" and index["simple"].version == "1"
    bundled = {"simple", "simple_int8", "simple_string", "simple_identity", "mlp",
               "example_doubler", "example_dict_doubler", "example_adder"}
    assert bundled <= set(index)


# -- inference ---------------------------------------------------------------------------------------------


def test_simple_add_sub(client: grpcclient.InferenceServerClient) -> None:
    a, b, inputs = _simple_inputs(batch=3)
    result = client.infer("simple", inputs, request_id="req-1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response.id == "req-1"
    assert response.model_name == "simple" and response.model_version == "1"


def test_requested_outputs_subset_and_order(client: grpcclient.InferenceServerClient) -> None:
    a, b, inputs = _simple_inputs()
    outputs = [grpcclient.InferRequestedOutput("OUTPUT1"), grpcclient.InferRequestedOutput("OUTPUT0")]
    result = client.infer("simple", inputs, outputs=outputs)
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["OUTPUT1", "OUTPUT0"]
    assert len(response.raw_output_contents) == 2
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    only = client.infer("simple", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT1")]).get_response()
    assert [o.name for o in only.outputs] == ["OUTPUT1"] and len(only.raw_output_contents) == 1


def test_simple_int8_wraps_like_int8(client: grpcclient.InferenceServerClient) -> None:
    a = np.full((1, 16), 100, dtype=np.int8)
    b = np.full((1, 16), 50, dtype=np.int8)
    result = client.infer("simple_int8", [_input("INPUT0", a, "INT8"), _input("INPUT1", b, "INT8")])
    assert result.as_numpy("OUTPUT0").dtype == np.int8
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_simple_string(client: grpcclient.InferenceServerClient) -> None:
    a = np.array([[str(i).encode() for i in range(16)]] * 2, dtype=object)
    b = np.array([[b"2"] * 16] * 2, dtype=object)
    result = client.infer("simple_string", [_input("INPUT0", a, "BYTES"), _input("INPUT1", b, "BYTES")])
    assert result.as_numpy("OUTPUT0").shape == (2, 16)
    assert [int(x) for x in result.as_numpy("OUTPUT0")[1]] == [i + 2 for i in range(16)]
    assert [int(x) for x in result.as_numpy("OUTPUT1")[0]] == [i - 2 for i in range(16)]


def test_bytes_identity_with_empty_and_binary_elements(client: grpcclient.InferenceServerClient) -> None:
    data = np.array([["", "héllo", "a" * 1000]], dtype=object)
    result = client.infer("simple_identity", [_input("INPUT0", data, "BYTES")])
    assert result.as_numpy("OUTPUT0").tolist() == [[b"", "héllo".encode(), b"a" * 1000]]


def _sample(datatype: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if datatype == "BOOL":
        return rng.integers(0, 2, (2, 5)).astype(bool)
    if datatype == "BF16":
        return rng.standard_normal((2, 5)).astype(bfloat16)
    dtype = np.dtype({"FP16": "float16", "FP32": "float32", "FP64": "float64"}.get(datatype, datatype.lower()))
    if dtype.kind == "f":
        return rng.standard_normal((2, 5)).astype(dtype)
    info = np.iinfo(dtype)
    return np.array([[info.min, info.max, 0, 1, 7], [2, 3, 4, 5, 6]], dtype=dtype)


@pytest.mark.parametrize("datatype", NUMERIC_DATATYPES)
def test_every_datatype_round_trips(client: grpcclient.InferenceServerClient, datatype: str) -> None:
    data = _sample(datatype)
    result = client.infer(f"identity_{datatype.lower()}", [_input("INPUT0", data, datatype)])
    output = result.as_numpy("OUTPUT0")
    assert result.get_response().outputs[0].datatype == datatype
    assert output.shape == data.shape
    np.testing.assert_array_equal(output.view(np.uint16) if datatype == "BF16" else output,
                                  data.view(np.uint16) if datatype == "BF16" else data)


def test_typed_contents_are_accepted(client: grpcclient.InferenceServerClient) -> None:
    """Triton's explicit-content examples send int_contents instead of raw bytes."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="simple")
    for name, values in (("INPUT0", list(range(16))), ("INPUT1", [1] * 16)):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        tensor.contents.int_contents.extend(values)
    response = client._client_stub.ModelInfer(request)
    assert np.frombuffer(response.raw_output_contents[0], np.int32).tolist() == [i + 1 for i in range(16)]


def test_large_message_beyond_grpc_default_limit(client: grpcclient.InferenceServerClient) -> None:
    data = np.arange(3 * 1024 * 1024, dtype=np.float32).reshape(1, -1)  # 12 MiB each way
    result = client.infer("identity_fp32", [_input("INPUT0", data, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def test_naming_rules(client: grpcclient.InferenceServerClient) -> None:
    x = np.array([[5, 6, 7]], dtype=np.int32)
    y = np.array([[1, 2, 3]], dtype=np.int32)
    by_index = client.infer("positional", [_input("INPUT__0", x, "INT32"), _input("INPUT__1", y, "INT32")])
    np.testing.assert_array_equal(by_index.as_numpy("OUTPUT__0"), x - y)
    np.testing.assert_array_equal(by_index.as_numpy("OUTPUT__1"), x + y)
    dict_in = client.infer("dict_input", [_input("x", x, "INT32"), _input("y", y, "INT32")])
    np.testing.assert_array_equal(dict_in.as_numpy("OUTPUT__0"), x - y)
    dict_out = client.infer("dict_output", [_input("a", x, "INT32"), _input("b", y, "INT32")])
    np.testing.assert_array_equal(dict_out.as_numpy("sum"), x + y)
    np.testing.assert_array_equal(dict_out.as_numpy("product"), x * y)


def test_reshape(client: grpcclient.InferenceServerClient) -> None:
    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = client.infer("reshaping", [_input("INPUT0", data, "FP32")])
    expected = data.reshape(2, 2, 2).transpose(0, 2, 1).reshape(2, 4)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), expected)


def test_scalar_function_models(client: grpcclient.InferenceServerClient) -> None:
    one = lambda name, v: _input(name, np.array([v], dtype=np.int64), "INT64")  # noqa: E731
    assert client.infer("example_doubler", [one("foo", 10)]).as_numpy("OUTPUT__0").tolist() == [20]
    adder = client.infer("example_adder", [one("a", 3), one("b", 4), one("c", 5)])
    assert adder.as_numpy("OUTPUT__0").tolist() == [12]


def test_list_of_strings_input(client: grpcclient.InferenceServerClient) -> None:
    data = np.array(["a", "bcd", ""], dtype=object)
    assert client.infer("string_length", [_input("INPUT0", data, "BYTES")]).as_numpy("OUTPUT0").tolist() == [1, 3, 0]


def test_versions(client: grpcclient.InferenceServerClient) -> None:
    data = np.array([1, 2, 3, 4], dtype=np.int32)
    for version in ("1", "2", "3"):
        result = client.infer("versioned", [_input("INPUT0", data, "INT32")], model_version=version)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data * int(version))
        assert result.get_response().model_version == version
    latest = client.infer("versioned", [_input("INPUT0", data, "INT32")])
    assert latest.get_response().model_version == "3"
    assert client.get_model_metadata("versioned", as_json=True)["versions"] == ["1", "2", "3"]
    assert client.get_model_metadata("latest_two", as_json=True)["versions"] == ["2", "3"]
    error = _error(lambda: client.infer("latest_two", [_input("INPUT0", data, "INT32")], model_version="1"))
    assert error.status() == "StatusCode.NOT_FOUND" and "version 1" in error.message()


# -- errors ------------------------------------------------------------------------------------------------


def _request_error(client: grpcclient.InferenceServerClient, model: str, inputs: list, **kwargs) -> InferenceServerException:  # type: ignore[type-arg]
    return _error(lambda: client.infer(model, inputs, **kwargs))


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([_input("INPUT0", np.zeros((1, 16), np.int32), "INT32")], "INPUT1"),
        ([_input("INPUT0", np.zeros((1, 16), np.float32), "FP32"), _input("INPUT1", np.zeros((1, 16), np.int32), "INT32")],
         "inference input 'INPUT0' data-type is 'FP32', but model 'simple' expects 'INT32'"),
        ([_input("INPUT0", np.zeros((1, 15), np.int32), "INT32"), _input("INPUT1", np.zeros((1, 15), np.int32), "INT32")],
         "unexpected shape for input 'INPUT0' for model 'simple'. Expected [-1,16], got [1,15]"),
        ([_input("INPUT0", np.zeros((9, 16), np.int32), "INT32"), _input("INPUT1", np.zeros((9, 16), np.int32), "INT32")],
         "batch-size must be <= 8 for 'simple'"),
        ([_input("INPUT0", np.zeros((1, 16), np.int32), "INT32"), _input("INPUT1", np.zeros((2, 16), np.int32), "INT32")],
         "batch size"),
        ([_input("INPUT0", np.zeros((1, 16), np.int32), "INT32"), _input("INPUT1", np.zeros((1, 16), np.int32), "INT32"),
          _input("EXTRA", np.zeros((1, 16), np.int32), "INT32")], "unexpected inference input 'EXTRA'"),
        ([_input("INPUT0", np.zeros((1, 16), np.int32), "INT32"), _input("INPUT0", np.zeros((1, 16), np.int32), "INT32")],
         "input 'INPUT0' is given more than once"),
    ],
    ids=["missing", "datatype", "shape", "batch-too-big", "batch-mismatch", "unknown", "duplicate"],
)
def test_invalid_inputs(client: grpcclient.InferenceServerClient, inputs: list, message: str) -> None:  # type: ignore[type-arg]
    error = _request_error(client, "simple", inputs)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in error.message()


def _raw_request(model: str, inputs: list[tuple[str, str, list[int]]], raw: list[bytes]):  # type: ignore[no-untyped-def]
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model, raw_input_contents=raw)
    for name, datatype, shape in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    return request


@pytest.mark.parametrize(
    ("model", "inputs", "raw", "message"),
    [
        ("identity_int32", [("INPUT0", "INT32", [1, 16])], [b"\0" * 60], "expected 64 bytes for shape [1, 16] of INT32, got 60"),
        ("identity_int32", [("INPUT0", "INT32", [1, 16])], [], "expected 16 values in int_contents"),
        ("identity_int32", [("INPUT0", "INT32", [1, 2])], [b"\0" * 8, b"\0" * 8], "2 entries for 1 inputs"),
        ("simple_identity", [("INPUT0", "BYTES", [1, 2])], [b"\x03\0\0\0abc"], "expected 2 BYTES elements"),
        ("simple_identity", [("INPUT0", "BYTES", [1, 1])], [b"\x09\0\0\0abc"], "claims 9 bytes"),
    ],
    ids=["short", "no-contents", "extra-raw", "bytes-count", "bytes-truncated"],
)
def test_malformed_raw_contents(
    client: grpcclient.InferenceServerClient, model: str, inputs: list, raw: list[bytes], message: str  # type: ignore[type-arg]
) -> None:
    import grpc

    with pytest.raises(grpc.RpcError) as info:
        client._client_stub.ModelInfer(_raw_request(model, inputs, raw))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


@pytest.mark.parametrize(
    "items",
    [[b""] * 300_000, [("é" * (i % 5)).encode() + b"%d" % i for i in range(100_000)]],
    ids=["300k-empty", "100k-varied"],
)
def test_many_bytes_elements_round_trip(client: grpcclient.InferenceServerClient, items: list[bytes]) -> None:
    """Past the size where the core decodes and encodes in a worker thread, element for element."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    result = client.infer("simple_identity", [_input("INPUT0", array.reshape(1, -1), "BYTES")])
    assert result.as_numpy("OUTPUT0").reshape(-1).tolist() == items


_ONE_MORE = (
    "input 'INPUT0': expected 100001 BYTES elements for its shape, got at most 100000 (400000 bytes, "
    "and each element has a 4-byte length prefix)"
)


@pytest.mark.parametrize(
    ("count", "message"),
    [
        (100_001, _ONE_MORE),
        (99_999, "input 'INPUT0': expected 99999 BYTES elements for its shape, got 100000"),
    ],
    ids=["one-more", "one-fewer"],
)
def test_a_large_bytes_tensor_off_by_one_is_refused(
    client: grpcclient.InferenceServerClient, count: int, message: str
) -> None:
    import grpc

    request = _raw_request("simple_identity", [("INPUT0", "BYTES", [1, count])], [b"\0" * 400_000])
    with pytest.raises(grpc.RpcError) as info:
        client._client_stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == message


def test_typed_and_raw_contents_do_not_mix(client: grpcclient.InferenceServerClient) -> None:
    import grpc

    request = _raw_request("simple", [("INPUT0", "INT32", [1, 16]), ("INPUT1", "INT32", [1, 16])], [b"\0" * 64])
    request.inputs[1].contents.int_contents.extend([0] * 16)
    with pytest.raises(grpc.RpcError) as info:
        client._client_stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot be mixed" in info.value.details()


def test_unknown_output(client: grpcclient.InferenceServerClient) -> None:
    _, _, inputs = _simple_inputs()
    error = _request_error(client, "simple", inputs, outputs=[grpcclient.InferRequestedOutput("NOPE")])
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "NOPE" in error.message()


def test_unknown_model_and_version(client: grpcclient.InferenceServerClient) -> None:
    _, _, inputs = _simple_inputs()
    missing = _request_error(client, "no_such_model", inputs)
    assert missing.status() == "StatusCode.NOT_FOUND" and "no_such_model" in missing.message()
    version = _request_error(client, "simple", inputs, model_version="9")
    assert version.status() == "StatusCode.NOT_FOUND" and "version 9" in version.message()


def test_dict_argument_takes_json_in_bytes(client: grpcclient.InferenceServerClient) -> None:
    text = np.array([b'{"value": 10}'], dtype=object)
    assert client.infer("example_dict_doubler", [_input("d", text, "BYTES")]).as_numpy("OUTPUT__0").tolist() == [20]
    error = _request_error(client, "example_dict_doubler", [_input("d", np.array([10], np.int64), "INT64")])
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message() == "inference input 'd' data-type is 'INT64', but model 'example_dict_doubler' expects 'BYTES'"
    error = _request_error(client, "example_dict_doubler", [_input("d", np.array([b"[10]"], dtype=object), "BYTES")])
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "Dict[str, int]" in error.message()


def test_model_that_raises_is_internal_and_server_keeps_serving(client: grpcclient.InferenceServerClient) -> None:
    bad = np.array([[-1.0, 2.0]], dtype=np.float32)
    error = _request_error(client, "failing", [_input("INPUT0", bad, "FP32")])
    assert error.status() == "StatusCode.INTERNAL"
    assert "negative input is not allowed" in error.message()
    good = client.infer("failing", [_input("INPUT0", np.abs(bad), "FP32")])
    np.testing.assert_array_equal(good.as_numpy("OUTPUT0"), np.abs(bad) * 2)


def test_every_rpc_of_the_service_is_served(client: grpcclient.InferenceServerClient) -> None:
    # trace and log settings: tests/integration/test_trace_and_logging.py (which also checks that an RPC this
    # server does not know answers UNIMPLEMENTED naming it); shared memory: tests/integration/test_shared_memory.py
    assert client.get_trace_settings(as_json=True)["settings"]["trace_mode"] == {"value": ["TRITON"]}
    assert client.get_log_settings(as_json=True)["settings"]["log_info"] == {"bool_param": True}
