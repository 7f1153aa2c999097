"""``/v1`` answers as links (``response_format: "links"``) on a real server: stored, fetched, refused when
tampered with (403), gone when expired (410, the file removed), isolated by key, bounded by size."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.assets.test_models import save_queued_model
from tests.conftest import BUNDLED_REPOSITORY, RunningServer, loopback_settings
from v2server.results import LocalStore


def _settings(**overrides: Any) -> Any:
    return loopback_settings(
        BUNDLED_REPOSITORY, model_control_mode="explicit",
        load_models=("example_adder", "example_dict_doubler", "example_doubler"),
        allow_grpc=False, allow_metrics=False, **overrides,
    )


def _call(server: RunningServer, method: str, target: str, body: Any = None,
          headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """``target``: a path or a whole link (its path and query are sent to ``server``)."""
    parts = urllib.parse.urlsplit(target)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    connection = http.client.HTTPConnection(server.http_url, timeout=30)
    try:
        payload = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=payload, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None
    finally:
        connection.close()


def _link(server: RunningServer, model: str, data: Any, headers: dict[str, str] | None = None) -> str:
    status, answer = _call(server, "POST", f"/v1/{model}/latest", {"data": data, "response_format": "links"},
                           headers)
    assert status == 200, answer
    assert set(answer) == {"data"} and isinstance(answer["data"], str)
    return str(answer["data"])


def _store(server: RunningServer) -> LocalStore:
    store = server.server.results
    assert isinstance(store, LocalStore)
    return store


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = RunningServer(_settings())
    yield running
    running.stop()


@pytest.mark.parametrize(
    ("model", "data"),
    [
        ("example_dict_doubler", {"value": 10}),  # single
        ("example_adder", [3, 4, 5]),  # single, several arguments
        ("example_adder", [["b", 1, 1, 1], [2, 3, 4, 5], ["a", 6, 7, 8]]),  # batch
    ],
    ids=["single", "single-several-arguments", "batch"],
)
def test_a_link_serves_the_answer_the_request_would_have_had(server: RunningServer, model: str, data: Any) -> None:
    expected = _call(server, "POST", f"/v1/{model}/latest", {"data": data})
    link = _link(server, model, data)
    parts = urllib.parse.urlsplit(link)
    assert (parts.scheme, parts.netloc) == ("http", server.http_url)
    assert parts.path.startswith("/v1/results/") and set(urllib.parse.parse_qs(parts.query)) == {"expires", "sig"}
    assert _call(server, "GET", link) == expected
    assert _call(server, "GET", link) == expected  # until it expires, as often as asked


def test_the_stored_file_is_named_by_the_server_with_owner_only_access(server: RunningServer) -> None:
    link = _link(server, "example_doubler", 21)
    result_id = urllib.parse.urlsplit(link).path.rsplit("/", 1)[1]
    path = _store(server).folder / result_id
    assert len(result_id) == 32 and path.read_bytes() == b'{"data":42}'
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_tampered_link_is_403(server: RunningServer) -> None:
    link = _link(server, "example_doubler", 1)
    parts = urllib.parse.urlsplit(link)
    query = dict(urllib.parse.parse_qsl(parts.query))
    other = _link(server, "example_doubler", 2)
    other_id = urllib.parse.urlsplit(other).path.rsplit("/", 1)[1]
    tampered = [
        f"{parts.path}?expires={query['expires']}&sig={'0' * 64}",  # a guessed signature
        f"{parts.path}?expires={int(query['expires']) + 3600}&sig={query['sig']}",  # a later expiry
        f"/v1/results/{other_id}?{parts.query}",  # another answer's id under this signature
        f"{parts.path}?expires={query['expires']}",  # no signature
        parts.path,  # nothing
        f"/v1/results/..%2F..%2Fetc?{parts.query}",  # not an id
    ]
    for target in tampered:
        status, error = _call(server, "GET", target)
        assert status == 403, target
        assert "signature does not match" in error["error"]


def test_an_unknown_answer_with_a_valid_signature_is_404(server: RunningServer) -> None:
    store = _store(server)
    result_id = "f" * 32
    status, error = _call(server, "GET", f"/v1/results/{result_id}?{store.signer.query(result_id, 60)}")
    assert status == 404 and "no stored answer" in error["error"]


def test_response_format_is_checked(server: RunningServer) -> None:
    for value in ("json", 1, ["links"]):
        status, error = _call(server, "POST", "/v1/example_doubler/latest", {"data": 1, "response_format": value})
        assert status == 400 and "'response_format' must be one of ['links']" in error["error"]
    status, answer = _call(server, "POST", "/v1/example_doubler/latest", {"data": 1, "response_format": None})
    assert (status, answer) == (200, {"data": 2})


def test_an_error_is_answered_not_linked(server: RunningServer) -> None:
    status, error = _call(server, "POST", "/v1/example_doubler/latest", {"data": "x", "response_format": "links"})
    assert status == 400 and "error" in error


def test_an_expired_link_is_410_and_its_file_is_swept(tmp_path: Path) -> None:
    running = RunningServer(_settings(results_dir=tmp_path / "results", results_ttl_seconds=1.0))
    try:
        link = _link(running, "example_doubler", 5)
        result_id = urllib.parse.urlsplit(link).path.rsplit("/", 1)[1]
        assert (tmp_path / "results" / result_id).exists()
        assert _call(running, "GET", link) == (200, {"data": 10})
        time.sleep(2.1)  # past the link's expiry (it is rounded up to a whole second)
        status, error = _call(running, "GET", link)
        assert status == 410 and "expired" in error["error"]
        assert not (tmp_path / "results" / result_id).exists()  # swept by the refusal itself
        assert _call(running, "GET", link)[0] == 410  # the signature still names an expired link
    finally:
        running.stop()
    assert (tmp_path / "results").is_dir()  # a --results-dir is the operator's: kept at exit


def test_the_sweeper_removes_expired_files_nobody_fetched(tmp_path: Path) -> None:
    running = RunningServer(_settings(results_dir=tmp_path, results_ttl_seconds=0.5))
    try:
        stray = tmp_path / "notes.txt"
        stray.write_text("not ours")
        link = _link(running, "example_doubler", 5)
        path = tmp_path / urllib.parse.urlsplit(link).path.rsplit("/", 1)[1]
        assert path.exists()
        deadline = time.monotonic() + 30
        while path.exists() and time.monotonic() < deadline:  # ttl 0.5 s + 2 s grace, a pass every 0.5 s
            time.sleep(0.2)
        assert not path.exists()
        assert stray.exists()  # the sweeper removes only what the store wrote
        assert _store(running).used_bytes == 0
    finally:
        running.stop()


def test_without_results_dir_the_server_uses_and_removes_a_private_folder() -> None:
    running = RunningServer(_settings())
    try:
        _link(running, "example_doubler", 5)  # the first answer makes the folder
        folder = _store(running).folder
        assert folder.is_dir() and folder.stat().st_mode & 0o777 == 0o700 and any(folder.iterdir())
    finally:
        running.stop()
    assert not folder.exists()


def test_links_are_isolated_by_key_and_shared_with_one_secret(tmp_path: Path) -> None:
    """A link signed by one server's key is 403 on a server with another key, even over the same folder;
    replicas that share the folder and ``--results-secret`` serve each other's links."""
    shared = tmp_path / "shared"
    first = RunningServer(_settings(results_dir=shared, results_secret="s3cret"))
    second = RunningServer(_settings(results_dir=shared, results_secret="s3cret"))
    other = RunningServer(_settings(results_dir=shared))  # a random key of its own
    try:
        link = _link(first, "example_doubler", 7)
        assert _call(second, "GET", link) == (200, {"data": 14})
        status, error = _call(other, "GET", link)
        assert status == 403 and "another server signed it" in error["error"]
    finally:
        for running in (first, second, other):
            running.stop()


