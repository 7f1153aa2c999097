"""Hostile requests, as an attacker with network access would send them: names that climb out of the
repository, uploads, unknown names, odd parameters, keyless bodies, half-sent headers, ping floods.

Each server here writes its uploads under a temporary folder of the test's own (``tempfile.tempdir``), so
"nothing was written outside" is checked by listing that folder's parent.
"""

from __future__ import annotations

import base64
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest
import torch

from tests.assets.test_models import Scaled
from tests.conftest import BUNDLED_REPOSITORY, RunningServer, http_call, loopback_settings
from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import grpc_service_pb2_grpc as pb_grpc

CONFIG = orjson.dumps({
    "max_batch_size": 0,
    "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [4]}],
    "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [4]}],
}).decode()


def _model_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "scaled.pt"
    torch.jit.script(Scaled(2)).save(str(path))
    return path.read_bytes()


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``<tmp>/uploads`` is where the server's temporary folders go; nothing else may appear in ``<tmp>``."""
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(uploads))
    return tmp_path


@pytest.fixture
def explicit(sandbox: Path) -> Iterator[RunningServer]:
    repo = sandbox / "repo"
    shutil.copytree(BUNDLED_REPOSITORY / "simple", repo / "simple")
    running = RunningServer(loopback_settings(repo, model_control_mode="explicit", load_models=("simple",)))
    yield running
    running.stop()


def _load_body(files: dict[str, bytes], config: str | None = CONFIG, **extra: object) -> bytes:
    parameters: dict[str, object] = {f"file:{k}": base64.b64encode(v).decode() for k, v in files.items()}
    if config is not None:
        parameters["config"] = config
    parameters.update(extra)
    return orjson.dumps({"parameters": parameters})


def _error(body: bytes) -> str:
    return str(orjson.loads(body)["error"])


def _ready(server: RunningServer) -> int:
    return http_call(server, "GET", "/v2/health/ready")[0]


def test_model_names_that_climb_out_are_refused_and_write_nothing(
    explicit: RunningServer, sandbox: Path, tmp_path: Path
) -> None:
    model = _model_bytes(tmp_path)
    for name in ("..%2Fvictim%2Fm", "..", "%2E%2E", "a%5Cb", "%2Ftmp%2Fx%2Fsub", "a%00b", "x" * 300):
        status, _, body = http_call(explicit, "POST", f"/v2/repository/models/{name}/load",
                                    _load_body({"1/model.pt": model}))
        assert status == 400, (name, body)
        assert "invalid model name" in _error(body)
    assert sorted(p.name for p in sandbox.iterdir()) == ["repo", "scaled.pt", "uploads"]
    assert list((sandbox / "uploads").iterdir()) == []
    assert _ready(explicit) == 200


