"""Decoupled models (``model_transaction_policy { decoupled: true }``) over real tritonclient streams.

``repeat_int32`` is the bundled model Triton's ``simple_grpc_custom_repeat.py`` drives; ``countdown`` is built
here: ``N`` responses counting from 0, and the ways a decoupled model can fail (it raises, its outputs
disagree on the number of responses, an output lacks the response dimension, too many responses).
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import BUNDLED_REPOSITORY, RunningServer, http_call, loopback_settings
from v2server.decoupled import MAX_RESPONSES

_WAIT_S = 60  # a bound on waiting for one response, so that a hang fails instead of blocking the suite


class Countdown(torch.nn.Module):
    """``N`` responses: OUT = TWIN = i. Raises for N < 0; N == 13: TWIN has one response less; N == 99: OUT
    has no response dimension."""

    def forward(self, N: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(N[0])
        if n < 0:
            raise RuntimeError("a negative count")
        out = torch.arange(n, dtype=torch.int32).reshape(n, 1)
        twin = out[:-1] if n == 13 else out
        if n == 99:
            out = out.reshape(n)
        return out, twin


_COUNTDOWN_CONFIG = """
name: "countdown"
platform: "pytorch_libtorch"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] },
          { name: "TWIN" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU } ]
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("decoupled")
    for name in ("repeat_int32", "custom_identity_int32"):
        (repo / name).symlink_to(BUNDLED_REPOSITORY / name, target_is_directory=True)
    (repo / "countdown" / "1").mkdir(parents=True)
    (repo / "countdown" / "config.pbtxt").write_text(_COUNTDOWN_CONFIG)
    torch.jit.save(torch.jit.script(Countdown()), str(repo / "countdown" / "1" / "model.pt"))
    return repo


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[RunningServer]:
    running = RunningServer(loopback_settings(repository))
    yield running
    running.stop()


def _repeat_inputs(values: list[int], delays: list[int] | None = None) -> list[grpcclient.InferInput]:
    delays = [0] * len(values) if delays is None else delays
    inputs = [
        grpcclient.InferInput("IN", [len(values)], "INT32"),
        grpcclient.InferInput("DELAY", [len(delays)], "UINT32"),
        grpcclient.InferInput("WAIT", [1], "UINT32"),
    ]
    inputs[0].set_data_from_numpy(np.array(values, dtype=np.int32))
    inputs[1].set_data_from_numpy(np.array(delays, dtype=np.uint32))
    inputs[2].set_data_from_numpy(np.array([0], dtype=np.uint32))
    return inputs


def _countdown(n: int) -> list[grpcclient.InferInput]:
    inputs = [grpcclient.InferInput("N", [1], "INT32")]
    inputs[0].set_data_from_numpy(np.array([n], dtype=np.int32))
    return inputs


class _Stream:
    """A tritonclient stream whose answers (result or error) land in a queue."""

    def __init__(self, client: grpcclient.InferenceServerClient) -> None:
        self.answers: queue.Queue[tuple[Any, InferenceServerException | None]] = queue.Queue()
        client.start_stream(callback=lambda result, error: self.answers.put((result, error)))

    def take(self, count: int) -> list[tuple[Any, InferenceServerException | None]]:
        return [self.answers.get(timeout=_WAIT_S) for _ in range(count)]


def _final(result: Any) -> bool:
    return bool(result.get_response().parameters["triton_final_response"].bool_param)


def test_repeat_int32_answers_one_response_per_element_then_the_empty_final(server: RunningServer) -> None:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stream = _Stream(client)
        client.async_stream_infer(
            "repeat_int32",
            _repeat_inputs([100, 101, 102, 103]),
            request_id="r1",
            enable_empty_final_response=True,
        )
        answers = stream.take(5)
        client.stop_stream()
    assert [error for _, error in answers] == [None] * 5
    results = [result for result, _ in answers]
    assert [int(r.as_numpy("OUT")[0]) for r in results[:4]] == [100, 101, 102, 103]
    assert [int(r.as_numpy("IDX")[0]) for r in results[:4]] == [0, 1, 2, 3]
    assert all(r.as_numpy("OUT").shape == (1,) and r.as_numpy("OUT").dtype == np.int32 for r in results[:4])
    assert all(r.as_numpy("IDX").dtype == np.uint32 for r in results[:4])
    assert [_final(r) for r in results] == [False, False, False, False, True]
    assert not results[4].get_response().outputs
    assert {r.get_response().id for r in results} == {"r1"}


def test_without_the_empty_final_response_only_the_data_responses_come(server: RunningServer) -> None:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stream = _Stream(client)
        client.async_stream_infer(
            "repeat_int32", _repeat_inputs([7, 8, 9]), outputs=[grpcclient.InferRequestedOutput("OUT")]
        )
        answers = stream.take(3)
        client.stop_stream()  # waits for the stream to end: nothing more was sent
    assert stream.answers.empty()
    assert [int(result.as_numpy("OUT")[0]) for result, _ in answers] == [7, 8, 9]
    assert [result.as_numpy("IDX") for result, _ in answers] == [None] * 3  # not asked for
    assert [_final(result) for result, _ in answers] == [False] * 3


