"""The simple REST styles (``/v1/{model}/{selector}``, aliases, ``/predict``) through raw HTTP, as curl sends them."""

from __future__ import annotations

import http.client
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.assets.test_models import Scaled, save_queued_model
from tests.conftest import BUNDLED_REPOSITORY, RunningServer, loopback_settings


def _post(server: RunningServer, path: str, body: Any, method: str = "POST") -> tuple[int, Any]:
    connection = http.client.HTTPConnection(server.http_url, timeout=30)
    try:
        payload = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        connection.request(method, path, body=payload)
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None
    finally:
        connection.close()


# -- /v1: every example of the issue, as written --------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "body", "answer"),
    [
        ("example_doubler", {"data": 10}, {"data": 20}),
        ("example_dict_doubler", {"data": {"value": 10}}, {"data": 20}),
        ("example_adder", {"data": [3, 4, 5]}, {"data": 12}),
        ("example_doubler", {"data": [[1, 10], [2, 11], [3, 12]]}, {"data": [[1, 20], [2, 22], [3, 24]]}),
        ("example_dict_doubler", {"data": [[1, {"value": 10}], [2, {"value": 20}]]}, {"data": [[1, 20], [2, 40]]}),
        ("example_adder", {"data": [[1, 3, 4, 5], [2, 6, 7, 8]]}, {"data": [[1, 12], [2, 21]]}),
    ],
)
def test_v1_examples_as_written(server: RunningServer, model: str, body: Any, answer: Any) -> None:
    assert _post(server, f"/v1/{model}/latest", body) == (200, answer)
    assert _post(server, f"/v1/{model}/1", body) == (200, answer)


def test_v1_batch_ids_sorted_and_unique(server: RunningServer) -> None:
    body = {"data": [["b", 1, 1, 1], [2, 3, 4, 5], ["a", 6, 7, 8], [1.5, 0, 0, 1]]}
    assert _post(server, "/v1/example_adder/latest", body) == (
        200, {"data": [[1.5, 1], [2, 12], ["a", 21], ["b", 3]]}
    )
    status, error = _post(server, "/v1/example_adder/latest", {"data": [[7, 3, 4, 5], [7, 6, 7, 8]]})
    assert status == 400 and error == {"error": "batch ID 7 is used more than once"}
    status, error = _post(server, "/v1/example_doubler/latest", {"data": [["x", 1], ["x", 2]]})
    assert status == 400 and error == {"error": 'batch ID "x" is used more than once'}


def test_v1_forcing_the_reading(server: RunningServer) -> None:
    # Forced single: a list for a scalar argument is bad data naming the argument.
    status, error = _post(server, "/v1/example_doubler/latest?batch=false", {"data": [[1, 10]]})
    assert status == 400 and "argument 'foo'" in error["error"]
    # Forced batch: a scalar is not a list of rows.
    status, error = _post(server, "/v1/example_doubler/latest?batch=true", {"data": 10})
    assert status == 400 and "batch must be a non-empty list of rows [ID, foo]" in error["error"]
    assert _post(server, "/v1/example_doubler/latest?batch=true", {"data": [[1, 10]]}) == (200, {"data": [[1, 20]]})
    assert _post(server, "/v1/example_doubler/latest?batch=false", {"data": [10]}) == (200, {"data": 20})
    status, error = _post(server, "/v1/example_doubler/latest?batch=maybe", {"data": 10})
    assert status == 400 and "'batch'" in error["error"]


def test_v1_tensor_models_single_and_batch(server: RunningServer) -> None:
    a, b = list(range(16)), [1] * 16
    status, answer = _post(server, "/v1/simple/latest", {"data": [a, b]})
    assert status == 200
    assert answer == {"data": {"OUTPUT0": [x + 1 for x in a], "OUTPUT1": [x - 1 for x in a]}}
    status, answer = _post(server, "/v1/simple/latest", {"data": [[2, a, b], [1, b, b]]})
    assert status == 200
    assert answer["data"][0] == [1, {"OUTPUT0": [2] * 16, "OUTPUT1": [0] * 16}]
    assert answer["data"][1] == [2, {"OUTPUT0": [x + 1 for x in a], "OUTPUT1": [x - 1 for x in a]}]
    status, answer = _post(server, "/v1/mlp/latest", {"data": [0.0] * 784})
    assert status == 200 and len(answer["data"]) == 10


