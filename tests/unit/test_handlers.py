"""The REST handlers over a fake core: what they send to the core and how they render its answers and errors."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.netutil

from tests.unit.fake_core import REPORT, FakeCore
from v2server.access_log import AccessLog
from v2server.auth import ApiKeys
from v2server.errors import InferenceFailed, InvalidRequest
from v2server.rest_api.app import make_app


@pytest.fixture()
def core() -> FakeCore:
    return FakeCore()


def _json(response: tornado.httpclient.HTTPResponse) -> Any:
    return json.loads(response.body)


# -- the raw binary request is one core call --------------------------------------------------------------


async def test_raw_binary_request_is_one_model_infer_without_inputs(core: FakeCore, serve: Any) -> None:
    fetch = await serve(make_app(core))
    data = np.arange(6, dtype=np.float32).tobytes()
    response = await fetch("POST", "/v2/models/m/versions/2/infer", data, {"Inference-Header-Content-Length": "0"})
    assert response.code == 200, response.body
    [(rpc, request)] = core.calls
    assert rpc == "ModelInfer" and request.model_name == "m" and request.model_version == "2"
    assert list(request.inputs) == [] and list(request.raw_input_contents) == [data]
    length = int(response.headers["Inference-Header-Content-Length"])  # outputs come back binary
    assert json.loads(response.body[:length])["outputs"][0]["parameters"]["binary_data_size"] == len(data)
    assert response.body[length:] == data


# -- one error mapping, one body style per route family ---------------------------------------------------


async def test_v2_and_v1_routes_answer_errors_as_error(core: FakeCore, serve: Any) -> None:
    fetch = await serve(make_app(core))
    response = await fetch("GET", "/v2/models/nope/config")
    assert (response.code, _json(response)) == (404, {"error": "unknown model 'nope'"})
    core.infer_error = InferenceFailed("boom")
    response = await fetch("POST", "/v1/m/latest", b'{"data": [1.0]}')
    assert (response.code, _json(response)) == (500, {"error": "boom"})
    response = await fetch("GET", "/v2/models/m/infer")  # Tornado's 405: its status text
    assert (response.code, _json(response)) == (405, {"error": "Method Not Allowed"})
    response = await fetch("GET", "/no/such/route")
    assert (response.code, _json(response)) == (404, {"error": "no route for GET /no/such/route"})


async def test_predict_answers_errors_as_detail(core: FakeCore, serve: Any) -> None:
    fetch = await serve(make_app(core))
    core.infer_error = InferenceFailed("boom")
    response = await fetch("POST", "/models/m/predict", b'{"INPUT0": [1.0]}')
    assert (response.code, _json(response)) == (500, {"detail": "Inference failed: boom"})
    core.infer_error = InvalidRequest("bad input")
    response = await fetch("POST", "/predict", b'{"INPUT0": [1.0]}')  # the only model
    assert (response.code, _json(response)) == (400, {"detail": "bad input"})
    response = await fetch("POST", "/models/nope/predict", b'{"INPUT0": [1.0]}')
    assert (response.code, _json(response)) == (404, {"detail": "unknown model 'nope'"})


async def test_refusals_before_the_body_use_the_route_style(core: FakeCore, serve: Any) -> None:
    fetch = await serve(make_app(core, keys=ApiKeys(("k",)), max_body_size=1000))
    for path, field in (("/predict", "detail"), ("/v2/models/m/infer", "error"), ("/v1/m/latest", "error")):
        response = await fetch("POST", path, b"{}", {"Authorization": "Bearer wrong"})
        assert (response.code, _json(response)) == (401, {field: "invalid API key"})
        response = await fetch("POST", path, b"x" * 2000, {"Authorization": "Bearer k"})
        assert response.code == 413 and "exceeds the limit of 1000 bytes" in _json(response)[field]
    assert not [rpc for rpc, _ in core.calls if rpc == "ModelInfer"]
    assert (await fetch("GET", "/v2/health/live")).code == 200  # probes stay open


async def test_successful_answers(core: FakeCore, serve: Any) -> None:
    fetch = await serve(make_app(core))
    assert (await fetch("GET", "/v2/health/live")).code == 200
    assert (await fetch("GET", "/v2/health/ready")).code == 400
    assert _json(await fetch("POST", "/v1/m/latest", b'{"data": [2.5]}')) == {"data": 2.5}
    assert _json(await fetch("POST", "/predict", b'{"INPUT0": [2.5]}')) == {"OUTPUT0": 2.5}
    assert core.callers and all(caller is None for caller in core.callers)
    await fetch("GET", "/v2/models/m", headers={"Authorization": "Bearer x"})
    assert core.callers[-1] == "Bearer x"  # each request binds the core to its caller


# -- aliases through the typed core ------------------------------------------------------------------------


async def test_a_core_without_aliases_answers_501_and_plain_metadata(core: FakeCore, serve: Any) -> None:
    fetch = await serve(make_app(core))
    for method, path, body in (("POST", "/v1/m/official", b'{"data": [1.0]}'), ("GET", "/v1/m/aliases", None),
                               ("PUT", "/v1/m/aliases/a", b'{"version": 1}'), ("DELETE", "/v1/m/aliases/a", None)):
        response = await fetch(method, path, body)
        assert response.code == 501 and "version aliases" in _json(response)["error"], path
    metadata = _json(await fetch("GET", "/v2/models/m"))
    assert metadata["name"] == "m" and "parameters" not in metadata


async def test_aliases_in_metadata_and_selectors(serve: Any) -> None:
    core = FakeCore(aliases={"official": 1})
    fetch = await serve(make_app(core))
    assert _json(await fetch("GET", "/v2/models/m"))["parameters"] == {"aliases": {"official": 1}}
    assert _json(await fetch("POST", "/v1/m/official", b'{"data": [1.0]}')) == {"data": 1.0}
    assert core.calls[-1][1].model_version == "1"
    assert _json(await fetch("PUT", "/v1/m/aliases/next", b'{"version": 2}')) == {"official": 1, "next": 2}
    assert _json(await fetch("DELETE", "/v1/m/aliases/official")) == {"next": 2}
    assert (await fetch("GET", "/v1/m/aliases/official")).code == 404


# -- the access log hears the core's report on the handler's own requests --------------------------------


async def test_access_log_lines_carry_the_cores_report(core: FakeCore, serve: Any,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="v2server.access")
    access = AccessLog("json")
    app = make_app(core, access=access)
    make_app(core, access=access)  # a second app on the same core and log subscribes it once
    assert core.observers == [access]
    fetch = await serve(app)
    await fetch("POST", "/v2/models/m/infer", b'{"id": "r1", "inputs": [{"name": "INPUT0", "datatype": "FP32", '
                                               b'"shape": [1], "data": [1.0]}]}')
    await fetch("POST", "/v1/m/2", b'{"data": [1.0]}')
    await fetch("GET", "/v2/models/m/config")
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "v2server.access"]
    infer, v1, config = lines
    assert infer == {
        "protocol": "http", "route": "POST /v2/models/m/infer", "request_id": "r1", "model": "m", "version": "1",
        "status": "200", "batch_size": REPORT["batch_size"], "queue_us": 2.0, "compute_us": 3.0,
        "duration_us": infer["duration_us"],
    }
    assert v1["model"] == "m" and v1["batch_size"] == REPORT["batch_size"] and v1["status"] == "200"
    assert config["model"] == "" and config["batch_size"] == 0  # no inference, no report
