"""``v2server.client`` against a real server: single and batch requests, batches split, links followed, one
typed error carrying the server's message, timeouts, API keys, and asynchronous jobs with a webhook."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.assets.test_models import save_queued_model
from tests.conftest import BUNDLED_REPOSITORY, RunningServer, loopback_settings
from v2server import client
from v2server.client import Job, V2ServerError, get_inference, infer_async

MODELS = ("example_adder", "example_doubler", "example_dict_doubler", "simple")


class Recorder:
    """Every request the client sends: (method, URL, headers)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []


@pytest.fixture()
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    seen = Recorder()
    real = urllib.request.urlopen

    def urlopen(request: urllib.request.Request, *args: Any, **kwargs: Any) -> Any:
        seen.requests.append((request.get_method(), request.full_url, dict(request.header_items())))
        return real(request, *args, **kwargs)

    monkeypatch.setattr(client.urllib.request, "urlopen", urlopen)
    return seen


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    running = RunningServer(loopback_settings(
        BUNDLED_REPOSITORY, model_control_mode="explicit", load_models=MODELS, allow_grpc=False, allow_metrics=False,
    ))
    yield f"http://{running.http_url}"
    running.stop()


def _raw(url: str, path: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_single_requests(url: str) -> None:
    assert get_inference(url, "example_doubler", 10) == {"data": 20}
    assert get_inference(url, "example_dict_doubler", {"value": 10}) == {"data": 20}
    assert get_inference(url, "example_adder", [3, 4, 5], version=1) == {"data": 12}


def test_a_batch_split_into_requests_answers_as_one_request_would(url: str, recorder: Recorder) -> None:
    rows = [["b", 1, 1, 1], [2, 3, 4, 5], ["a", 6, 7, 8], [1.5, 0, 0, 1], [7, 1, 2, 3]]
    whole = get_inference(url, "example_adder", rows)
    assert whole == {"data": [[1.5, 1], [2, 12], [7, 6], ["a", 21], ["b", 3]]}
    recorder.requests.clear()
    assert get_inference(url, "example_adder", rows, batch_size=2) == whole
    assert [method for method, _, _ in recorder.requests] == ["POST"] * 3
    assert all(address.endswith("/v1/example_adder/latest?batch=true") for _, address, _ in recorder.requests)
    assert get_inference(url, "example_adder", rows, batch_size=100) == whole


def test_batch_size_needs_rows_with_unique_ids(url: str) -> None:
    with pytest.raises(ValueError, match="non-empty list of rows"):
        get_inference(url, "example_adder", 5, batch_size=2)
    with pytest.raises(ValueError, match="used more than once"):
        get_inference(url, "example_adder", [[1, 1, 1, 1], [1.0, 2, 2, 2]], batch_size=1)
    with pytest.raises(ValueError, match="positive integer"):
        get_inference(url, "example_adder", [[1, 1, 1, 1]], batch_size=0)


def test_links_are_followed_without_the_api_key(url: str, recorder: Recorder) -> None:
    rows = [[1, 3, 4, 5], [2, 6, 7, 8], [3, 0, 0, 0]]
    assert get_inference(url, "example_adder", rows, response_format="links", batch_size=2) == {
        "data": [[1, 12], [2, 21], [3, 0]]
    }
    methods = [(method, address.split("?")[0].rsplit("/", 1)[0]) for method, address, _ in recorder.requests]
    assert methods == [("POST", f"{url}/v1/example_adder"), ("GET", f"{url}/v1/results")] * 2
    assert get_inference(url, "example_doubler", 4, response_format="links") == {"data": 8}


def test_errors_carry_the_servers_status_and_message(url: str) -> None:
    for model, data in (("example_doubler", "x"), ("no_such_model", 1), ("example_adder", [1, 2])):
        status, body = _raw(url, f"/v1/{model}/latest", {"data": data})
        with pytest.raises(V2ServerError) as caught:
            get_inference(url, model, data)
        assert (caught.value.status, caught.value.message) == (status, body["error"]) and status in (400, 404)
    with pytest.raises(V2ServerError) as caught:
        get_inference(url, "example_doubler", 1, version="no-such-alias")
    assert caught.value.status == 404 and "alias" in caught.value.message
    with pytest.raises(V2ServerError) as caught:
        get_inference(url, "example_doubler", 1, response_format="xml")
    assert caught.value.status == 400 and "'response_format' must be one of" in caught.value.message


def test_no_server_is_an_error_without_a_status() -> None:
    with pytest.raises(V2ServerError) as caught:
        get_inference("http://127.0.0.1:9", "m", 1, timeout=5)
    assert caught.value.status is None and "cannot reach" in caught.value.message


def test_api_keys(tmp_path: Path, recorder: Recorder) -> None:
    running = RunningServer(loopback_settings(
        BUNDLED_REPOSITORY, model_control_mode="explicit", load_models=("example_doubler",), allow_grpc=False,
        allow_metrics=False, api_keys=("k",),
    ))
    try:
        server = f"http://{running.http_url}"
        with pytest.raises(V2ServerError) as caught:
            get_inference(server, "example_doubler", 1)
        assert caught.value.status == 401
        assert get_inference(server, "example_doubler", 1, api_key="k", response_format="links") == {"data": 2}
        post, get = recorder.requests[-2:]
        assert post[2].get("Authorization") == "Bearer k" and "Authorization" not in get[2]
    finally:
        running.stop()


def test_the_timeout_reaches_the_server_and_its_504_message_comes_back(tmp_path: Path) -> None:
    save_queued_model(tmp_path)
    running = RunningServer(loopback_settings(tmp_path, allow_grpc=False, allow_metrics=False))
    try:
        server = f"http://{running.http_url}"
        with pytest.raises(V2ServerError) as caught:
            get_inference(server, "queued", 4, timeout=0.3)
        assert caught.value.status == 504 and "did not finish within its timeout" in caught.value.message
        assert get_inference(server, "queued", 4, timeout=30) == {"data": 8}
    finally:
        running.stop()


# -- asynchronous jobs -------------------------------------------------------------------------------------


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    _Hook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Hook.received
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_infer_async_returns_a_job_that_runs_and_delivers(tmp_path: Path,
                                                          webhook: tuple[str, list[dict[str, Any]]]) -> None:
    hook, received = webhook
    running = RunningServer(loopback_settings(
        BUNDLED_REPOSITORY, model_control_mode="explicit", load_models=("example_doubler",), allow_grpc=False,
        allow_metrics=False, api_keys=("k",), webhook_allow=("127.0.0.1",),
    ))
    try:
        server = f"http://{running.http_url}"
        job = infer_async(server, "example_doubler", [[1, 10], [2, 11]], webhook=hook, api_key="k")
        assert isinstance(job, Job) and job.status_url == f"{server}/v1/jobs/{job.id}"
        state = job.wait(timeout=60)
        assert state["status"] in ("delivered", "succeeded") and state["job"] == job.id
        assert job.result(timeout=60) == {"data": [[1, 20], [2, 22]]}
        assert Job(job.id, job.status_url, "k").wait(timeout=60)["job"] == job.id  # a Job rebuilt from its id
        for _ in range(100):
            if received:
                break
            threading.Event().wait(0.1)
        assert received and received[0]["job"] == job.id and received[0]["data"] == [[1, 20], [2, 22]]
        with pytest.raises(V2ServerError) as caught:  # the status URL needs the key too
            Job(job.id, job.status_url, None).status()
        assert caught.value.status == 401
        with pytest.raises(V2ServerError) as caught:  # bad data is refused before a job exists
            infer_async(server, "example_doubler", "x", webhook=hook, api_key="k")
        assert caught.value.status == 400 and "INT64" in caught.value.message
        with pytest.raises(V2ServerError) as caught:
            infer_async(server, "example_doubler", 1, webhook="not a url", api_key="k")
        assert caught.value.status == 400
    finally:
        running.stop()