def test_v1_batch_on_a_batching_model_is_one_execution(server: RunningServer) -> None:
    def executions() -> int:
        _, stats = _post(server, "/v2/models/simple/stats", None, "GET")
        return int(stats["model_stats"][0]["execution_count"])

    before = executions()
    rows = [[i, [i] * 16, [1] * 16] for i in range(5)]
    status, answer = _post(server, "/v1/simple/latest", {"data": rows})
    assert status == 200 and [row[0] for row in answer["data"]] == list(range(5))
    assert executions() == before + 1


def test_large_batches_below_the_limit(server: RunningServer) -> None:
    # a model without batching: one execution per row, a bounded number at a time; the body leaves the loop
    rows = [[i, i, 2 * i, 1] for i in range(3000)]
    status, answer = _post(server, "/v1/example_adder/latest", {"data": rows[::-1]})
    assert status == 200 and answer == {"data": [[i, 3 * i + 1] for i in range(3000)]}
    # a batching model: rows stacked max_batch_size at a time
    a = [[i % 100] * 16 for i in range(1000)]
    status, answer = _post(server, "/models/simple/predict", {"INPUT0": a, "INPUT1": [[1] * 16] * 1000})
    assert status == 200
    assert answer == {"OUTPUT0": [[x + 1 for x in row] for row in a], "OUTPUT1": [[x - 1 for x in row] for row in a]}


def test_a_batch_over_the_limit_is_413_naming_the_flag(server: RunningServer) -> None:
    executions = _post(server, "/v2/models/example_adder/stats", None, "GET")[1]["model_stats"][0]["execution_count"]
    rows = [[i, 1, 2, 3] for i in range(10_001)]
    rows[5][3] = "not a number"  # refused on its length and first row, before row 5 is read
    status, error = _post(server, "/v1/example_adder/latest", {"data": rows})
    assert (status, error) == (413, {"error": "a batch of 10001 rows exceeds the limit of 10000 rows per request "
                                              "(--max-batch-rows); send it as several requests"})
    status, error = _post(server, "/v1/example_adder/latest?batch=true", {"data": [[i, 1, 2, 3] for i in range(10_001)]})
    assert status == 413 and "--max-batch-rows" in error["error"]
    status, error = _post(server, "/models/simple/predict", {"INPUT0": [[0] * 16] * 10_001, "INPUT1": [[0] * 16] * 10_001})
    assert status == 413 and "a batch of 10001 rows exceeds the limit of 10000 rows" in error["detail"]
    after = _post(server, "/v2/models/example_adder/stats", None, "GET")[1]["model_stats"][0]["execution_count"]
    assert after == executions


def test_v1_errors(server: RunningServer) -> None:
    status, error = _post(server, "/v1/example_dict_doubler/latest", {"data": {"value": "x"}})
    assert status == 400 and "'d'" in error["error"] and "not int" in error["error"]
    status, error = _post(server, "/v1/example_adder/latest", {"data": [1, 2]})
    assert status == 400 and "takes 3 arguments (a, b, c)" in error["error"]
    status, error = _post(server, "/v1/example_doubler/latest", {"data": "ten"})
    assert (status, error) == (400, {"error": "input 'foo': data must be integers for INT64, got string \"ten\""})
    assert _post(server, "/v1/no_such_model/latest", {"data": 1})[0] == 404
    assert _post(server, "/v1/example_doubler/9", {"data": 1})[0] == 404
    status, error = _post(server, "/v1/example_doubler/official", {"data": 1})
    assert status == 404 and "'official'" in error["error"]
    status, error = _post(server, "/v1/failing/latest", {"data": [-1.0]})
    assert status == 500 and "negative input is not allowed" in error["error"]
    assert _post(server, "/v1/example_doubler/latest", b"{not json")[0] == 400
    assert _post(server, "/v1/example_doubler/latest", {"value": 1})[0] == 400


