"""Sequence batching against the real server with tritonclient: the flows of Triton's sequence example clients
(``simple_{grpc,http}_sequence_*_client.py``, with and without ``--dyna``) over a gRPC stream, gRPC and HTTP,
implicit state, Triton's errors for wrong use over both transports, metadata, config and statistics.

Each test uses sequence ids of its own, because the session's server is shared.
"""

from __future__ import annotations

import asyncio
import itertools
import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer

VALUES = [11, 7, 5, 3, 2, 0, 1]
_IDS = itertools.count(5_000)


def _inputs(module, value: int):  # type: ignore[no-untyped-def]
    tensor = module.InferInput("INPUT", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.full((1, 1), value, dtype=np.int32))
    return [tensor]


def _flows(dyna: bool) -> list[tuple[str, int | str, list[int]]]:
    """The example's three sequences: (model, sequence id, values)."""
    base = next(_IDS) * 10
    string_id = str(base + 2) if dyna else f"uuid-like-{base}"
    return [
        ("simple_dyna_sequence" if dyna else "simple_sequence", base, [0, *VALUES]),
        ("simple_dyna_sequence" if dyna else "simple_sequence", base + 1, [100, *(-v for v in VALUES)]),
        ("simple_string_dyna_sequence" if dyna else "simple_sequence", string_id, [20, *(-v for v in VALUES)]),
    ]


def _expected(dyna: bool, flows: list[tuple[str, int | str, list[int]]]) -> list[list[int]]:
    """What the example clients check (the same arithmetic, written out)."""
    (_, id0, _), (_, id1, _), (_, sid, svalues) = flows
    int0 = [1] + VALUES
    int1 = [101] + [-v for v in VALUES]
    if dyna:
        int0[-1] += int(id0)
        int1[-1] += int(id1)
        strings = list(itertools.accumulate(svalues))
        strings[-1] += int(sid)
    else:
        strings = [21] + [-v for v in VALUES]
    return [int0, int1, strings]


def _run_sync(module, url: str, flows) -> list[list[int]]:  # type: ignore[no-untyped-def]
    client = module.InferenceServerClient(url)
    try:
        results = []
        for model, sequence_id, values in flows:
            outputs = []
            for i, value in enumerate(values):
                result = client.infer(
                    model, _inputs(module, value), outputs=[module.InferRequestedOutput("OUTPUT")],
                    sequence_id=sequence_id, sequence_start=i == 0, sequence_end=i == len(values) - 1,
                )
                outputs.append(int(result.as_numpy("OUTPUT")[0][0]))
            results.append(outputs)
        return results
    finally:
        client.close()


def _run_stream(url: str, flows) -> list[list[int]]:  # type: ignore[no-untyped-def]
    answers: queue.Queue = queue.Queue()  # type: ignore[type-arg]
    with grpcclient.InferenceServerClient(url) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for model, sequence_id, values in flows:
            for i, value in enumerate(values):
                client.async_stream_infer(
                    model, _inputs(grpcclient, value), request_id=f"{sequence_id}_{i}",
                    sequence_id=sequence_id, sequence_start=i == 0, sequence_end=i == len(values) - 1,
                )
        client.stop_stream()
    by_sequence: dict[str, dict[int, int]] = {}
    while not answers.empty():
        result, error = answers.get_nowait()
        assert error is None, error
        sequence, index = result.get_response().id.rsplit("_", 1)
        by_sequence.setdefault(sequence, {})[int(index)] = int(result.as_numpy("OUTPUT")[0][0])
    return [[by_sequence[str(sid)][i] for i in range(len(values))] for _, sid, values in flows]


@pytest.mark.parametrize("dyna", [False, True], ids=["simple_sequence", "dyna"])
@pytest.mark.parametrize("transport", ["grpc_stream", "grpc", "http"])
def test_tritons_sequence_examples(server: RunningServer, transport: str, dyna: bool) -> None:
    flows = _flows(dyna)
    if transport == "grpc_stream":
        results = _run_stream(server.grpc_url, flows)
    else:
        module, url = (grpcclient, server.grpc_url) if transport == "grpc" else (httpclient, server.http_url)
        results = _run_sync(module, url, flows)
    assert results == _expected(dyna, flows)


def test_implicit_state_accumulates_per_sequence_and_restarts(server: RunningServer) -> None:
    base = next(_IDS) * 10
    with httpclient.InferenceServerClient(server.http_url) as client:
        def send(sequence: int, value: int, start: bool = False, end: bool = False) -> int:
            result = client.infer(
                "simple_string_dyna_sequence", _inputs(httpclient, value),
                sequence_id=str(sequence), sequence_start=start, sequence_end=end,
            )
            return int(result.as_numpy("OUTPUT")[0][0])

        assert send(base, 5, start=True) == 5
        assert send(base + 1, 100, start=True) == 100  # a sequence of its own, its own state
        assert send(base, 5) == 10
        assert send(base + 1, 1) == 101
        assert send(base, 1, start=True) == 1  # START again: the state starts from zero
        assert send(base, 1, end=True) == 2 + base
        assert send(base + 1, 0, end=True) == 101 + base + 1


