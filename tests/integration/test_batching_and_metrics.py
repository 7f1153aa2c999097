"""Dynamic batching, queue policies, statistics (both protocols), Prometheus metrics and the access log."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.assets.test_models import Failing, Scaled, _config, _save, _tensor
from tests.conftest import BUNDLED_REPOSITORY, RunningServer, loopback_settings

IO = "\n".join([_tensor("input", "INPUT0", "TYPE_FP32", "[ 4 ]"), _tensor("output", "OUTPUT0", "TYPE_FP32", "[ 4 ]")])


def _batching_model(repo: Path, name: str, batching: str) -> None:
    _save(repo, name, Scaled(3), _config(name, f"max_batch_size: 8\n{IO}\ndynamic_batching {{ {batching} }}"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("batching")
    _batching_model(repo, "batched", "preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 5000000")
    _batching_model(repo, "tiny_queue", "preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 500000 "
                    "default_queue_policy { max_queue_size: 1 }")
    _batching_model(repo, "short_timeout", "preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 2000000 "
                    "default_queue_policy { default_timeout_microseconds: 1000 timeout_action: REJECT }")
    _save(repo, "failing", Failing(), _config("failing", f"max_batch_size: 8\n{IO}"))
    (repo / "simple").symlink_to(BUNDLED_REPOSITORY / "simple", target_is_directory=True)
    running = RunningServer(loopback_settings(repo, log_requests=True, log_format="json"))
    yield running
    running.stop()


def _rows(value: float, rows: int = 1) -> np.ndarray:
    return np.full((rows, 4), value, dtype=np.float32)


async def _infer_many(url: str, model: str, values: list[float]) -> list[np.ndarray | Exception]:
    async with aioclient.InferenceServerClient(url) as client:
        async def one(value: float) -> np.ndarray | Exception:
            tensor = aioclient.InferInput("INPUT0", [1, 4], "FP32")
            tensor.set_data_from_numpy(_rows(value))
            try:
                return (await client.infer(model, [tensor])).as_numpy("OUTPUT0")
            except InferenceServerException as exc:
                return exc

        return list(await asyncio.gather(*(one(v) for v in values)))


def _stats(client: grpcclient.InferenceServerClient, model: str) -> dict:  # type: ignore[type-arg]
    return client.get_inference_statistics(model, as_json=True)["model_stats"][0]


def test_concurrent_requests_run_as_one_batch_with_unchanged_answers(server: RunningServer) -> None:
    results = asyncio.run(_infer_many(server.grpc_url, "batched", [1.0, 2.0, 3.0, 4.0]))
    for value, result in zip([1.0, 2.0, 3.0, 4.0], results, strict=True):
        np.testing.assert_array_equal(result, _rows(value) * 3)  # as if each ran alone
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = _stats(client, "batched")
    assert stats["inference_count"] == "4" and stats["execution_count"] == "1"
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in stats["batch_stats"]] == [("4", "1")]
    assert stats["inference_stats"]["success"]["count"] == "4"
    assert int(stats["inference_stats"]["queue"]["ns"]) > 0


def test_full_queue_is_unavailable(server: RunningServer) -> None:
    results = asyncio.run(_infer_many(server.grpc_url, "tiny_queue", [1.0, 2.0]))
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1 and errors[0].status() == "StatusCode.UNAVAILABLE"
    assert "queue is full" in errors[0].message()
    client = httpclient.InferenceServerClient(server.http_url, concurrency=2)
    try:
        tensors = []
        for value in (1.0, 2.0):
            tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
            tensor.set_data_from_numpy(_rows(value))
            tensors.append(tensor)
        pending = [client.async_infer("tiny_queue", [t]) for t in tensors]
        outcomes = []
        for request in pending:
            try:
                outcomes.append(request.get_result())
            except InferenceServerException as exc:
                outcomes.append(exc)
        assert sorted(o.status() for o in outcomes if isinstance(o, Exception)) == ["503"]
    finally:
        client.close()


def test_queue_timeout_rejects(server: RunningServer) -> None:
    (result,) = asyncio.run(_infer_many(server.grpc_url, "short_timeout", [1.0]))
    assert isinstance(result, InferenceServerException)
    assert result.status() == "StatusCode.DEADLINE_EXCEEDED" and "timed out in the queue" in result.message()


def test_statistics_over_both_protocols(server: RunningServer) -> None:
    data = np.arange(16, dtype=np.int32).reshape(1, 16)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for _ in range(3):
            inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
            inputs[0].set_data_from_numpy(data)
            inputs[1].set_data_from_numpy(data)
            client.infer("simple", inputs)
        failing = grpcclient.InferInput("INPUT0", [2, 4], "FP32")
        failing.set_data_from_numpy(-_rows(1.0, rows=2))
        with pytest.raises(InferenceServerException):
            client.infer("failing", [failing])
        simple = _stats(client, "simple")
        assert simple["name"] == "simple" and simple["version"] == "1"
        assert simple["inference_count"] == "3" and simple["execution_count"] == "3"
        assert int(simple["last_inference"]) > 0
        stats = simple["inference_stats"]
        assert stats["success"]["count"] == "3" and int(stats["compute_infer"]["ns"]) > 0
        failed = _stats(client, "failing")["inference_stats"]
        assert failed["fail"]["count"] == "1" and "success" not in failed or failed["success"].get("count", "0") == "0"
        everything = client.get_inference_statistics(as_json=True)["model_stats"]
        assert {"simple", "failing", "batched"} <= {m["name"] for m in everything}
        with pytest.raises(InferenceServerException, match="unknown model"):
            client.get_inference_statistics("nope")
    http = httpclient.InferenceServerClient(server.http_url)
    try:
        rest = http.get_inference_statistics("simple")["model_stats"][0]
        assert rest["inference_count"] == 3 and rest["inference_stats"]["success"]["count"] == 3
        assert rest["inference_stats"]["cache_hit"] == {"count": 0, "ns": 0}  # zeros shown, as Triton does
        assert rest["batch_stats"][0]["batch_size"] == 1
        assert http.get_inference_statistics("simple", "1")["model_stats"][0]["version"] == "1"
        assert len(http.get_inference_statistics()["model_stats"]) >= 3
    finally:
        http.close()


def test_prometheus_metrics_after_known_traffic(server: RunningServer) -> None:
    asyncio.run(_infer_many(server.grpc_url, "batched", [5.0, 6.0, 7.0, 8.0]))
    with urllib.request.urlopen(server.metrics_url, timeout=30) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    lines = text.splitlines()
    assert "# TYPE nv_inference_count counter" in lines
    assert "_total" not in text
    count = next(line for line in lines if line.startswith('nv_inference_count{model="batched",version="1"}'))
    executions = next(line for line in lines if line.startswith('nv_inference_exec_count{model="batched",version="1"}'))
    assert float(count.split()[-1]) == 8.0 and float(executions.split()[-1]) == 2.0
    for name in ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_request_duration_us",
                 "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
                 "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us",
                 "nv_inference_pending_request_count"):
        assert any(line.startswith(name + "{") for line in lines), name
    assert any(line.startswith('nv_inference_request_latency_us_bucket{le="+Inf",model="batched"') for line in lines)


def test_access_log_lines(server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="v2server.access")
    data = np.arange(16, dtype=np.int32).reshape(1, 16)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_data_from_numpy(data)
        inputs[1].set_data_from_numpy(data)
        client.infer("simple", inputs, request_id="logged-1")
    http = httpclient.InferenceServerClient(server.http_url)
    try:
        tensor = httpclient.InferInput("INPUT0", [1], "FP32")
        tensor.set_data_from_numpy(np.ones(1, np.float32))
        with pytest.raises(InferenceServerException, match="unknown model"):
            http.infer("nope", [tensor])
    finally:
        http.close()
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "v2server.access"]
    grpc_line = next(r for r in records if r["request_id"] == "logged-1")
    assert grpc_line["protocol"] == "grpc" and grpc_line["route"].endswith("/ModelInfer")
    assert grpc_line["model"] == "simple" and grpc_line["version"] == "1" and grpc_line["status"] == "OK"
    assert grpc_line["batch_size"] == 1 and grpc_line["compute_us"] > 0
    http_line = next(r for r in records if r["protocol"] == "http" and "/nope/" in r["route"])
    assert http_line["status"] == "404"


def _wait_for(condition, seconds: float = 3.0) -> bool:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_cancelled_requests_free_their_queued_work(server: RunningServer) -> None:
    """A queued request (the batch waits up to 5 s for more) disappears when its client gives up."""
    import socket

    batcher = server.server.registry.get("batched").batcher
    assert batcher is not None and batcher.queued == 0
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    host, port = server.http_url.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            f"POST /v2/models/batched/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        assert _wait_for(lambda: batcher.queued == 1)
    assert _wait_for(lambda: batcher.queued == 0), "the HTTP client's queued request was not dropped"
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(_rows(1.0))
        with pytest.raises(InferenceServerException) as info:
            client.infer("batched", [tensor], client_timeout=0.5)
        assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert _wait_for(lambda: batcher.queued == 0), "the gRPC client's queued request was not dropped"
        assert client.is_server_ready()


def _loop_lag_count(url: str) -> float:
    with urllib.request.urlopen(url, timeout=30) as response:
        lines = response.read().decode().splitlines()
    assert "# TYPE v2server_event_loop_lag_seconds histogram" in lines
    assert any(line.startswith("# HELP v2server_event_loop_lag_seconds ") for line in lines)
    assert any(line.startswith('v2server_event_loop_lag_seconds_bucket{le="0.001"} ') for line in lines)
    return float(next(line for line in lines if line.startswith("v2server_event_loop_lag_seconds_count ")).split()[-1])


def test_event_loop_lag_is_on_metrics_and_keeps_being_sampled(server: RunningServer) -> None:
    first = _loop_lag_count(server.metrics_url)
    for _ in range(300):  # bounded: the server samples its loop every 100 ms
        if _loop_lag_count(server.metrics_url) > first:
            break
        time.sleep(0.05)
    assert _loop_lag_count(server.metrics_url) > first
    assert server.server.loop_lag.running


def test_the_loop_lag_sampler_stops_with_the_server(tmp_path: Path) -> None:
    running = RunningServer(loopback_settings(tmp_path))
    assert running.server.loop_lag.running
    running.stop()
    assert not running.server.loop_lag.running
