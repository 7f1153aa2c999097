"""tritonclient.grpc.aio, bidirectional streaming (sync and aio), and the standard gRPC health service."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import BUNDLED_REPOSITORY, RunningServer, loopback_settings


def _simple(client_module, value: int, batch: int = 1):  # type: ignore[no-untyped-def]
    a = np.full((batch, 16), value, dtype=np.int32)
    inputs = [client_module.InferInput("INPUT0", [batch, 16], "INT32"), client_module.InferInput("INPUT1", [batch, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(np.ones_like(a))
    return inputs


async def test_aio_client(server: RunningServer) -> None:
    async with aioclient.InferenceServerClient(server.grpc_url) as client:
        assert await client.is_server_live()
        assert await client.is_server_ready()
        assert await client.is_model_ready("simple")
        metadata = await client.get_model_metadata("simple", as_json=True)
        assert metadata["platform"] == "pytorch_libtorch"
        result = await client.infer("simple", _simple(aioclient, 4, batch=2))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((2, 16), 5, np.int32))
        with pytest.raises(Exception, match="Request for unknown model: 'nope' is not found"):
            await client.infer("nope", _simple(aioclient, 1))


async def test_aio_stream_keeps_going_after_an_error(server: RunningServer) -> None:
    async def requests():  # type: ignore[no-untyped-def]
        yield {"model_name": "simple", "inputs": _simple(aioclient, 1), "request_id": "ok-1"}
        yield {"model_name": "no_such_model", "inputs": _simple(aioclient, 1), "request_id": "bad"}
        yield {"model_name": "simple", "inputs": _simple(aioclient, 2), "request_id": "ok-2"}

    results, errors = {}, []
    async with aioclient.InferenceServerClient(server.grpc_url) as client:
        async for result, error in client.stream_infer(requests()):
            if error is not None:
                errors.append(str(error))
            else:
                response = result.get_response()
                assert response.parameters["triton_final_response"].bool_param is True
                results[response.id] = result.as_numpy("OUTPUT0")
    assert set(results) == {"ok-1", "ok-2"}
    np.testing.assert_array_equal(results["ok-2"], np.full((1, 16), 3, np.int32))
    assert len(errors) == 1 and "no_such_model" in errors[0]


def test_sync_stream_many_requests(server: RunningServer) -> None:
    responses: queue.Queue = queue.Queue()  # type: ignore[type-arg]
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        for i in range(20):
            client.async_stream_infer("simple", _simple(grpcclient, i), request_id=str(i))
        bad = _simple(grpcclient, 0)
        bad[0] = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        bad[0].set_data_from_numpy(np.zeros((1, 16), np.float32))
        client.async_stream_infer("simple", bad, request_id="bad")
        client.stop_stream()
    seen, errors = {}, []
    while not responses.empty():
        result, error = responses.get_nowait()
        if error is not None:
            errors.append(error.message())
        else:
            seen[result.get_response().id] = int(result.as_numpy("OUTPUT0")[0, 0])
    assert seen == {str(i): i + 1 for i in range(20)}
    assert len(errors) == 1 and "data-type is 'FP32', but model 'simple' expects 'INT32'" in errors[0]


def test_stream_requests_of_one_sequence_answer_in_order(server: RunningServer) -> None:
    responses: queue.Queue = queue.Queue()  # type: ignore[type-arg]
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        for i in range(10):
            client.async_stream_infer(
                "simple", _simple(grpcclient, i), request_id=str(i), sequence_id=42,
                sequence_start=i == 0, sequence_end=i == 9,
            )
        client.stop_stream()
    order = []
    while not responses.empty():
        result, error = responses.get_nowait()
        assert error is None
        order.append(result.get_response().id)
    assert order == [str(i) for i in range(10)]


def test_grpc_health_service(server: RunningServer) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING


# -- load limits: --grpc-max-stream-pending and --max-inflight-bytes -----------------------------------------


@pytest.fixture(scope="module")
def limited_server() -> Iterator[RunningServer]:
    """A server whose streams read at most 2 unanswered requests and that serves at most 64 KiB of inputs."""
    running = RunningServer(
        loopback_settings(BUNDLED_REPOSITORY, grpc_max_stream_pending=2, max_inflight_bytes=64 * 1024)
    )
    yield running
    running.stop()


def test_a_stream_past_its_pending_limit_answers_everything_and_keeps_sequences_in_order(
    limited_server: RunningServer,
) -> None:
    responses: queue.Queue = queue.Queue()  # type: ignore[type-arg]
    with grpcclient.InferenceServerClient(limited_server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        for i in range(30):
            if i % 3:
                client.async_stream_infer("simple", _simple(grpcclient, i), request_id=f"free{i}")
            else:
                client.async_stream_infer(
                    "simple", _simple(grpcclient, i), request_id=f"seq{i}", sequence_id=5,
                    sequence_start=i == 0, sequence_end=i == 27,
                )
        client.stop_stream()
    seen = []
    while not responses.empty():
        result, error = responses.get_nowait()
        assert error is None
        seen.append((result.get_response().id, int(result.as_numpy("OUTPUT0")[0, 0])))
    assert sorted(seen) == sorted((f"{'free' if i % 3 else 'seq'}{i}", i + 1) for i in range(30))
    assert [name for name, _ in seen if name.startswith("seq")] == [f"seq{i}" for i in range(0, 30, 3)]


def test_inputs_past_max_inflight_bytes_get_unavailable_and_nothing_stays_held(limited_server: RunningServer) -> None:
    with grpcclient.InferenceServerClient(limited_server.grpc_url) as client:
        with pytest.raises(InferenceServerException) as info:  # 20,000 x 7 bytes: more than served at once
            client.infer("simple_identity", _bytes(20_000))
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert "--max-inflight-bytes (65536)" in info.value.message()
        for i in range(3):  # released: requests that fit keep being served
            result = client.infer("simple", _simple(grpcclient, i))
            assert int(result.as_numpy("OUTPUT0")[0, 0]) == i + 1
        assert limited_server.server.core.inflight_bytes == 0


def _bytes(count: int) -> list[grpcclient.InferInput]:
    array = np.full((1, count), b"abc", dtype=object)
    tensor = grpcclient.InferInput("INPUT0", [1, count], "BYTES")
    tensor.set_data_from_numpy(array)
    return [tensor]