@pytest.mark.parametrize(
    ("model", "value", "message"),
    [
        ("identity_fp16", 70000.0, "input 'INPUT0': a value is out of range for FP16"),
        ("identity_bf16", 3.4e38, "input 'INPUT0': a value is out of range for BF16"),
        ("identity_int8", 300, "input 'INPUT0': value 300 is out of range for INT8"),
        ("identity_int32", True, "input 'INPUT0': data must be integers for INT32, got boolean true"),
    ],
)
def test_a_bad_value_gets_the_same_400_from_v2_v1_and_predict(
    server: RunningServer, model: str, value: Any, message: str
) -> None:
    datatype = model.removeprefix("identity_").upper()
    v2 = {"inputs": [{"name": "INPUT0", "datatype": datatype, "shape": [1, 2], "data": [1, value]}]}
    assert _post(server, f"/v2/models/{model}/infer", v2) == (400, {"error": message})
    assert _post(server, f"/v1/{model}/latest", {"data": [1, value]}) == (400, {"error": message})
    assert _post(server, f"/models/{model}/predict", {"INPUT0": [1, value]}) == (400, {"detail": message})


# -- aliases -------------------------------------------------------------------------------------------------


@pytest.fixture()
def versioned_repository(tmp_path: Path) -> Path:
    model = tmp_path / "repo" / "versioned"
    for version in (1, 2, 3):
        (model / str(version)).mkdir(parents=True)
        torch.jit.script(Scaled(version)).save(str(model / str(version) / "model.pt"))
    (model / "config.pbtxt").write_text(
        'name: "versioned"\nplatform: "pytorch_libtorch"\nmax_batch_size: 0\nversion_policy: { all { } }\n'
        'input [{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 2 ] }]\n'
        'output [{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 2 ] }]\n'
        "instance_group [{ kind: KIND_CPU }]\n"
    )
    return tmp_path / "repo"


def test_aliases_set_move_delete_persist(versioned_repository: Path) -> None:
    server = RunningServer(loopback_settings(versioned_repository, allow_grpc=False, allow_metrics=False))
    try:
        assert _post(server, "/v1/versioned/aliases", None, "GET") == (200, {})
        assert _post(server, "/v1/versioned/aliases/official", {"version": 3}, "PUT") == (200, {"official": 3})
        assert _post(server, "/v1/versioned/official", {"data": [1, 2]}) == (200, {"data": [3, 6]})
        assert _post(server, "/v1/versioned/aliases/official", {"version": 2}, "PUT") == (200, {"official": 2})
        assert _post(server, "/v1/versioned/official", {"data": [1, 2]}) == (200, {"data": [2, 4]})
        assert _post(server, "/v1/versioned/aliases/canary", {"version": 1}, "PUT")[0] == 200
        assert _post(server, "/v1/versioned/aliases", None, "GET") == (200, {"canary": 1, "official": 2})
        _, metadata = _post(server, "/v2/models/versioned", None, "GET")
        assert metadata["parameters"] == {"aliases": {"canary": 1, "official": 2}}
        status, error = _post(server, "/v1/versioned/aliases/official", {"version": 7}, "PUT")
        assert status == 400 and "no version 7" in error["error"] and "'official'" in error["error"]
        assert _post(server, "/v1/versioned/aliases/latest", {"version": 1}, "PUT")[0] == 400
        assert _post(server, "/v1/versioned/aliases/canary", None, "DELETE") == (200, {"official": 2})
        assert _post(server, "/v1/versioned/aliases/canary", None, "DELETE")[0] == 404
        assert _post(server, "/v1/versioned/canary", {"data": [1, 2]})[0] == 404
        assert _post(server, "/v1/nope/aliases", None, "GET")[0] == 404
        saved = json.loads((versioned_repository / "versioned" / "aliases.json").read_text())
        assert saved == {"official": 2}
    finally:
        server.stop()
    restarted = RunningServer(loopback_settings(versioned_repository, allow_grpc=False, allow_metrics=False))
    try:
        assert _post(restarted, "/v1/versioned/aliases", None, "GET") == (200, {"official": 2})
        assert _post(restarted, "/v1/versioned/official", {"data": [5, 5]}) == (200, {"data": [10, 10]})
    finally:
        restarted.stop()


# -- /predict ------------------------------------------------------------------------------------------------