def test_with_api_keys_the_request_needs_a_key_and_the_link_is_its_own_credential() -> None:
    running = RunningServer(_settings(api_keys=("k",)))
    try:
        status, _ = _call(running, "POST", "/v1/example_doubler/latest", {"data": 1, "response_format": "links"})
        assert status == 401
        link = _link(running, "example_doubler", 3, {"Authorization": "Bearer k"})
        assert _call(running, "GET", link) == (200, {"data": 6})  # no key
        assert _call(running, "GET", link, headers={"Authorization": "Bearer wrong"}) == (200, {"data": 6})
        path = urllib.parse.urlsplit(link).path
        assert _call(running, "GET", path, headers={"Authorization": "Bearer k"})[0] == 403  # a key is no signature
    finally:
        running.stop()


def test_past_results_max_bytes_a_link_is_503_until_the_sweep(tmp_path: Path) -> None:
    running = RunningServer(_settings(results_dir=tmp_path, results_max_bytes=40, results_ttl_seconds=600))
    try:
        _link(running, "example_doubler", 1)  # {"data":2}: 10 bytes
        batch = [[i, i] for i in range(10)]  # its answer is more than the 30 bytes left
        status, error = _call(running, "POST", "/v1/example_doubler/latest", {"data": batch, "response_format": "links"})
        assert status == 503 and "--results-max-bytes" in error["error"]
        assert _call(running, "POST", "/v1/example_doubler/latest", {"data": batch})[0] == 200  # inline still works
        assert len(list(tmp_path.iterdir())) == 1
    finally:
        running.stop()


def test_results_base_url_starts_the_links() -> None:
    running = RunningServer(_settings(results_base_url="https://models.example.com/"))
    try:
        link = _link(running, "example_doubler", 1)
        assert link.startswith("https://models.example.com/v1/results/")
        assert _call(running, "GET", link) == (200, {"data": 2})  # the same path and query, served here
    finally:
        running.stop()


def test_a_links_request_past_its_timeout_is_504_and_stores_nothing(tmp_path: Path) -> None:
    """A batching model whose queue holds a lone request for 1.5 s: past ``response_timeout`` (or ``?timeout``)
    the request is 504, its queued work dropped, and no answer is stored."""
    repository = tmp_path / "repository"
    save_queued_model(repository)
    running = RunningServer(loopback_settings(repository, allow_grpc=False, allow_metrics=False,
                                              results_dir=tmp_path / "results"))
    try:
        for target, body in (("/v1/queued/latest", {"data": 4, "response_format": "links", "response_timeout": 0.2}),
                             ("/v1/queued/latest?timeout=0.2", {"data": 4, "response_format": "links"})):
            status, error = _call(running, "POST", target, body)
            assert status == 504 and "timeout of 0.2 s" in error["error"]
        assert not any((tmp_path / "results").iterdir())
        link = _link(running, "queued", 4)  # no timeout: the queue delay passes and the answer is stored
        assert _call(running, "GET", link) == (200, {"data": 8})
    finally:
        running.stop()
