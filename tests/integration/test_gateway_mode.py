"""``v2server gateway``: the REST gateway alone, forwarding to a separately started gRPC core."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer, cli_process, logged_port


@pytest.fixture(scope="module")
def gateway_url(server: RunningServer) -> Iterator[str]:
    args = ["gateway", "--grpc-target", server.grpc_url, "--http-address", "127.0.0.1", "--http-port", "0"]
    with cli_process(args, until="REST gateway on") as (_, log):
        yield f"127.0.0.1:{logged_port(log, 'REST gateway on')}"


def test_gateway_forwards_everything(gateway_url: str) -> None:
    client = httpclient.InferenceServerClient(gateway_url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("simple")
        assert client.get_model_metadata("simple")["inputs"][0]["shape"] == [-1, 16]
        assert client.get_model_config("mlp")["max_batch_size"] == 64
        a = np.arange(32, dtype=np.int32).reshape(2, 16)
        inputs = [httpclient.InferInput("INPUT0", [2, 16], "INT32"), httpclient.InferInput("INPUT1", [2, 16], "INT32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(a, binary_data=False)
        result = client.infer("simple", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * a)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("model", "datatype", "status", "message"),
    [
        ("no_such_model", "FP32", "404", "Request for unknown model"),
        ("failing", "INT32", "400", "data-type is 'INT32', but model 'failing' expects 'FP32'"),
        ("failing", "FP32", "500", "negative input is not allowed"),
    ],
)
def test_gateway_maps_core_errors_like_in_process(gateway_url: str, model: str, datatype: str, status: str,
                                                  message: str) -> None:
    client = httpclient.InferenceServerClient(gateway_url)
    try:
        tensor = httpclient.InferInput("INPUT0", [1, 2], datatype)
        tensor.set_data_from_numpy(np.array([[-1, 2]], dtype=np.float32 if datatype == "FP32" else np.int32))
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, [tensor])
        assert info.value.status() == status and message in info.value.message()
    finally:
        client.close()