_SENTENCE = {"input_ids": [101, 1045, 2293, 2023, 102], "attention_mask": [1, 1, 1, 1, 1]}


def test_predict_curl_example(server: RunningServer) -> None:
    status, answer = _post(server, "/models/sentiment/predict", _SENTENCE)
    assert status == 200 and list(answer) == ["logits"] and len(answer["logits"]) == 2
    batch = {name: [value, value] for name, value in _SENTENCE.items()}
    status, answers = _post(server, "/models/sentiment/predict", batch)
    assert status == 200 and len(answers["logits"]) == 2
    assert answers["logits"][0] == pytest.approx(answer["logits"], rel=1e-5)


def test_predict_errors_exactly(server: RunningServer) -> None:
    assert _post(server, "/models/sentiment/predict", {"attention_mask": [1, 1]}) == (
        400, {"detail": "Missing required input: 'input_ids'"}
    )
    assert _post(server, "/models/sentiment/predict", {"input_ids": 101, "attention_mask": [1]}) == (
        400, {"detail": "Invalid input type for 'input_ids': expected array"}
    )
    status, error = _post(server, "/models/failing/predict", {"INPUT0": [-1.0]})
    assert status == 500 and error["detail"].startswith("Inference failed: ")
    assert "negative input is not allowed" in error["detail"]
    status, error = _post(server, "/models/no_such_model/predict", _SENTENCE)
    assert status == 404 and "no_such_model" in error["detail"]
    status, error = _post(server, "/predict", _SENTENCE)  # several models and no --default-model
    assert status == 404 and "--default-model" in error["detail"]


@pytest.fixture()
def sentiment_only(tmp_path: Path) -> Iterator[RunningServer]:
    shutil.copytree(BUNDLED_REPOSITORY / "sentiment", tmp_path / "sentiment")
    server = RunningServer(loopback_settings(tmp_path, allow_grpc=False, allow_metrics=False))
    yield server
    server.stop()


def test_predict_serves_the_only_model(sentiment_only: RunningServer) -> None:
    status, answer = _post(sentiment_only, "/predict", _SENTENCE)
    assert status == 200 and len(answer["logits"]) == 2


def test_predict_default_model() -> None:
    server = RunningServer(loopback_settings(
        BUNDLED_REPOSITORY, allow_grpc=False, allow_metrics=False, default_model="example_doubler"
    ))
    try:
        assert _post(server, "/predict", {"foo": 21}) == (200, {"OUTPUT__0": 42})
        assert _post(server, "/predict", {"foo": [[1], [2]]}) == (200, {"OUTPUT__0": [2, 4]})
    finally:
        server.stop()


# -- timeouts ------------------------------------------------------------------------------------------------


@pytest.fixture()
def slow_server(tmp_path: Path) -> Iterator[RunningServer]:
    """A batching model whose queue holds a lone request for 1.5 s (it waits for a preferred batch of 8)."""
    save_queued_model(tmp_path)
    server = RunningServer(loopback_settings(tmp_path, allow_grpc=False, allow_metrics=False))
    yield server
    server.stop()


@pytest.mark.parametrize("path", ["/v1/queued/latest?timeout=0.2", "/predict?timeout=0.2"])
def test_timeout_is_504_and_drops_the_queued_work(slow_server: RunningServer, path: str) -> None:
    body = {"data": 4} if path.startswith("/v1") else {"INPUT0": 4}
    start = time.monotonic()
    status, error = _post(slow_server, path, body)
    assert status == 504 and time.monotonic() - start < 1.2
    message = error.get("error") or error.get("detail")
    assert "timeout of 0.2 s" in message
    time.sleep(1.6)  # past the queue delay: a request still queued would have run by now
    _, stats = _post(slow_server, "/v2/models/queued/stats", None, "GET")
    assert int(stats["model_stats"][0].get("execution_count", 0)) == 0
    assert _post(slow_server, "/v2/health/ready", None, "GET")[0] == 200
    assert _post(slow_server, "/v1/queued/latest?timeout=5", {"data": 4}) == (200, {"data": 8})
    assert _post(slow_server, "/v1/queued/latest?timeout=-1", {"data": 4})[0] == 400
