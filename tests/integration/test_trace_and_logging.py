"""Triton's trace and logging extensions over REST and gRPC (tritonclient's own calls), request traces in the
triton JSON file and as OpenTelemetry spans, and the answers for what this server does not have."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tornado.httpclient
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tritonclient.utils import InferenceServerException

from tests.conftest import BUNDLED_REPOSITORY, RunningServer, http_call, loopback_settings
from v2server.server import V2Server
from v2server.settings import TraceConfig

STAMPS = ["REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
          "COMPUTE_END", "REQUEST_END"]
LOG_DEFAULTS = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True, "log_verbose_level": 0,
                "log_format": "default"}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trace_models")
    shutil.copytree(BUNDLED_REPOSITORY / "simple", folder / "simple")
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder clients may put log and trace files in (--api-file-dir)."""
    return tmp_path_factory.mktemp("api_files")


@pytest.fixture(scope="module")
def traced(repository: Path, files: Path) -> Iterator[RunningServer]:
    running = RunningServer(loopback_settings(repository, api_file_dir=files))
    yield running
    running.stop()


@pytest.fixture()
def http(traced: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(traced.http_url)
    yield client
    client.close()


@pytest.fixture()
def grpc_client(traced: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(traced.grpc_url)
    yield client
    client.close()


@pytest.fixture()
def log_restored(http: httpclient.InferenceServerClient) -> Iterator[None]:
    root, access = logging.getLogger(), logging.getLogger("tornado.access")
    levels = root.level, access.level
    yield
    http.update_log_settings(LOG_DEFAULTS)
    root.setLevel(levels[0])
    access.setLevel(levels[1])


def _simple(client: httpclient.InferenceServerClient) -> None:
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = httpclient.InferInput(name, [1, 16], "INT32")
        tensor.set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
        inputs.append(tensor)
    client.infer("simple", inputs, request_id="traced-1")


def _grpc_json(response: Any) -> dict[str, Any]:
    """A gRPC trace setting answer (as_json) in the REST shape: single values unwrapped."""
    return {key: value["value"] if key == "trace_level" else ",".join(value.get("value", []))
            for key, value in response["settings"].items()}


# -- trace settings --------------------------------------------------------------------------------------------


def test_trace_settings_global_model_and_clear(
    http: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient, files: Path
) -> None:
    defaults = {"trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1", "log_frequency": "0",
                "trace_file": "", "trace_mode": "TRITON"}
    assert http.get_trace_settings() == defaults
    assert _grpc_json(grpc_client.get_trace_settings(as_json=True)) == defaults
    try:
        updated = http.update_trace_settings(settings={"trace_rate": "5", "trace_count": 3})
        assert updated["trace_rate"] == "5" and updated["trace_count"] == "3"
        # a model's own setting: it names the level and the file, the rest follows the global setting
        own = grpc_client.update_trace_settings(
            "simple", {"trace_level": ["TIMESTAMPS"], "trace_file": "simple.json"}, as_json=True
        )
        assert _grpc_json(own) == {**defaults, "trace_level": ["TIMESTAMPS"], "trace_rate": "5",
                                   "trace_count": "3", "trace_file": str((files / "simple.json").resolve())}
        assert http.get_trace_settings("simple") == _grpc_json(grpc_client.get_trace_settings("simple", as_json=True))
        assert http.get_trace_settings()["trace_level"] == ["OFF"]
        # null (REST) clears; with nothing of its own left the model uses the global setting
        cleared = http.update_trace_settings("simple", {"trace_level": None, "trace_file": None})
        assert cleared == http.get_trace_settings() == {**defaults, "trace_rate": "5", "trace_count": "3"}
    finally:
        http.update_trace_settings(settings={"trace_rate": None, "trace_count": None})
    assert http.get_trace_settings() == defaults


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"trace_rate": "sometimes"}, "trace_rate: expected an integer, got 'sometimes'"),
        ({"trace_level": ["LOUD"]}, "trace_level: unknown level 'LOUD'"),
        ({"trace_count": "-5"}, "trace_count: must be in -1..2147483647"),
        ({"trace_file": "../escape.json"}, "trace_file"),
        ({"trace_level": ["TIMESTAMPS"]}, "trace_file: tracing the global setting at TIMESTAMPS needs a trace file"),
        ({"trace_mode": "opentelemetry"}, "trace_mode is chosen at start"),
    ],
)
def test_invalid_trace_settings_are_400_and_invalid_argument(
    http: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient,
    settings: dict[str, Any], message: str,
) -> None:
    with pytest.raises(InferenceServerException) as rest:
        http.update_trace_settings(settings=settings)
    assert rest.value.status() == "400" and message in rest.value.message()
    grpc_settings = {key: value if isinstance(value, list) else [value] for key, value in settings.items()}
    with pytest.raises(InferenceServerException) as rpc:
        grpc_client.update_trace_settings(settings=grpc_settings)
    assert rpc.value.status() == "StatusCode.INVALID_ARGUMENT" and message in rpc.value.message()


