"""The classification extension end to end: tritonclient's ``class_count`` over HTTP and gRPC, REST JSON, and
the refusals, on the bundled ``sentiment_labelled`` (labels ``negative``, ``positive``) and ``sentiment``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer, http_call
from v2server.dataplane import EXTENSIONS

IDS = np.array([[3, 14, 15, 92], [65, 35, 89, 79]], dtype=np.int64)
MASK = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=np.int64)
LABELS = ("negative", "positive")


def _expected(logits: np.ndarray, count: int, labels: tuple[str, ...] = LABELS) -> list[list[str]]:
    """Triton's strings for the top ``count`` of each row: value with %f, index, label."""
    rows = []
    for row in logits:
        order = sorted(range(len(row)), key=lambda i: (-row[i], i))[:count]
        rows.append([f"{row[i]:f}:{i}" + (f":{labels[i]}" if labels else "") for i in order])
    return rows


def _decoded(array: np.ndarray) -> list[list[str]]:
    """Rows of strings (tritonclient gives bytes from binary outputs, str from JSON ones)."""
    return [[item.decode() if isinstance(item, bytes) else item for item in row] for row in array]


def test_classification_is_advertised(server: RunningServer) -> None:
    assert "classification" in EXTENSIONS
    status, _, body = http_call(server, "GET", "/v2")
    assert status == 200 and json.loads(body)["extensions"] == list(EXTENSIONS)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_class_count(server: RunningServer, binary: bool) -> None:
    with httpclient.InferenceServerClient(server.http_url) as client:
        inputs = []
        for name, array in (("input_ids", IDS), ("attention_mask", MASK)):
            tensor = httpclient.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array, binary_data=binary)
            inputs.append(tensor)
        plain = client.infer("sentiment_labelled", inputs).as_numpy("logits")
        asked = [httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=3)]
        result = client.infer("sentiment_labelled", inputs, outputs=asked)
    classes = result.as_numpy("logits")
    output = result.get_output("logits")
    assert output["datatype"] == "BYTES" and output["shape"] == [2, 2]  # 3 asked, 2 classes per row
    assert _decoded(classes) == _expected(plain, 2)


def test_grpc_class_count_and_a_model_without_labels(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        inputs = []
        for name, array in (("input_ids", IDS), ("attention_mask", MASK)):
            tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        plain = client.infer("sentiment_labelled", inputs).as_numpy("logits")
        result = client.infer(
            "sentiment_labelled", inputs, outputs=[grpcclient.InferRequestedOutput("logits", class_count=1)]
        )
        assert result.get_output("logits").datatype == "BYTES"
        assert list(result.get_output("logits").shape) == [2, 1]
        assert _decoded(result.as_numpy("logits")) == _expected(plain, 1)
        # the same network without a labels file: "value:index"
        unlabelled = client.infer(
            "sentiment", inputs, outputs=[grpcclient.InferRequestedOutput("logits", class_count=2)]
        )
        assert _decoded(unlabelled.as_numpy("logits")) == _expected(plain, 2, labels=())
    finally:
        client.close()


def _rest_infer(server: RunningServer, model: str, outputs: list[dict[str, object]]) -> tuple[int, dict[str, object]]:
    body = {
        "inputs": [
            {"name": "input_ids", "shape": [1, 4], "datatype": "INT64", "data": IDS[0].tolist()},
            {"name": "attention_mask", "shape": [1, 4], "datatype": "INT64", "data": MASK[0].tolist()},
        ],
        "outputs": outputs,
    }
    status, _, answer = http_call(server, "POST", f"/v2/models/{model}/infer", json.dumps(body).encode())
    return status, json.loads(answer)


def test_rest_json_classification_parameter(server: RunningServer) -> None:
    status, plain = _rest_infer(server, "sentiment_labelled", [{"name": "logits"}])
    assert status == 200
    logits = np.array(plain["outputs"][0]["data"], dtype=np.float32).reshape(1, 2)  # type: ignore[index]
    status, answer = _rest_infer(server, "sentiment_labelled", [{"name": "logits", "parameters": {"classification": 2}}])
    assert status == 200
    output = answer["outputs"][0]  # type: ignore[index]
    assert output["datatype"] == "BYTES" and output["shape"] == [1, 2]
    assert output["data"] == _expected(logits, 2)[0]


@pytest.mark.parametrize(
    ("model", "output", "message"),
    [
        ("sentiment_labelled", {"name": "logits", "parameters": {"classification": 0}}, "must be a positive integer"),
        ("sentiment_labelled", {"name": "logits", "parameters": {"classification": 1.5}}, "must be a positive integer"),
        ("sentiment_labelled", {"name": "logits", "parameters": {"classification": "2"}}, "must be a positive integer"),
    ],
    ids=["zero", "float", "string"],
)
def test_rest_refusals_are_400_naming_the_output(
    server: RunningServer, model: str, output: dict[str, object], message: str
) -> None:
    status, answer = _rest_infer(server, model, [output])
    assert status == 400
    assert "output 'logits'" in answer["error"] and message in answer["error"]  # type: ignore[operator]


def test_a_bytes_output_cannot_be_classified(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        values = np.array([["1"] * 16], dtype=object)
        inputs = []
        for name in ("INPUT0", "INPUT1"):
            tensor = grpcclient.InferInput(name, [1, 16], "BYTES")
            tensor.set_data_from_numpy(values)
            inputs.append(tensor)
        with pytest.raises(InferenceServerException) as caught:
            client.infer("simple_string", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT0", class_count=1)])
    finally:
        client.close()
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "output 'OUTPUT0': 'classification' needs a numeric output; 'OUTPUT0' is BYTES" in caught.value.message()