def test_grpc_names_that_climb_out_are_refused(explicit: RunningServer, sandbox: Path, tmp_path: Path) -> None:
    model = _model_bytes(tmp_path)
    with grpc.insecure_channel(explicit.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for name in (str(sandbox / "abs" / "sub"), "../x", "a\x00b", "é" * 200, "\n"):
            request = pb.RepositoryModelLoadRequest(model_name=name, parameters={
                "config": pb.ModelRepositoryParameter(string_param=CONFIG),
                "file:1/model.pt": pb.ModelRepositoryParameter(bytes_param=model),
            })
            with pytest.raises(grpc.RpcError) as caught:
                stub.RepositoryModelLoad(request)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "invalid model name" in caught.value.details()
            for rpc, message in ((stub.ModelReady, pb.ModelReadyRequest), (stub.ModelMetadata, pb.ModelMetadataRequest)):
                with pytest.raises(grpc.RpcError) as caught:
                    rpc(message(name=name))
                assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert not (sandbox / "abs").exists()
    assert list((sandbox / "uploads").iterdir()) == []


@pytest.mark.parametrize(
    "path",
    ["../1/model.pt", "1/../../x", "/abs/model.pt", "1/./model.pt", "model.pt", "0/model.pt", "1//model.pt",
     "x/model.pt", "1/a\\b", "1/" + "d/" * 10 + "f"],
)
def test_upload_paths_stay_inside_the_version_folder(explicit: RunningServer, sandbox: Path, path: str) -> None:
    status, _, body = http_call(explicit, "POST", "/v2/repository/models/up/load", _load_body({path: b"x"}))
    assert status == 400, body
    assert "file override" in _error(body)
    assert list((sandbox / "uploads").iterdir()) == []
    index = orjson.loads(http_call(explicit, "POST", "/v2/repository/index")[2])
    assert "up" not in {row["name"] for row in index}  # no trace


def test_an_upload_lives_in_a_folder_of_our_naming_and_unload_removes_exactly_it(
    explicit: RunningServer, sandbox: Path, tmp_path: Path
) -> None:
    neighbour = sandbox / "uploads" / "neighbour"
    neighbour.mkdir()
    model = _model_bytes(tmp_path)
    status, _, body = http_call(explicit, "POST", "/v2/repository/models/uploaded/load", _load_body({"1/model.pt": model}))
    assert status == 200, body
    roots = [p for p in (sandbox / "uploads").iterdir() if p != neighbour]
    assert len(roots) == 1 and roots[0].name.startswith("v2server-upload-")
    assert [p.relative_to(roots[0]).as_posix() for p in sorted(roots[0].rglob("*"))] == [
        "model", "model/1", "model/1/model.pt"
    ]
    request = orjson.dumps({"inputs": [{"name": "INPUT0", "shape": [4], "datatype": "INT32", "data": [1, 2, 3, 4]}]})
    status, _, body = http_call(explicit, "POST", "/v2/models/uploaded/infer", request)
    assert status == 200 and orjson.loads(body)["outputs"][0]["data"] == [2, 4, 6, 8]
    assert http_call(explicit, "POST", "/v2/repository/models/uploaded/unload")[0] == 200
    assert list((sandbox / "uploads").iterdir()) == [neighbour]


def test_a_reload_with_new_files_removes_the_previous_upload(
    explicit: RunningServer, sandbox: Path, tmp_path: Path
) -> None:
    model = _model_bytes(tmp_path)
    for _ in range(3):
        status, _, body = http_call(explicit, "POST", "/v2/repository/models/again/load", _load_body({"1/model.pt": model}))
        assert status == 200, body
    deadline = time.monotonic() + 30  # the replaced copies are closed once their requests drain
    while len(list((sandbox / "uploads").iterdir())) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(list((sandbox / "uploads").iterdir())) == 1


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"default_model_filename": "/etc/passwd"}, "default_model_filename"),
        ({"default_model_filename": "../simple/1/model.pt"}, "default_model_filename"),
        ({"default_model_filename": "a\x00b"}, "default_model_filename"),
        ({"cc_model_filenames": {"sm_80": "/etc/shadow"}}, "cc_model_filenames['sm_80']"),
        ({"model_warmup": [{"name": "w", "batch_size": 1, "inputs": {"INPUT0": {
            "data_type": "TYPE_INT32", "dims": [4], "input_data_file": "/etc/passwd"}}}]}, "input_data_file"),
    ],
)
def test_file_names_in_a_config_override_are_plain_names(
    explicit: RunningServer, sandbox: Path, tmp_path: Path, override: dict[str, object], field: str
) -> None:
    config = orjson.loads(CONFIG) | override
    body = _load_body({"1/model.pt": _model_bytes(tmp_path)}, orjson.dumps(config).decode())
    status, _, answer = http_call(explicit, "POST", "/v2/repository/models/cfg/load", body)
    assert status == 400, answer
    message = _error(answer)
    assert field in message and ("plain file name" in message or "relative path" in message)
    assert "No such file" not in message and "exist" not in message  # says nothing of what is on disk
    assert "v2server-upload-" not in message and str(sandbox) not in message  # nor where uploads live
    assert list((sandbox / "uploads").iterdir()) == []


def test_loading_a_name_in_no_repository_leaves_no_trace(explicit: RunningServer) -> None:
    before = orjson.loads(http_call(explicit, "POST", "/v2/repository/index")[2])
    status, _, body = http_call(explicit, "POST", "/v2/repository/models/typo/load")
    assert status == 400 and _error(body) == "failed to load 'typo': not found in the model repository"
    assert orjson.loads(http_call(explicit, "POST", "/v2/repository/index")[2]) == before
    assert _ready(explicit) == 200
    with grpc.insecure_channel(explicit.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="typo"))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert stub.ServerReady(pb.ServerReadyRequest()).ready  # both transports agree
    assert _ready(explicit) == 200