def test_trace_settings_of_an_unknown_model(
    http: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient
) -> None:
    with pytest.raises(InferenceServerException, match="Request for unknown model: 'nope'"):
        http.get_trace_settings("nope")
    with pytest.raises(InferenceServerException) as caught:
        grpc_client.update_trace_settings("nope", {"trace_rate": ["1"]})
    assert caught.value.status() == "StatusCode.NOT_FOUND"


def _json_array(path: Path) -> list[Any] | None:
    """The trace file's array once it is complete and holds something, else None."""
    try:
        document = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return document if isinstance(document, list) and document else None


def test_traces_go_to_the_triton_file(http: httpclient.InferenceServerClient, files: Path) -> None:
    path = files / "traces.json"
    http.update_trace_settings(settings={"trace_file": "traces.json", "trace_level": ["TIMESTAMPS"], "trace_rate": 1})
    try:
        _simple(http)
        deadline = time.monotonic() + 10
        # written by the tracer's own thread: the file may exist, empty, an instant before its array is in it
        while (written := _json_array(path)) is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        http.update_trace_settings(settings={"trace_level": ["OFF"], "trace_rate": None, "trace_file": None})
    assert written, f"no trace in {path} after 10 s"
    header = written[0]
    assert header["model_name"] == "simple" and header["model_version"] == 1 and header["request_id"] == "traced-1"
    stamps = [item["timestamps"][0] for item in written if item.get("id") == header["id"] and "timestamps" in item]
    assert [stamp["name"] for stamp in stamps] == STAMPS
    assert [stamp["ns"] for stamp in stamps] == sorted(stamp["ns"] for stamp in stamps)


# -- log settings ----------------------------------------------------------------------------------------------


def test_log_settings_over_both_transports(
    http: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient, log_restored: None
) -> None:
    assert http.get_log_settings() == LOG_DEFAULTS
    grpc_values = grpc_client.get_log_settings(as_json=True)["settings"]
    assert {key: next(iter(value.values())) for key, value in grpc_values.items()} == LOG_DEFAULTS
    updated = grpc_client.update_log_settings({"log_format": "ISO8601", "log_warning": False}, as_json=True)
    assert updated["settings"]["log_format"] == {"string_param": "ISO8601"}
    assert http.get_log_settings() == {**LOG_DEFAULTS, "log_format": "ISO8601", "log_warning": False}


def test_a_verbose_line_appears_once_the_level_is_raised(
    traced: RunningServer, http: httpclient.InferenceServerClient, caplog: pytest.LogCaptureFixture,
    log_restored: None,
) -> None:
    def refused_lines() -> list[str]:
        caplog.clear()
        http_call(traced, "GET", "/v2/models/nope/config")  # a refused request: a debug line names it
        return [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "nope" in r.getMessage()]

    http.update_log_settings({"log_verbose_level": 0})
    assert refused_lines() == []
    http.update_log_settings({"log_verbose_level": 1})
    assert refused_lines() == ["GET /v2/models/nope/config: Request for unknown model: 'nope' is not found"]
    http.update_log_settings({"log_verbose_level": 0})
    assert refused_lines() == []


