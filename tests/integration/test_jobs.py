"""Asynchronous ``/v1`` jobs against a real server and a webhook receiver on 127.0.0.1.

Delivery and its signature (verified exactly as docs/jobs.md tells a receiver to), retries, delivery-failed,
errors and timeouts, expiry, key isolation, ``--max-pending-jobs``, webhook target refusals. Restart recovery
(SIGKILL) is in ``test_jobs_restart.py``. No wall-clock thresholds: tests wait on the receiver's events or poll
the job's status, with generous bounds.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.assets.test_models import Failing, save_queued_model
from tests.conftest import BUNDLED_REPOSITORY, RunningServer, loopback_settings

SECRET = "test-secret"


# -- a webhook receiver --------------------------------------------------------------------------------------


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST; ``fail[path] = n`` answers 500 to the first n POSTs
    to ``path``; ``status`` answers every POST (after those) with it."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.fail: dict[str, int] = {}
        self.status = 204
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._changed:
                    left = receiver.fail.get(self.path, 0)
                    status = 500 if left else receiver.status
                    if left:
                        receiver.fail[self.path] = left - 1
                    receiver.posts.append({
                        "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body, "status": status, "at": time.time(),
                    })
                    receiver._changed.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for(self, condition: Callable[[list[dict[str, Any]]], bool], timeout: float = 60) -> list[dict[str, Any]]:
        with self._changed:
            assert self._changed.wait_for(lambda: condition(self.posts), timeout), f"receiver saw {self.posts}"
            return list(self.posts)

    def to(self, path: str) -> list[dict[str, Any]]:
        with self._changed:
            return [post for post in self.posts if post["path"] == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance: float = 300) -> bool:
    """The receiver's check, as docs/jobs.md gives it."""
    timestamp = headers["x-v2server-timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["x-v2server-signature"]) and abs(time.time() - int(timestamp)) <= tolerance


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


# -- servers -------------------------------------------------------------------------------------------------


def _repository(root: Path, delay_us: int = 1_500_000) -> Path:
    """``example_adder``; ``queued``: a batching model whose lone request waits ``delay_us`` in its queue;
    ``failing``: raises for a negative input."""
    shutil.copytree(BUNDLED_REPOSITORY / "example_adder", root / "example_adder")
    save_queued_model(root, delay_us)
    failing = root / "failing"
    (failing / "1").mkdir(parents=True)
    torch.jit.script(Failing()).save(str(failing / "1" / "model.pt"))
    (failing / "config.pbtxt").write_text(
        'name: "failing"\nplatform: "pytorch_libtorch"\nmax_batch_size: 0\n'
        'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }]\n'
        'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }]\ninstance_group [{ kind: KIND_CPU }]\n'
    )
    return root


def _server(tmp_path: Path, **overrides: Any) -> RunningServer:
    values: dict[str, Any] = {
        "allow_grpc": False, "allow_metrics": False, "state_dir": tmp_path / "state",
        "webhook_allow": ("127.0.0.1",), "webhook_secret": SECRET, "webhook_backoff_seconds": 0.01,
        "webhook_backoff_max_seconds": 0.05, "webhook_attempts": 4,
    }
    values.update(overrides)
    return RunningServer(loopback_settings(_repository(tmp_path / "repo"), **values))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = _server(tmp_path_factory.mktemp("jobs"))
    yield running
    running.stop()


def call(server: RunningServer, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    connection = http.client.HTTPConnection(server.http_url, timeout=60)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None, {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def submit(server: RunningServer, receiver: Receiver, body: dict[str, Any], path: str = "/hook",
           model: str = "example_adder", headers: dict[str, str] | None = None) -> str:
    status, answer, response_headers = call(
        server, "POST", f"/v1/{model}/latest", {**body, "response_webhook": receiver.url(path)}, headers
    )
    assert status == 202, answer
    assert set(answer) == {"job", "status_url"} and answer["status_url"] == f"/v1/jobs/{answer['job']}"
    assert response_headers["location"] == answer["status_url"]
    return str(answer["job"])


def wait_status(server: RunningServer, job: str, states: set[str], headers: dict[str, str] | None = None,
                timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, answer, _ = call(server, "GET", f"/v1/jobs/{job}", headers=headers)
        assert status == 200, answer
        if answer["status"] in states:
            return dict(answer)
        assert time.monotonic() < deadline, answer
        time.sleep(0.02)


# -- delivery ------------------------------------------------------------------------------------------------


def test_a_job_is_accepted_run_and_delivered_signed(server: RunningServer, receiver: Receiver) -> None:
    job = submit(server, receiver, {"data": [[1, 3, 4, 5], [2, 6, 7, 8]]})
    posts = receiver.wait_for(lambda posts: len(posts) == 1)
    post = posts[0]
    assert json.loads(post["body"]) == {"job": job, "data": [[1, 12], [2, 21]]}
    headers = post["headers"]
    assert headers["idempotency-key"] == job and headers["x-v2server-job"] == job
    assert headers["x-v2server-attempt"] == "1" and headers["content-type"] == "application/json"
    assert verify(SECRET, headers, post["body"])
    assert not verify("another secret", headers, post["body"])
    assert not verify(SECRET, headers, post["body"] + b" ")
    status = wait_status(server, job, {"delivered"})
    assert status["data"] == [[1, 12], [2, 21]] and status["outcome"] == "succeeded"
    assert status["attempts"] == 1 and status["last_error"] is None and status["model"] == "example_adder"
    for field in ("created_at", "started_at", "finished_at", "delivered_at", "result_expires_at"):
        assert status[field].endswith("Z"), field
    assert status["created_at"] <= status["started_at"] <= status["finished_at"] <= status["delivered_at"]


def test_a_failed_inference_delivers_its_error(server: RunningServer, receiver: Receiver) -> None:
    job = submit(server, receiver, {"data": [-1.0]}, model="failing")
    posts = receiver.wait_for(lambda posts: len(posts) == 1)
    body = json.loads(posts[0]["body"])
    assert set(body) == {"job", "error"} and body["job"] == job
    assert "negative input is not allowed" in body["error"]
    status = wait_status(server, job, {"delivered"})
    assert status["outcome"] == "failed" and status["error"] == body["error"]
    sync = call(server, "POST", "/v1/failing/latest", {"data": [-1.0]})
    assert sync[0] == 500 and sync[1]["error"] == body["error"]  # the error the synchronous request gets


def test_bad_bodies_are_refused_at_once(server: RunningServer, receiver: Receiver) -> None:
    hook = receiver.url()
    cases = [
        ({"data": "four", "response_webhook": hook}, 400, "INPUT0"),
        ({"data": 4, "response_webhook": 7}, 400, "'response_webhook' must be a URL"),
        ({"data": 4, "response_webhook": hook, "response_webhook_ignore_timeout": "yes"}, 400, "true or false"),
        ({"data": 4, "response_webhook_ignore_timeout": True}, 400, "add 'response_webhook'"),
        ({"data": 4, "response_timeout": 0}, 400, "'response_timeout' must be a positive number"),
        ({"data": 4, "response_timeout": "5"}, 400, "'response_timeout' must be a positive number"),
    ]
    for body, code, words in cases:
        status, answer, _ = call(server, "POST", "/v1/queued/latest", body)
        assert status == code and words in answer["error"], (body, answer)
    status, answer, _ = call(server, "POST", "/v1/nope/latest", {"data": 4, "response_webhook": hook})
    assert status == 404
    assert receiver.posts == []


def test_unknown_fields_are_still_ignored(server: RunningServer) -> None:
    assert call(server, "POST", "/v1/queued/latest", {"data": 4, "whatever": {"x": 1}})[:2] == (200, {"data": 8})


def test_retries_with_backoff_until_delivered(server: RunningServer, receiver: Receiver) -> None:
    receiver.fail["/flaky"] = 2
    job = submit(server, receiver, {"data": [[1, 1, 1, 1]]}, path="/flaky")
    posts = receiver.wait_for(lambda posts: any(p["status"] == 204 for p in posts))
    assert [p["status"] for p in posts] == [500, 500, 204]
    assert [p["headers"]["x-v2server-attempt"] for p in posts] == ["1", "2", "3"]
    assert {p["headers"]["idempotency-key"] for p in posts} == {job}
    assert len({p["body"] for p in posts}) == 1  # the same body every time
    status = wait_status(server, job, {"delivered"})
    assert status["attempts"] == 3 and status["last_error"] is None


def test_delivery_failed_after_the_attempts(server: RunningServer, receiver: Receiver) -> None:
    receiver.fail["/down"] = 100
    job = submit(server, receiver, {"data": [[1, 1, 1, 1]]}, path="/down")
    status = wait_status(server, job, {"delivery-failed"})
    assert status["attempts"] == 4 and status["last_error"] == "HTTP 500"
    assert status["data"] == [[1, 3]]  # the result is still kept for GET
    assert len(receiver.to("/down")) == 4


def test_a_receiver_that_is_not_there_fails_delivery(tmp_path: Path) -> None:
    server = _server(tmp_path, webhook_attempts=2, webhook_timeout_seconds=5)
    try:
        closed = Receiver()
        closed.close()  # nothing listens on its port any more
        job = submit(server, closed, {"data": [[1, 1, 1, 1]]})
        status = wait_status(server, job, {"delivery-failed"})
        assert status["attempts"] == 2 and "Connection refused" in status["last_error"]
    finally:
        server.stop()


# -- timeouts ------------------------------------------------------------------------------------------------


def test_response_timeout_is_504_and_drops_the_queued_work(server: RunningServer) -> None:
    status, answer, _ = call(server, "POST", "/v1/queued/latest", {"data": 4, "response_timeout": 0.2})
    assert status == 504 and "timeout of 0.2 s" in answer["error"]
    status, answer, _ = call(server, "POST", "/v1/queued/latest?timeout=0.2", {"data": 4, "response_timeout": 30})
    assert status == 504 and "timeout of 0.2 s" in answer["error"]  # the shorter of the two
    assert call(server, "POST", "/v1/queued/latest", {"data": 4, "response_timeout": 30})[:2] == (200, {"data": 8})


def test_an_async_job_that_times_out_delivers_the_504_error(server: RunningServer, receiver: Receiver) -> None:
    job = submit(server, receiver, {"data": 4, "response_timeout": 0.2}, model="queued")
    posts = receiver.wait_for(lambda posts: len(posts) == 1)
    body = json.loads(posts[0]["body"])
    assert set(body) == {"job", "error"} and body["job"] == job and "timeout of 0.2 s" in body["error"]
    status = wait_status(server, job, {"delivered"})
    assert status["outcome"] == "failed" and "timeout of 0.2 s" in status["error"] and "data" not in status


def test_ignore_timeout_lets_a_job_run_past_the_cap(tmp_path: Path, receiver: Receiver) -> None:
    server = _server(tmp_path, max_response_timeout_seconds=0.3)
    try:
        status, answer, _ = call(server, "POST", "/v1/queued/latest", {"data": 4})
        assert status == 504 and "timeout of 0.3 s" in answer["error"]  # the cap holds a synchronous request
        submit(server, receiver, {"data": 4}, path="/capped", model="queued")
        free = submit(server, receiver, {"data": 5, "response_webhook_ignore_timeout": True}, path="/free",
                      model="queued")
        receiver.wait_for(lambda posts: len(posts) == 2)
        assert "timeout of 0.3 s" in json.loads(receiver.to("/capped")[0]["body"])["error"]
        assert json.loads(receiver.to("/free")[0]["body"]) == {"job": free, "data": 10}
    finally:
        server.stop()


# -- expiry, keys, limits ------------------------------------------------------------------------------------


def test_results_and_records_expire(tmp_path: Path, receiver: Receiver) -> None:
    server = _server(tmp_path, job_result_ttl_seconds=0.5, job_record_ttl_seconds=1.5)
    try:
        job = submit(server, receiver, {"data": [[1, 1, 1, 1]]})
        status = wait_status(server, job, {"delivered"})
        assert status["data"] == [[1, 3]] and "result_expired" not in status
        deadline = time.monotonic() + 30
        while "data" in status:
            assert time.monotonic() < deadline
            time.sleep(0.05)
            status = call(server, "GET", f"/v1/jobs/{job}")[1]
        assert status["result_expired"] is True and status["status"] == "delivered"
        while call(server, "GET", f"/v1/jobs/{job}")[0] == 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        code, answer, _ = call(server, "GET", f"/v1/jobs/{job}")
        assert code == 404 and job in answer["error"]
    finally:
        server.stop()


def test_a_job_is_visible_only_with_the_key_that_created_it(tmp_path: Path, receiver: Receiver) -> None:
    server = _server(tmp_path, api_keys=("key-one", "key-two"))
    one = {"Authorization": "Bearer key-one"}
    two = {"Authorization": "Bearer key-two"}
    try:
        job = submit(server, receiver, {"data": [[1, 1, 1, 1]]}, headers=one)
        assert wait_status(server, job, {"delivered"}, headers=one)["data"] == [[1, 3]]
        code, other, _ = call(server, "GET", f"/v1/jobs/{job}", headers=two)
        unknown = call(server, "GET", "/v1/jobs/no-such-job", headers=two)
        assert code == 404 and unknown[0] == 404
        assert other["error"].replace(job, "X") == unknown[1]["error"].replace("no-such-job", "X")  # the same 404
        assert call(server, "GET", f"/v1/jobs/{job}")[0] == 401
    finally:
        server.stop()


def test_past_max_pending_jobs_is_503(tmp_path: Path, receiver: Receiver) -> None:
    server = _server(tmp_path, max_pending_jobs=2, max_running_jobs=1)
    try:
        first = submit(server, receiver, {"data": 1}, model="queued")
        second = submit(server, receiver, {"data": 2}, model="queued")
        status, answer, _ = call(server, "POST", "/v1/queued/latest", {"data": 3, "response_webhook": receiver.url()})
        assert status == 503 and "--max-pending-jobs" in answer["error"]
        wait_status(server, first, {"delivered"})
        wait_status(server, second, {"delivered"})
        third = submit(server, receiver, {"data": 3}, model="queued")  # room again once delivered
        assert wait_status(server, third, {"delivered"})["data"] == 6
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://[fd00:ec2::254]/hook", "metadata"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
        ("http://10.0.0.1/hook", "not allowed by --webhook-allow"),
        ("http://[::1]:1/hook", "not allowed by --webhook-allow"),
        ("ftp://127.0.0.1/hook", "http:// or https://"),
    ],
)
def test_webhook_targets_are_refused_at_submit(server: RunningServer, url: str, words: str) -> None:
    status, answer, _ = call(server, "POST", "/v1/example_adder/latest",
                             {"data": [[1, 1, 1, 1]], "response_webhook": url})
    assert status == 400 and words in answer["error"], answer


def test_without_webhook_allow_loopback_is_refused(tmp_path: Path, receiver: Receiver) -> None:
    server = _server(tmp_path, webhook_allow=())
    try:
        status, answer, _ = call(server, "POST", "/v1/example_adder/latest",
                                 {"data": [[1, 1, 1, 1]], "response_webhook": receiver.url()})
        assert status == 400 and "not a public address" in answer["error"]
    finally:
        server.stop()


def test_unknown_job_ids_are_404(server: RunningServer) -> None:
    for job in ("nope", "a" * 300, "..%2F..", "%00"):
        status, answer, _ = call(server, "GET", f"/v1/jobs/{job}")
        assert status == 404 and "unknown job" in answer["error"]
