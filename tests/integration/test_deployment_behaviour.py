"""What a Kubernetes deployment relies on: KServe's Triton command line, single-model folders, draining on SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.assets.test_models import _config, _save, _tensor
from tests.conftest import BUNDLED_REPOSITORY, cli_process, logged_port

TRITONSERVER = Path(sys.executable).parent / "tritonserver"


@pytest.mark.skipif(not TRITONSERVER.exists(), reason="the tritonserver console script is not installed (make install)")
def test_kserve_triton_runtime_command_line(tmp_path: Path) -> None:
    """KServe's kserve-tritonserver runtime runs exactly this, with the model folder at /mnt/models."""
    store = tmp_path / "mnt" / "models"
    shutil.copytree(BUNDLED_REPOSITORY / "simple", store / "simple")
    args = [f"--model-store={store}", "--grpc-port=0", "--http-port=0", "--allow-grpc=true", "--allow-http=true",
            "--log-verbose=1", "--backend-config=pytorch,shm-default-byte-size=1", "--metrics-port=0",
            "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"]
    with cli_process(args, until="server ready", command=[str(TRITONSERVER)]) as (_, log):
        assert any("ignoring Triton tuning flag --backend-config" in line for line in log), "".join(log)
        port = logged_port(log, "gRPC server listening on")
        with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
            assert client.is_server_ready() and client.is_model_ready("simple")
            assert client.get_server_metadata().name == "triton"  # what Triton's example clients check


def test_single_model_folder_served_under_its_name(tmp_path: Path) -> None:
    shutil.copytree(BUNDLED_REPOSITORY / "simple", tmp_path / "models")
    args = ["--model-dir", str(tmp_path / "models"), "--model-name", "my-simple", "--grpc-address", "127.0.0.1",
            "--grpc-port", "0", "--allow-http=false", "--allow-metrics=false"]
    with cli_process(args, until="server ready") as (_, log):  # noqa: SIM117 (the port comes from the log)
        with grpcclient.InferenceServerClient(f"127.0.0.1:{logged_port(log, 'gRPC server listening on')}") as client:
            assert client.is_model_ready("my-simple")
            assert client.get_model_metadata("my-simple").name == "my-simple"


class Slow(torch.nn.Module):
    def forward(self, INPUT0: torch.Tensor) -> torch.Tensor:
        x = torch.ones(256, 256)
        for _ in range(int(INPUT0[0].item())):
            x = torch.tanh(x @ x)
        return INPUT0 + x[0, :4].to(torch.int32) * 0


def test_sigterm_drains_requests_in_flight(tmp_path: Path) -> None:
    body = "max_batch_size: 0\n" + "\n".join(
        [_tensor("input", "INPUT0", "TYPE_INT32", "[ 4 ]"), _tensor("output", "OUTPUT0", "TYPE_INT32", "[ 4 ]")]
    )
    _save(tmp_path, "slow", Slow(), _config("slow", body))
    args = ["--model-repository", str(tmp_path), "--http-address", "127.0.0.1", "--http-port", "0",
            "--allow-grpc=false", "--allow-metrics=false", "--exit-timeout-secs", "60"]
    answer: list[tuple[int, dict]] = []  # type: ignore[type-arg]

    def slow_request(port: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        payload = {"inputs": [{"name": "INPUT0", "shape": [4], "datatype": "INT32", "data": [4000, 1, 2, 3]}]}
        connection.request("POST", "/v2/models/slow/infer", json.dumps(payload))
        response = connection.getresponse()
        answer.append((response.status, json.loads(response.read())))
        connection.close()

    with cli_process(args, until="server ready") as (process, log):
        port = logged_port(log, "HTTP server listening on")
        worker = threading.Thread(target=slow_request, args=(port,))
        worker.start()
        time.sleep(0.3)  # let the request reach the model; the drain must hold the exit for it
        process.send_signal(signal.SIGTERM)
        worker.join(timeout=60)
        assert process.wait(timeout=60) == 0
    assert answer and answer[0][0] == 200, answer
    assert answer[0][1]["outputs"][0]["data"] == [4000, 1, 2, 3]


def _health(http_port: int, grpc_port: int) -> tuple[int, int, int]:
    """(REST live status, REST ready status, gRPC health status) as Kubernetes probes would see them."""
    statuses = []
    for route in ("/v2/health/live", "/v2/health/ready"):
        connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        connection.request("GET", route)
        statuses.append(connection.getresponse().status)
        connection.close()
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    return statuses[0], statuses[1], check.status


def _writer_when_read(fifo: Path, seconds: float) -> int:
    """Open ``fifo`` for writing once the server has it open for reading (bounded wait)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_live_while_loading_ready_only_when_loaded(tmp_path: Path) -> None:
    """Startup probes pass during a long load; readiness (REST and grpc.health.v1) waits for every model.

    The model's warmup sample is a named pipe, so its load stays in progress until the test writes it.
    """
    body = "max_batch_size: 0\n" + "\n".join(
        [_tensor("input", "INPUT0", "TYPE_INT32", "[ 4 ]"), _tensor("output", "OUTPUT0", "TYPE_INT32", "[ 4 ]")]
    ) + '\nmodel_warmup [{ name: "gate" batch_size: 1 inputs { key: "INPUT0" value: {' \
        ' data_type: TYPE_INT32 dims: [ 4 ] input_data_file: "gate" } } }]'
    _save(tmp_path, "gated", Slow(), _config("gated", body))
    (tmp_path / "gated" / "warmup").mkdir()
    fifo = tmp_path / "gated" / "warmup" / "gate"
    os.mkfifo(fifo)
    args = ["--model-repository", str(tmp_path), "--http-address", "127.0.0.1", "--http-port", "0",
            "--grpc-address", "127.0.0.1", "--grpc-port", "0", "--allow-metrics=false"]
    with cli_process(args, until="HTTP server listening on") as (process, log):
        ports = logged_port(log, "HTTP server listening on"), logged_port(log, "gRPC server listening on")
        writer = _writer_when_read(fifo, seconds=60)  # the load is now blocked on the warmup sample
        try:
            assert _health(*ports) == (200, 400, health_pb2.HealthCheckResponse.NOT_SERVING)
            os.write(writer, np.zeros(4, dtype=np.int32).tobytes())
        finally:
            os.close(writer)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "server ready" not in log[-1]:
            log.append(process.stderr.readline())  # type: ignore[union-attr]
        assert _health(*ports) == (200, 200, health_pb2.HealthCheckResponse.SERVING), "".join(log)
