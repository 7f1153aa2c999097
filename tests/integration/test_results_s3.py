"""``--results-url s3://...``: link answers stored in S3 and served by presigned URLs, against a local S3
endpoint (moto in server mode on 127.0.0.1, an ephemeral port), configured as boto3 is everywhere: through
the environment (``AWS_ENDPOINT_URL_S3``, credentials, region). The links are SigV4 presigned URLs that
carry ``--results-ttl`` as ``X-Amz-Expires``; refusing them once expired is S3's part (moto does not check
presigned signatures, so that is not tested here)."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

from tests.conftest import BUNDLED_REPOSITORY, RunningServer, loopback_settings
from v2server.results import S3Store

BUCKET = "answers"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def s3_environment(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in (("AWS_ENDPOINT_URL_S3", s3_endpoint), ("AWS_ACCESS_KEY_ID", "testing"),
                        ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    client = boto3.client("s3")
    if BUCKET not in {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=BUCKET)
    return client


def _post(server: RunningServer, path: str, body: Any) -> tuple[int, Any]:
    connection = http.client.HTTPConnection(server.http_url, timeout=30)
    try:
        connection.request("POST", path, body=json.dumps(body).encode())
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def test_links_are_presigned_s3_urls(s3_environment: Any, s3_endpoint: str) -> None:
    running = RunningServer(loopback_settings(
        BUNDLED_REPOSITORY, model_control_mode="explicit", load_models=("example_adder",), allow_grpc=False,
        allow_metrics=False, results_url=f"s3://{BUCKET}/v2server/answers", results_ttl_seconds=120,
    ))
    try:
        data = [[2, 6, 7, 8], [1, 3, 4, 5]]
        expected = _post(running, "/v1/example_adder/latest", {"data": data})
        status, answer = _post(running, "/v1/example_adder/latest", {"data": data, "response_format": "links"})
        assert status == 200
        link = urllib.parse.urlsplit(answer["data"])
        assert f"{link.scheme}://{link.netloc}" == s3_endpoint and link.path.startswith(f"/{BUCKET}/v2server/answers/")
        query = urllib.parse.parse_qs(link.query)
        assert query["X-Amz-Expires"] == ["120"] and "X-Amz-Signature" in query
        status, body = _fetch(answer["data"])
        assert (status, json.loads(body)) == expected
        key = link.path.removeprefix(f"/{BUCKET}/")
        head = s3_environment.head_object(Bucket=BUCKET, Key=key)
        assert head["ContentType"] == "application/json"
    finally:
        running.stop()


def test_the_s3_sweeper_deletes_expired_answers_under_its_prefix_only(s3_environment: Any) -> None:
    s3_environment.put_object(Bucket=BUCKET, Key="elsewhere/" + "a" * 32, Body=b"{}")
    s3_environment.put_object(Bucket=BUCKET, Key="sweep/notes.txt", Body=b"an operator's object")

    def keys() -> set[str]:
        return {item["Key"] for item in s3_environment.list_objects_v2(Bucket=BUCKET).get("Contents", [])}

    async def scenario() -> str:
        store = S3Store(f"s3://{BUCKET}/sweep", signer=None, ttl=1)  # type: ignore[arg-type]
        await store.start()
        try:
            link = await store.put(b'{"data":1}', "")
            assert _fetch(link) == (200, b'{"data":1}')
            key = urllib.parse.urlsplit(link).path.removeprefix(f"/{BUCKET}/")
            assert await store.sweep() == 0 and key in keys()  # not expired yet
            deadline = time.monotonic() + 20  # lifetime 1 s, grace 2 s, S3 times in whole seconds, a pass a second
            while key in keys() and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            return key
        finally:
            await store.close()

    key = asyncio.run(scenario())
    assert key not in keys()  # the store's own sweeper deleted it
    assert {"elsewhere/" + "a" * 32, "sweep/notes.txt"} <= keys()


def test_a_failing_s3_is_503_naming_the_store(s3_environment: Any) -> None:
    running = RunningServer(loopback_settings(
        BUNDLED_REPOSITORY, model_control_mode="explicit", load_models=("example_adder",), allow_grpc=False,
        allow_metrics=False, results_url="s3://no-such-bucket/x",
    ))
    try:
        status, error = _post(running, "/v1/example_adder/latest", {"data": [1, 2, 3], "response_format": "links"})
        assert status == 503 and "s3://no-such-bucket/x/" in error["error"]
    finally:
        running.stop()
