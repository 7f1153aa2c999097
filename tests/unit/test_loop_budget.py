"""The event loop's budget, over the REST handlers and a fake core: large work leaves the loop, limits come
before per-row work, a batch's executions are bounded, and answers are compressed only where it pays.

No test here measures time: the responsiveness test gates the parse of a large body and asserts an ordering
(a health request sent while that parse runs is answered before it finishes).
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import gzip
import json
import threading
import zlib
from typing import Any

import numpy as np
import pytest

from tests.unit.fake_core import FakeCore
from v2server._proto import grpc_service_pb2 as pb
from v2server.errors import InferenceFailed, InvalidRequest
from v2server.offload import INLINE_BYTES, run_sized
from v2server.rest_api import handlers
from v2server.rest_api.app import make_app
from v2server.rest_api.simple_handlers import CONCURRENT_REQUESTS


def _v2_body(values: np.ndarray, binary_output: bool = False) -> bytes:
    return json.dumps({
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [len(values)], "data": values.tolist()}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": binary_output}}],
    }).encode()


# -- what leaves the loop ----------------------------------------------------------------------------------


async def test_small_work_stays_inline_and_large_work_goes_to_a_thread() -> None:
    loop_thread = threading.get_ident()
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker")
    marker.set("caller's")
    where = lambda: (threading.get_ident(), marker.get())  # noqa: E731
    assert await run_sized(INLINE_BYTES, where) == (loop_thread, "caller's")
    thread, seen = await run_sized(INLINE_BYTES + 1, where)
    assert thread != loop_thread and seen == "caller's"


async def test_a_worker_pauses_collections_and_restores_them_as_they_were() -> None:
    seen = lambda: gc.isenabled()  # noqa: E731
    assert gc.isenabled()
    assert await run_sized(INLINE_BYTES + 1, seen) is False and gc.isenabled()
    gc.disable()
    try:
        assert await run_sized(INLINE_BYTES + 1, seen) is False and not gc.isenabled()
    finally:
        gc.enable()


async def test_an_error_from_a_worker_comes_back_without_the_worker_s_frames() -> None:
    def fail(document: list[float]) -> None:
        raise InvalidRequest("bad input")

    with pytest.raises(InvalidRequest, match="^bad input$") as caught:
        await run_sized(INLINE_BYTES + 1, fail, [0.0] * 10)
    frames = []
    traceback = caught.value.__traceback__
    while traceback is not None:
        frames.append(traceback.tb_frame.f_code.co_name)
        traceback = traceback.tb_next
    assert "fail" not in frames  # its locals (a parsed document) are freed in the worker, not here


async def test_health_is_answered_while_a_large_body_is_parsed(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parse of a large body is held until the health answer is in: it can be held only off the loop."""
    started, release = threading.Event(), threading.Event()
    parse = handlers.parse_infer_parts

    def held_parse(*args: Any) -> Any:
        started.set()
        release.wait(timeout=10)  # on the loop (the old way), this would hold the health request behind it
        return parse(*args)

    monkeypatch.setattr(handlers, "parse_infer_parts", held_parse)
    fetch = await serve(make_app(FakeCore()))
    body = _v2_body(np.arange(20_000, dtype=np.float32))
    assert len(body) > INLINE_BYTES
    infer = asyncio.ensure_future(fetch("POST", "/v2/models/m/infer", body))
    assert await asyncio.to_thread(started.wait, 10)
    health = await fetch("GET", "/v2/health/live")
    order = ["infer" if infer.done() else "health"]
    release.set()
    response = await infer
    assert health.code == 200 and response.code == 200
    assert order == ["health"]  # answered before the parse, which was still held, finished


async def test_a_large_json_body_is_right_through_the_thread_path(serve: Any) -> None:
    fetch = await serve(make_app(FakeCore()))
    values = np.random.default_rng(3).random(150_000).astype(np.float32)  # > one parse piece, > one render piece
    response = await fetch("POST", "/v2/models/m/infer", _v2_body(values))
    assert response.code == 200 and "Content-Encoding" not in response.headers
    output = json.loads(response.body)["outputs"][0]
    assert output["shape"] == [150_000]
    np.testing.assert_array_equal(np.array(output["data"], np.float32), values)