def test_the_log_moves_to_a_file_inside_the_allowed_folder(
    traced: RunningServer, http: httpclient.InferenceServerClient, files: Path, log_restored: None
) -> None:
    answer = http.update_log_settings({"log_file": "server.log", "log_verbose_level": 1})
    assert answer["log_file"] == str((files / "server.log").resolve())
    http_call(traced, "GET", "/v2/models/nope/config")
    http.update_log_settings({"log_file": "", "log_verbose_level": 0})
    assert "Request for unknown model: 'nope'" in (files / "server.log").read_text()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"log_info": "yes"}, "log_info: expected a boolean, got string"),
        ({"log_verbose_level": -1}, "log_verbose_level: expected an integer in 0..4294967295, got -1"),
        ({"log_format": "fancy"}, "log_format: expected 'default' or 'ISO8601', got 'fancy'"),
        ({"log_file": "/etc/v2server.log"}, "log_file: '/etc/v2server.log' is not a file inside the folder"),
        ({"log_colour": True}, "unknown log setting 'log_colour'"),
    ],
)
def test_invalid_log_settings_are_400(
    http: httpclient.InferenceServerClient, settings: dict[str, Any], message: str, log_restored: None
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        http.update_log_settings(settings)
    assert caught.value.status() == "400" and message in caught.value.message()
    assert http.get_log_settings() == LOG_DEFAULTS


def test_invalid_log_settings_are_invalid_argument_over_grpc(
    grpc_client: grpcclient.InferenceServerClient, log_restored: None
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        grpc_client.update_log_settings({"log_format": "fancy"})
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT" and "log_format" in caught.value.message()


def test_without_an_allowed_folder_files_cannot_be_chosen(server: RunningServer) -> None:
    body = json.dumps({"log_file": "/tmp/x.log"}).encode()
    status, _, answer = http_call(server, "POST", "/v2/logging", body)
    assert status == 400 and "--api-file-dir" in json.loads(answer)["error"]
    body = json.dumps({"trace_file": "x.json"}).encode()
    status, _, answer = http_call(server, "POST", "/v2/trace/setting", body)
    assert status == 400 and "--api-file-dir" in json.loads(answer)["error"]


# -- what this server does not have ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v2/models/simple/generate", "/v2/models/simple/versions/1/generate_stream"])
def test_generate_is_501_naming_the_extension(traced: RunningServer, path: str) -> None:
    status, _, body = http_call(traced, "POST", path, b'{"text_input": "hi"}')
    assert status == 501
    assert "the 'generate' extension is not supported by this server" in json.loads(body)["error"]


def test_an_rpc_we_do_not_know_is_unimplemented_naming_it(traced: RunningServer) -> None:
    with grpc.insecure_channel(traced.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelGenerate")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "inference.GRPCInferenceService/ModelGenerate is not implemented" in caught.value.details()


# -- OpenTelemetry spans from a running server -----------------------------------------------------------------


async def test_spans_of_a_traced_request(repository: Path) -> None:
    exporter = InMemorySpanExporter()
    trace = TraceConfig(mode="opentelemetry", level=("TIMESTAMPS",), rate=1)
    server = V2Server(loopback_settings(repository, trace=trace, allow_grpc=False, allow_metrics=False),
                      span_exporter=exporter)
    await server.start()
    try:
        body = {"id": "otel-1", "inputs": [
            {"name": name, "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
            for name in ("INPUT0", "INPUT1")
        ]}
        client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
        answer = await client.fetch(f"http://127.0.0.1:{server.http_port}/v2/models/simple/infer", method="POST",
                                    body=json.dumps(body))
        client.close()
        assert answer.code == 200
    finally:
        await server.stop(grace=1)  # shuts the exporter down: the batched spans go out
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"InferRequest", "simple", "compute"}
    request = spans["simple"]
    assert request.attributes["triton.model_name"] == "simple"
    assert request.attributes["triton.request_id"] == "otel-1"
    assert [event.name for event in request.events] == ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
    assert [event.name for event in spans["compute"].events] == STAMPS[2:6]
    assert spans["compute"].parent.span_id == request.context.span_id


# -- the command: --log-file, --log-format, --trace-config -----------------------------------------------------


def test_the_command_logs_to_its_file_and_traces_from_the_start(repository: Path, tmp_path: Path) -> None:
    log_file, trace_file = tmp_path / "server.log", tmp_path / "trace.json"
    args = [
        sys.executable, "-m", "v2server", "--model-repository", str(repository), "--http-port=0", "--grpc-port=0",
        "--metrics-port=0", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
        f"--log-file={log_file}", "--log-format=ISO8601", "--trace-config", f"triton,file={trace_file}",
        "--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1",
    ]
    process = subprocess.Popen(args, cwd=Path(__file__).parents[2], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        port = None
        while port is None and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
            text = log_file.read_text() if log_file.exists() else ""
            if "server ready" in text:
                port = re.search(r"HTTP server listening on [\d.]+:(\d+)", text)
        assert port is not None, log_file.read_text() if log_file.exists() else "no log file"
        with httpclient.InferenceServerClient(f"127.0.0.1:{port.group(1)}") as client:
            _simple(client)
            assert client.get_log_settings()["log_file"] == str(log_file)
            assert client.get_trace_settings()["trace_file"] == str(trace_file)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        stderr = process.stderr.read() if process.stderr else ""
        if process.stderr:
            process.stderr.close()
    assert "server ready" not in stderr  # the log went to the file
    lines = log_file.read_text().splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ [A-Z]+ ", line) for line in lines if line), lines[:3]
    written = json.loads(trace_file.read_text())
    assert written[0]["model_name"] == "simple" and written[0]["request_id"] == "traced-1"