@pytest.mark.parametrize(
    "body",
    [
        b'{"parameters": {"config": 18446744073709551615}}',
        b'{"parameters": {"x": 18446744073709551615}}',
        b'{"parameters": {"x": 99999999999999999999999999}}',
        b'{"parameters": {"config": "{\\"max_batch_size\\": 18446744073709551615}"}}',
        b'{"parameters": {"config": "{\\"max_batch_size\\": -1}"}}',
        b'{"parameters": {"config": "not json"}}',
        b'{"parameters": {"config": "[]"}}',
        b'{"parameters": {"file:1/model.pt": "not base64!"}}',
        b'{"parameters": {"file:1/model.pt": 5, "config": "{}"}}',
        b'{"parameters": []}',
        b"[1]",
        b"\xff\xfe",
    ],
)
def test_client_mistakes_in_a_load_are_400_not_500(explicit: RunningServer, sandbox: Path, body: bytes) -> None:
    status, _, answer = http_call(explicit, "POST", "/v2/repository/models/simple/load", body)
    assert status == 400, answer
    assert "internal error" not in _error(answer) and "v2server-upload-" not in _error(answer)
    assert _ready(explicit) == 200
    index = orjson.loads(http_call(explicit, "POST", "/v2/repository/index")[2])
    assert all(row["state"] != "LOADING" for row in index)


def test_a_keyless_large_body_is_refused_when_its_headers_arrive(sandbox: Path) -> None:
    running = RunningServer(loopback_settings(BUNDLED_REPOSITORY, api_keys=("secret",)))
    try:
        with socket.create_connection(("127.0.0.1", running.server.http_port), timeout=30) as raw:
            raw.sendall(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 200000000\r\n\r\n")  # and not one byte of the 200 MB body
            answer = _read_until_closed(raw)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert b"missing API key" in answer
        # a keyless small body is read first, so the client sees the 401 rather than a reset
        status, _, body = http_call(running, "POST", "/v2/models/simple/infer", b'{"inputs": []}')
        assert status == 401 and "missing API key" in _error(body)
    finally:
        running.stop()


def _read_until_closed(raw: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by the socket's timeout)."""
    chunks = []
    while chunk := raw.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_connections_that_never_finish_their_headers_are_closed(sandbox: Path) -> None:
    running = RunningServer(loopback_settings(BUNDLED_REPOSITORY, http_idle_timeout_seconds=0.5))
    sockets = []
    try:
        for _ in range(20):
            raw = socket.create_connection(("127.0.0.1", running.server.http_port), timeout=30)
            raw.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # half a header, never finished
            sockets.append(raw)
        for raw in sockets:
            assert _read_until_closed(raw) == b""  # closed by the server, not by our timeout (that raises)
        assert http_call(running, "GET", "/v2/health/live")[0] == 200
    finally:
        for raw in sockets:
            raw.close()
        running.stop()


def test_a_slow_body_is_cut_off(sandbox: Path) -> None:
    running = RunningServer(loopback_settings(BUNDLED_REPOSITORY, http_body_timeout_seconds=0.5))
    try:
        with socket.create_connection(("127.0.0.1", running.server.http_port), timeout=30) as raw:
            raw.sendall(b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            assert _read_until_closed(raw) == b""
    finally:
        running.stop()


def test_grpc_clients_that_ping_too_often_are_disconnected(sandbox: Path) -> None:
    running = RunningServer(loopback_settings(BUNDLED_REPOSITORY, allow_http=False, allow_metrics=False))
    options = [("grpc.keepalive_time_ms", 100), ("grpc.keepalive_permit_without_calls", 1),
               ("grpc.http2.max_pings_without_data", 0)]
    try:
        with grpc.insecure_channel(running.grpc_url, options=options) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stream = stub.ModelStreamInfer(iter(threading.Event().wait, True))  # open, sending nothing
            with pytest.raises(grpc.RpcError) as caught:
                next(stream)  # the server's GOAWAY (too_many_pings) ends it
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop()


def test_grpc_streams_per_connection_are_capped(sandbox: Path) -> None:
    running = RunningServer(loopback_settings(
        BUNDLED_REPOSITORY, allow_http=False, allow_metrics=False, grpc_max_concurrent_streams=1
    ))
    stop = threading.Event()
    try:
        with grpc.insecure_channel(running.grpc_url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(pb.ServerLiveRequest()).live  # connected
            stream = stub.ModelStreamInfer(iter(stop.wait, True))  # holds the one stream
            waiting = stub.ServerMetadata.future(pb.ServerMetadataRequest())
            time.sleep(1.0)
            assert not waiting.done()  # the second call waits for a free stream...
            stop.set()
            stream.cancel()
            assert waiting.result(timeout=30).name == "v2server"  # ...and gets it when the first ends
    finally:
        stop.set()
        running.stop()