# -- limits before work ------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_gzip_bomb_is_413_and_health_still_answers(serve: Any, encoding: str) -> None:
    fetch = await serve(make_app(FakeCore(), max_body_size=64 * 1024))
    packer = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
    bomb = b"".join([*(packer.compress(bytes(1 << 20)) for _ in range(32)), packer.flush()])
    response = await fetch("POST", "/v2/models/m/infer", bomb, {"Content-Encoding": encoding})
    assert response.code == 413
    assert json.loads(response.body) == {
        "error": "request body inflates past the limit of 65536 bytes (--http-max-body-size)"
    }
    assert (await fetch("GET", "/v2/health/live")).code == 200


async def test_a_batch_over_max_batch_rows_is_413_before_any_row_is_read(serve: Any) -> None:
    core = FakeCore()
    fetch = await serve(make_app(core, max_batch_rows=10))
    rows: list[list[Any]] = [[i, float(i)] for i in range(11)]
    rows[5][1] = "not a number"  # never read: the row count is refused first
    response = await fetch("POST", "/v1/m/latest", json.dumps({"data": rows}).encode())
    assert (response.code, json.loads(response.body)) == (413, {
        "error": "a batch of 11 rows exceeds the limit of 10 rows per request (--max-batch-rows); "
                 "send it as several requests"
    })
    response = await fetch("POST", "/models/m/predict", json.dumps({"INPUT0": [[1.0]] * 11}).encode())
    assert response.code == 413 and "(--max-batch-rows)" in json.loads(response.body)["detail"]
    assert [rpc for rpc, _ in core.calls] == ["ModelConfig", "ModelConfig"]
    response = await fetch("POST", "/v1/m/latest", json.dumps({"data": [[i, float(i)] for i in range(10)]}).encode())
    assert response.code == 200


# -- bounded fan-out ---------------------------------------------------------------------------------------


class CountingCore(FakeCore):
    """Counts the inferences in flight at once (each one yields to the loop once)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most = 0

    async def ModelInfer(self, request: pb.ModelInferRequest, raw: Any = None) -> pb.ModelInferResponse:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(0)
            return await super().ModelInfer(request, raw)
        finally:
            self.in_flight -= 1


async def test_a_batch_runs_a_bounded_number_of_executions_at_once(serve: Any) -> None:
    core = CountingCore()
    fetch = await serve(make_app(core))
    rows = [[i, float(i)] for i in range(200)]  # model m has no batching: one execution per row
    response = await fetch("POST", "/v1/m/latest", json.dumps({"data": rows[::-1]}).encode())
    assert response.code == 200 and json.loads(response.body) == {"data": rows}
    assert len(core.calls) == 1 + 200
    assert 1 < core.most <= CONCURRENT_REQUESTS


async def test_a_failed_execution_stops_the_rest_of_the_batch(serve: Any) -> None:
    core = CountingCore()
    core.infer_error = InferenceFailed("boom")
    fetch = await serve(make_app(core))
    response = await fetch("POST", "/v1/m/latest", json.dumps({"data": [[i, 1.0] for i in range(200)]}).encode())
    assert (response.code, json.loads(response.body)) == (500, {"error": "boom"})
    assert len(core.calls) - 1 <= CONCURRENT_REQUESTS  # the rows after the first failures never ran


# -- compression where it pays -----------------------------------------------------------------------------


async def test_answers_are_compressed_only_where_it_pays(serve: Any) -> None:
    fetch = await serve(make_app(FakeCore()))
    accept = {"Accept-Encoding": "gzip, deflate"}
    values = np.random.default_rng(4).random(50_000).astype(np.float32)
    # a large JSON answer shrinks: compressed
    response = await fetch("POST", "/v2/models/m/infer", _v2_body(values), accept)
    assert response.code == 200 and response.headers["Content-Encoding"] == "gzip"
    output = json.loads(gzip.decompress(response.body))["outputs"][0]
    np.testing.assert_array_equal(np.array(output["data"], np.float32), values)
    # the same floats as binary hardly shrink: sent as they are, without Content-Encoding
    response = await fetch("POST", "/v2/models/m/infer", _v2_body(values, binary_output=True), accept)
    assert response.code == 200 and "Content-Encoding" not in response.headers
    length = int(response.headers["Inference-Header-Content-Length"])
    np.testing.assert_array_equal(np.frombuffer(response.body[length:], np.float32), values)
    # a tiny answer: not worth it
    response = await fetch("POST", "/v2/models/m/infer", _v2_body(values[:3]), accept)
    assert response.code == 200 and "Content-Encoding" not in response.headers
    assert json.loads(response.body)["outputs"][0]["shape"] == [3]
