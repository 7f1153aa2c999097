"""Models that fail to load, readiness, control modes, and the real command line in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import (
    BUNDLED_REPOSITORY,
    ROOT,
    RunningServer,
    cli_process,
    logged_port,
    loopback_settings,
)
from v2server.errors import ModelLoadError
from v2server.server import V2Server


@pytest.fixture(scope="module")
def broken_server(broken_repository: Path) -> RunningServer:
    running = RunningServer(loopback_settings(broken_repository))
    yield running
    running.stop()


def test_failed_models_are_reported_and_the_rest_serve(broken_server: RunningServer) -> None:
    with grpcclient.InferenceServerClient(broken_server.grpc_url) as client:
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["healthy"].state == "READY"
        assert index["broken_config"].state == "UNAVAILABLE"
        assert "config.pbtxt" in index["broken_config"].reason and "max_batch_size" in index["broken_config"].reason
        assert index["missing_file"].state == "UNAVAILABLE"
        assert "model.pt" in index["missing_file"].reason
        ready_only = {m.name for m in client.get_model_repository_index().models if m.state == "READY"}
        assert ready_only == {"healthy"}
        assert not client.is_model_ready("broken_config")
        # Strict readiness: the server is live but not ready while a model it should serve is unavailable.
        assert client.is_server_live()
        assert not client.is_server_ready()
        data = np.ones((1, 3), np.float32)
        tensor = grpcclient.InferInput("INPUT0", [1, 3], "FP32")
        tensor.set_data_from_numpy(data)
        np.testing.assert_array_equal(client.infer("healthy", [tensor]).as_numpy("OUTPUT0"), data)
        with pytest.raises(Exception, match="UNAVAILABLE.*'missing_file' has no available versions"):
            client.infer("missing_file", [tensor])


def test_rest_reports_unavailable_models_as_503(broken_server: RunningServer) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(broken_server.http_url)
    try:
        assert client.is_server_live() and not client.is_server_ready()
        tensor = httpclient.InferInput("INPUT0", [1, 3], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 3), np.float32))
        with pytest.raises(InferenceServerException) as info:
            client.infer("missing_file", [tensor])
        assert info.value.status() == "503" and "missing_file" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            client.get_model_config("no_such_model")
        assert info.value.status() == "404"
    finally:
        client.close()


def test_relaxed_readiness(broken_repository: Path) -> None:
    running = RunningServer(loopback_settings(broken_repository, strict_readiness=False))
    try:
        with grpcclient.InferenceServerClient(running.grpc_url) as client:
            assert client.is_server_ready()
    finally:
        running.stop()


async def test_exit_on_error(broken_repository: Path) -> None:
    server = V2Server(loopback_settings(broken_repository, exit_on_error=True))
    with pytest.raises(ModelLoadError, match="broken_config"):
        await server.start()


def test_explicit_mode_loads_only_named_models() -> None:
    running = RunningServer(
        loopback_settings(BUNDLED_REPOSITORY, model_control_mode="explicit", load_models=("simple",))
    )
    try:
        with grpcclient.InferenceServerClient(running.grpc_url) as client:
            assert client.is_model_ready("simple")
            assert not client.is_model_ready("mlp")
            index = {m.name: m for m in client.get_model_repository_index().models}
            assert index["mlp"].state == "UNAVAILABLE" and index["simple"].state == "READY"
            assert client.is_server_ready()
    finally:
        running.stop()


def test_command_line_serves_and_stops_cleanly_on_sigterm() -> None:
    """``python -m v2server`` as ``make run`` starts it: bound port in the log, clean exit on SIGTERM."""
    args = ["--model-repository", str(BUNDLED_REPOSITORY), "--grpc-address", "127.0.0.1", "--grpc-port", "0",
            "--allow-http=false", "--allow-metrics=false", "--pinned-memory-pool-byte-size=1"]
    with cli_process(args, until="server ready") as (_, log):
        port = logged_port(log, "gRPC server listening on")
        assert any("ignoring Triton tuning flag --pinned-memory-pool-byte-size" in line for line in log)
        with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
            assert client.is_server_ready()
            a = np.arange(16, dtype=np.int32).reshape(1, 16)
            inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(a)
            np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), 2 * a)


def test_command_line_rejects_missing_repository() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "v2server"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "--model-repository (or --model-dir) is required" in result.stderr


def test_port_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "v2server", "--model-repository", str(BUNDLED_REPOSITORY),
             "--grpc-address", "127.0.0.1", "--grpc-port", str(port), "--allow-http=false"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 1
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
