"""API keys on both transports (health stays open) and CORS for browser callers."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import BUNDLED_REPOSITORY, RunningServer, http_call, loopback_settings
from v2server.auth import ApiKeys, read_keys

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("secured")  # the alias route writes aliases.json: not into the checkout
    shutil.copytree(BUNDLED_REPOSITORY / "simple", repo / "simple")
    running = RunningServer(loopback_settings(
        repo, api_keys=(KEY, "other-key"), cors_allow_origins=("https://app.example",),
        model_control_mode="explicit", load_models=("simple",),
    ))
    yield running
    running.stop()




def _simple_inputs(module):  # type: ignore[no-untyped-def]
    data = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
    for tensor in inputs:
        tensor.set_data_from_numpy(data)
    return inputs


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v2", None),
        ("GET", "/v2/models/simple", None),
        ("GET", "/v2/models/simple/config", None),
        ("GET", "/v2/models/stats", None),
        ("POST", "/v2/models/simple/infer", b"{}"),
        ("POST", "/v2/repository/index", b""),
        ("POST", "/v2/repository/models/simple/load", b""),
        ("GET", "/v2/no/such/route", None),
        ("POST", "/v1/simple/latest", b'{"data": []}'),
        ("GET", "/v1/simple/aliases", None),
        ("PUT", "/v1/simple/aliases/official", b'{"version": 1}'),
        ("POST", "/predict", b"{}"),
        ("POST", "/models/simple/predict", b"{}"),
    ],
)
def test_every_rest_route_but_health_needs_a_key(secured: RunningServer, method: str, path: str,
                                                 body: bytes | None) -> None:
    field = "detail" if path.endswith("predict") else "error"  # /predict answers errors as {"detail": ...}
    status, _, payload = http_call(secured, method, path, body=body)
    assert status == 401 and "API key" in json.loads(payload)[field]
    status, _, payload = http_call(secured, method, path, body, {"Authorization": "Bearer wrong"})
    assert status == 401 and json.loads(payload)[field] == "invalid API key"
    for header in (f"Bearer {KEY}", KEY, "bearer other-key"):
        status, _, _ = http_call(secured, method, path, body, {"Authorization": header})
        assert status != 401


def test_health_routes_stay_open(secured: RunningServer) -> None:
    assert http_call(secured, "GET", "/v2/health/live")[0] == 200
    assert http_call(secured, "GET", "/v2/health/ready")[0] == 200


def test_tritonclient_http_with_headers(secured: RunningServer) -> None:
    client = httpclient.InferenceServerClient(secured.http_url)
    try:
        with pytest.raises(InferenceServerException) as info:
            client.infer("simple", _simple_inputs(httpclient))
        assert info.value.status() == "401"
        result = client.infer("simple", _simple_inputs(httpclient), headers={"Authorization": f"Bearer {KEY}"})
        assert result.as_numpy("OUTPUT0")[0, 1] == 2
    finally:
        client.close()


def test_grpc_needs_the_key_except_health(secured: RunningServer) -> None:
    with grpcclient.InferenceServerClient(secured.grpc_url) as client:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("simple")
        for call in (lambda: client.get_server_metadata(), lambda: client.infer("simple", _simple_inputs(grpcclient)),
                     lambda: client.get_model_repository_index()):
            with pytest.raises(InferenceServerException) as info:
                call()
            assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException, match="invalid API key"):
            client.get_server_metadata(headers={"authorization": "Bearer nope"})
        good = {"authorization": f"Bearer {KEY}"}
        assert client.get_server_metadata(headers=good).name == "v2server"
        assert client.infer("simple", _simple_inputs(grpcclient), headers=good).as_numpy("OUTPUT1")[0, 0] == 0


def test_grpc_stream_needs_the_key(secured: RunningServer) -> None:
    import queue

    answers: queue.Queue = queue.Queue()  # type: ignore[type-arg]
    with grpcclient.InferenceServerClient(secured.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)),
                            headers={"authorization": KEY})
        client.async_stream_infer("simple", _simple_inputs(grpcclient), request_id="a")
        client.stop_stream()
    result, error = answers.get(timeout=30)
    assert error is None and result.get_response().id == "a"


def test_cors_preflight_and_headers(secured: RunningServer) -> None:
    status, headers, _ = http_call(secured, "OPTIONS", "/v2/models/simple/infer", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    })
    assert status == 204
    assert headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in headers["access-control-allow-headers"].lower()
    status, headers, _ = http_call(secured, "GET", "/v2/health/live", headers={"Origin": "https://app.example"})
    assert headers["access-control-allow-origin"] == "https://app.example"
    status, headers, _ = http_call(secured, "GET", "/v2/health/live", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in headers


def test_key_sources(tmp_path) -> None:  # type: ignore[no-untyped-def]
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nfile-key\n\n  spaced-key  # trailing comment\n")
    keys = read_keys(["flag-key"], keys_file, {"V2SERVER_API_KEYS": "env-a, env-b,"})
    assert keys == ("flag-key", "env-a", "env-b", "file-key", "spaced-key")
    assert read_keys((), None, {}) == ()


def test_open_server_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="v2server.auth")
    ApiKeys(()).announce()
    assert any("open to anyone" in r.getMessage() for r in caplog.records)
    caplog.clear()
    ApiKeys(["k"]).announce()
    assert not any(r.getMessage() == "k" for r in caplog.records)