def _grpc_error(server: RunningServer, model: str, **sequence: object) -> tuple[str, str]:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, _inputs(grpcclient, 1), **sequence)  # type: ignore[arg-type]
    return str(caught.value.status()), caught.value.message()


def _http_error(server: RunningServer, model: str, **sequence: object) -> tuple[str, str]:
    with httpclient.InferenceServerClient(server.http_url) as client:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, _inputs(httpclient, 1), **sequence)  # type: ignore[arg-type]
    return str(caught.value.status()), caught.value.message()


@pytest.mark.parametrize(("transport", "call", "code"), [
    ("grpc", _grpc_error, "StatusCode.INVALID_ARGUMENT"), ("http", _http_error, "400"),
])
def test_wrong_use_gets_tritons_errors_over_both_transports(  # type: ignore[no-untyped-def]
    server: RunningServer, transport: str, call, code
) -> None:
    sequence_id = next(_IDS)
    assert call(server, "simple_sequence") == (
        code, "inference request to model 'simple_sequence' must specify a non-zero or non-empty correlation ID"
    )
    assert call(server, "simple_sequence", sequence_id=sequence_id) == (
        code, f"inference request for sequence {sequence_id} to model 'simple_sequence' must specify the START "
        "flag on the first request of the sequence",
    )
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.infer("simple_sequence", _inputs(grpcclient, 1), sequence_id=sequence_id, sequence_start=True,
                     sequence_end=True)
    assert call(server, "simple_sequence", sequence_id=sequence_id)[1].endswith(
        "must specify the START flag on the first request of the sequence"  # a request after END
    )
    assert call(server, "simple_dyna_sequence", sequence_id="abc", sequence_start=True) == (
        code, "sequence batching control 'CORRID' data-type is 'BYTES', but model 'simple_dyna_sequence' "
        "expects 'UINT64'",
    )
    assert call(server, "simple_string_dyna_sequence", sequence_id=sequence_id, sequence_start=True) == (
        code, "sequence batching control 'CORRID' data-type is 'UINT64', but model 'simple_string_dyna_sequence' "
        "expects 'BYTES'",
    )


def test_metadata_lists_no_control_or_state_inputs_and_config_has_tritons_defaults(server: RunningServer) -> None:
    with httpclient.InferenceServerClient(server.http_url) as client:
        metadata = client.get_model_metadata("simple_string_dyna_sequence")
        assert [t["name"] for t in metadata["inputs"]] == ["INPUT"]
        assert [t["name"] for t in metadata["outputs"]] == ["OUTPUT"]
        config = client.get_model_config("simple_dyna_sequence")
    batching = config["sequence_batching"]
    assert batching["oldest"]["preferred_batch_size"] == [8]
    assert [c["name"] for c in batching["control_input"]] == ["START", "END", "READY", "CORRID"]


def test_statistics_count_sequence_executions(server: RunningServer) -> None:
    sequence_id = next(_IDS)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        before = client.get_inference_statistics("simple_sequence", as_json=True)["model_stats"][0]
        for i in range(3):
            client.infer("simple_sequence", _inputs(grpcclient, i), sequence_id=sequence_id,
                         sequence_start=i == 0, sequence_end=i == 2)
        after = client.get_inference_statistics("simple_sequence", as_json=True)["model_stats"][0]
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 3
    assert int(after["execution_count"]) - int(before.get("execution_count", 0)) >= 3  # other tests share the server


async def test_many_concurrent_sequences_keep_their_own_order_and_state(server: RunningServer) -> None:
    """More sequences than ``simple_sequence`` has slots (8: the rest wait in the backlog), and batches of
    ``simple_string_dyna_sequence`` mixing sequences: every answer is its own sequence's."""
    import tritonclient.grpc.aio as aioclient

    base = next(_IDS) * 10
    steps = list(range(1, 7))

    async def run(client: aioclient.InferenceServerClient, model: str, sequence_id: int | str) -> list[int]:
        answers = []
        for i, value in enumerate(steps):
            result = await client.infer(
                model, _inputs(aioclient, value), sequence_id=sequence_id,
                sequence_start=i == 0, sequence_end=i == len(steps) - 1,
            )
            answers.append(int(result.as_numpy("OUTPUT")[0][0]))
        return answers

    async with aioclient.InferenceServerClient(server.grpc_url) as client:
        direct = [run(client, "simple_sequence", base + n) for n in range(1, 21)]
        stateful = [run(client, "simple_string_dyna_sequence", str(base + n)) for n in range(1, 21)]
        results = await asyncio.gather(*direct, *stateful)
    assert results[:20] == [[2, *steps[1:]]] * 20
    for n, answers in enumerate(results[20:], 1):
        sums = list(itertools.accumulate(steps))
        sums[-1] += base + n
        assert answers == sums