def test_zero_responses_then_the_final(server: RunningServer) -> None:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stream = _Stream(client)
        client.async_stream_infer("repeat_int32", _repeat_inputs([]), enable_empty_final_response=True)
        client.async_stream_infer("repeat_int32", _repeat_inputs([5]), enable_empty_final_response=True)
        answers = stream.take(3)
        client.stop_stream()
    assert [error for _, error in answers] == [None] * 3
    finals = [result for result, _ in answers if _final(result)]
    assert len(finals) == 2 and all(not r.get_response().outputs for r in finals)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unary_inference_is_refused_with_tritons_message(server: RunningServer, protocol: str) -> None:
    module: Any = grpcclient if protocol == "grpc" else httpclient
    url = server.grpc_url if protocol == "grpc" else server.http_url
    client = module.InferenceServerClient(url)
    inputs = [module.InferInput("N", [1], "INT32")]
    inputs[0].set_data_from_numpy(np.array([2], dtype=np.int32))
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.infer("countdown", inputs)
    finally:
        client.close()
    assert "doesn't support models with decoupled transaction policy" in caught.value.message()
    if protocol == "grpc":
        assert caught.value.status() == "StatusCode.UNIMPLEMENTED"


def test_rest_refusal_is_a_501(server: RunningServer) -> None:
    body = b'{"inputs": [{"name": "N", "shape": [1], "datatype": "INT32", "data": [2]}]}'
    status, _, answer = http_call(server, "POST", "/v2/models/countdown/infer", body)
    assert status == 501
    assert b"doesn't support models with decoupled transaction policy" in answer


def test_a_failing_request_is_an_error_and_the_stream_goes_on(server: RunningServer) -> None:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stream = _Stream(client)
        for n, request_id in ((2, "a"), (-1, "b"), (3, "c")):
            client.async_stream_infer(
                "countdown", _countdown(n), request_id=request_id, enable_empty_final_response=True
            )
        answers = stream.take(2 + 1 + 1 + 3 + 1)
        client.stop_stream()
    errors = [error.message() for _, error in answers if error is not None]
    assert len(errors) == 1 and "a negative count" in errors[0]
    by_id: dict[str, list[int]] = {}
    for result, error in answers:
        if error is None and not _final(result):
            by_id.setdefault(result.get_response().id, []).append(int(result.as_numpy("OUT")[0]))
    assert by_id == {"a": [0, 1], "c": [0, 1, 2]}


@pytest.mark.parametrize(
    ("n", "message"),
    [
        (13, "output 'TWIN' holds 12 responses, the other outputs 13"),
        (99, "output 'OUT' has shape [99]; a decoupled model returns [responses] + [1]"),
        (
            MAX_RESPONSES + 1,
            f"returned {MAX_RESPONSES + 1} responses for one request; the most is {MAX_RESPONSES}",
        ),
    ],
    ids=["responses-disagree", "no-response-dimension", "too-many-responses"],
)
def test_a_model_that_breaks_the_rule_fails_its_request(server: RunningServer, n: int, message: str) -> None:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stream = _Stream(client)
        client.async_stream_infer("countdown", _countdown(n), enable_empty_final_response=True)
        client.async_stream_infer("countdown", _countdown(1), enable_empty_final_response=True)
        answers = stream.take(3)
        client.stop_stream()
    errors = [error.message() for _, error in answers if error is not None]
    assert len(errors) == 1 and message in errors[0]
    assert sum(error is None and not _final(result) for result, error in answers) == 1


@pytest.mark.parametrize(
    ("values", "delays", "message"),
    [
        ([1, 2, 3], [0, 0], "expected IN and DELAY shape to match"),
        ([1, 2], [40_000, 40_000], "the delays add up to 80 s, more than the 60 s"),
    ],
    ids=["shapes-differ", "delays-past-the-cap"],
)
def test_repeat_int32_refuses_bad_delays(
    server: RunningServer, values: list[int], delays: list[int], message: str
) -> None:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stream = _Stream(client)
        client.async_stream_infer(
            "repeat_int32", _repeat_inputs(values, delays), enable_empty_final_response=True
        )
        ((result, error),) = stream.take(1)
        client.stop_stream()
    assert result is None and error is not None and message in error.message()


def test_many_decoupled_requests_on_a_stream_with_a_small_pending_limit(repository: Path) -> None:
    """Each request holds the stream's permit until its last response left: with 2 permits and 12 requests of
    3 responses (and the final) every answer still arrives, in order within each request."""
    running = RunningServer(loopback_settings(repository, grpc_max_stream_pending=2))
    try:
        with grpcclient.InferenceServerClient(running.grpc_url) as client:
            stream = _Stream(client)
            for i in range(12):
                client.async_stream_infer(
                    "repeat_int32",
                    _repeat_inputs([10 * i, 10 * i + 1, 10 * i + 2]),
                    request_id=str(i),
                    enable_empty_final_response=True,
                )
            answers = stream.take(12 * 4)
            client.stop_stream()
    finally:
        running.stop()
    seen: dict[str, list[int]] = {}
    for result, error in answers:
        assert error is None
        if not _final(result):
            seen.setdefault(result.get_response().id, []).append(int(result.as_numpy("OUT")[0]))
    assert seen == {str(i): [10 * i, 10 * i + 1, 10 * i + 2] for i in range(12)}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_custom_identity_int32_round_trip(server: RunningServer, protocol: str) -> None:
    module: Any = grpcclient if protocol == "grpc" else httpclient
    client = module.InferenceServerClient(server.grpc_url if protocol == "grpc" else server.http_url)
    data = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(data)
    try:
        result = client.infer(
            "custom_identity_int32", inputs, outputs=[module.InferRequestedOutput("OUTPUT0")]
        )
    finally:
        client.close()
    output = result.as_numpy("OUTPUT0")
    assert output.dtype == np.int32
    np.testing.assert_array_equal(output, data)
