"""``--workers 2``: a real supervisor and two worker processes sharing the HTTP and gRPC ports.

One server serves the module's tests, in order: both workers take connections; repository changes, aliases
and shared-memory regions reach every worker before the answer; statistics and ``/metrics`` are the sum over
workers; a worker killed with SIGKILL is restarted (not ready meanwhile) and catches up from the journal;
SIGTERM drains everything and the supervisor exits 0. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BUNDLED_REPOSITORY, ROOT
from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import grpc_service_pb2_grpc as pb_grpc
from v2server.workers import WorkerIdentity

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreading and /proc")

_T = TypeVar("_T")

#: fresh connections per check: the kernel spreads them over the workers by a hash of the 4-tuple
CONNECTIONS = 24


class Supervised:
    """``python -m v2server --workers 2 ...``, its log read by a thread (the pipe never fills)."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "v2server", "--workers", "2", *args], cwd=ROOT, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, pattern: str, seconds: float = 180) -> re.Match[str]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no log line matched {pattern!r}:\n{self.log}")

    def port(self, what: str) -> int:
        return int(self.wait_for_line(rf"{what} listening on 127\.0\.0\.1:(\d+)").group(1))

    def stop(self) -> None:
        if self.process.poll() is None:  # a test failed before the SIGTERM test: drain, then make sure
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self._reader.join(timeout=10)
        assert self.process.stderr is not None
        self.process.stderr.close()


class Server:
    def __init__(self, supervised: Supervised) -> None:
        self.supervised = supervised
        self.http = f"127.0.0.1:{supervised.port('HTTP server')}"
        self.grpc = f"127.0.0.1:{supervised.port('gRPC server')}"
        self.metrics_port = supervised.port("metrics server")


def _until(check: Callable[[], _T | None], seconds: float, what: str) -> _T:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    repository = tmp_path_factory.mktemp("workers_repository")
    for model in ("simple", "example_adder"):  # a copy: alias files are written into it
        shutil.copytree(BUNDLED_REPOSITORY / model, repository / model)
    supervised = Supervised([
        "--model-repository", str(repository), "--model-control-mode", "explicit", "--load-model", "simple",
        "--http-address", "127.0.0.1", "--http-port", "0", "--grpc-address", "127.0.0.1", "--grpc-port", "0",
        "--metrics-address", "127.0.0.1", "--metrics-port", "0", "--exit-timeout-secs", "10",
    ])
    try:
        supervised.wait_for_line("server ready: all 2 workers up")
        yield Server(supervised)
    finally:
        supervised.stop()


# -- helpers ----------------------------------------------------------------------------------------------------


def _get(address: str, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection."""
    connection = http.client.HTTPConnection(address, timeout=30)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _worker_pids(server: Server) -> dict[int, int]:
    """worker index -> pid, for the workers that are up (the supervisor's v2server_worker_up gauge)."""
    _, _, body = _get(f"127.0.0.1:{server.metrics_port}", "/metrics")
    pids = {}
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "v2server_worker_up":
            pids = {int(s.labels["worker"]): int(s.labels["pid"]) for s in family.samples if s.value == 1}
    return pids


def _metric(server: Server, sample: str, **labels: str) -> float:
    _, _, body = _get(f"127.0.0.1:{server.metrics_port}", "/metrics")
    for family in text_string_to_metric_families(body.decode()):
        for found in family.samples:
            if found.name == sample and all(found.labels.get(k) == v for k, v in labels.items()):
                return found.value
    return 0.0


def _private_stub(pid: int, index: int) -> tuple[grpc.Channel, pb_grpc.GRPCInferenceServiceStub]:
    """Worker ``index``'s own endpoint (what its peers call: answers for that worker alone)."""
    environ = dict(
        item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item
    )
    identity = WorkerIdentity.from_environ(environ)
    assert identity is not None and identity.index == index
    channel = grpc.insecure_channel(f"unix:{identity.socket(index)}")
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def _local_successes(server: Server, model: str) -> dict[int, int]:
    """Each worker's own count of successful requests for ``model``."""
    counts = {}
    for index, pid in _worker_pids(server).items():
        channel, stub = _private_stub(pid, index)
        with channel:
            stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30)
        counts[index] = sum(s.inference_stats.success.count for s in stats.model_stats)
    return counts


def _inputs(module: Any) -> list[Any]:
    data = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
    for tensor in inputs:
        tensor.set_data_from_numpy(data)
    return inputs


def _infer_http(server: Server) -> None:
    client = httpclient.InferenceServerClient(server.http, connection_timeout=30, network_timeout=30)
    try:
        result = client.infer("simple", _inputs(httpclient))
        assert (result.as_numpy("OUTPUT0") == 2 * np.arange(16)).all()
    finally:
        client.close()


def _infer_grpc(server: Server) -> None:
    with grpcclient.InferenceServerClient(server.grpc) as client:
        result = client.infer("simple", _inputs(grpcclient), client_timeout=30)
        assert (result.as_numpy("OUTPUT0") == 2 * np.arange(16)).all()


def _every_connection(check: Callable[[], bool]) -> list[bool]:
    return [check() for _ in range(CONNECTIONS)]


def _model_ready(server: Server, model: str) -> list[bool]:
    """``model``'s readiness over fresh HTTP and gRPC connections."""
    def over_http() -> bool:
        client = httpclient.InferenceServerClient(server.http, connection_timeout=30, network_timeout=30)
        try:
            return bool(client.is_model_ready(model))
        finally:
            client.close()

    def over_grpc() -> bool:
        with grpcclient.InferenceServerClient(server.grpc) as client:
            return bool(client.is_model_ready(model))

    return _every_connection(over_http) + _every_connection(over_grpc)


# -- the tests, in order ----------------------------------------------------------------------------------------


def test_both_workers_take_connections(server: Server) -> None:
    workers = set()
    for attempt in range(200):  # bounded: 24 connections see both workers but for a 1 in 8 million chance
        status, headers, _ = _get(server.http, "/v2/health/ready")
        assert status == 200
        workers.add(headers["x-v2server-worker"])
        if len(workers) == 2 and attempt >= CONNECTIONS:
            break
    pids = _worker_pids(server)
    assert sorted(workers) == [f"{index}; pid={pid}" for index, pid in sorted(pids.items())]
    assert len(set(pids.values())) == 2 and server.supervised.process.pid not in pids.values()
    for _ in range(CONNECTIONS):
        _infer_http(server)
        _infer_grpc(server)


def test_load_unload_and_aliases_reach_every_worker(server: Server) -> None:
    assert not any(_model_ready(server, "example_adder"))
    http_client = httpclient.InferenceServerClient(server.http, connection_timeout=60, network_timeout=60)
    try:
        http_client.load_model("example_adder")
    finally:
        http_client.close()
    assert all(_model_ready(server, "example_adder"))  # answered only once every worker loaded it

    with grpcclient.InferenceServerClient(server.grpc) as client:
        client.unload_model("example_adder")
    assert not any(_model_ready(server, "example_adder"))
    with grpcclient.InferenceServerClient(server.grpc) as client:
        client.load_model("example_adder")  # loaded at run time: the restart test looks for it
    assert all(_model_ready(server, "example_adder"))

    status, _, body = _get(server.http, "/v1/simple/aliases/stable", "PUT", json.dumps({"version": 1}).encode())
    assert status == 200, body
    seen = [json.loads(_get(server.http, "/v1/simple/aliases")[2]) for _ in range(CONNECTIONS)]
    assert seen == [{"stable": 1}] * CONNECTIONS
    assert _get(server.http, "/v1/simple/aliases/stable", "DELETE")[0] == 200
    assert [json.loads(_get(server.http, "/v1/simple/aliases")[2]) for _ in range(CONNECTIONS)] == [{}] * CONNECTIONS


def test_shared_memory_regions_reach_every_worker(server: Server) -> None:
    name, key = f"workers-{uuid.uuid4().hex[:8]}", f"/v2server-workers-{uuid.uuid4().hex[:8]}"
    region = shm.create_shared_memory_region(name, key, 64)
    try:
        with grpcclient.InferenceServerClient(server.grpc) as client:
            client.register_system_shared_memory(name, key, 64)

        def registered() -> bool:
            with grpcclient.InferenceServerClient(server.grpc) as client:
                return name in client.get_system_shared_memory_status().regions

        assert all(_every_connection(registered))
        with grpcclient.InferenceServerClient(server.grpc) as client:
            client.unregister_system_shared_memory(name)
        assert not any(_every_connection(registered))
    finally:
        shm.destroy_shared_memory_region(region)


def test_statistics_and_metrics_are_the_sum_over_workers(server: Server) -> None:
    def total() -> int:
        with grpcclient.InferenceServerClient(server.grpc) as client:
            stats = client.get_inference_statistics("simple", as_json=True)
        return sum(int(s["inference_stats"]["success"].get("count", 0)) for s in stats["model_stats"])

    before, metric_before = total(), _metric(server, "nv_inference_request_success_total", model="simple")
    local_before = _local_successes(server, "simple")
    assert sum(local_before.values()) == before
    inferences = 2 * CONNECTIONS
    for _ in range(CONNECTIONS):  # fresh connections over both transports
        _infer_http(server)
        _infer_grpc(server)
    # any worker answers for all of them, over either transport
    assert {total() for _ in range(8)} == {before + inferences}
    client = httpclient.InferenceServerClient(server.http)
    try:
        stats = client.get_inference_statistics("simple")
    finally:
        client.close()
    assert sum(int(s["inference_stats"]["success"]["count"]) for s in stats["model_stats"]) == before + inferences
    assert _metric(server, "nv_inference_request_success_total", model="simple") == metric_before + inferences
    local = _local_successes(server, "simple")
    grew = {index: local[index] - local_before[index] for index in local}
    assert sum(grew.values()) == inferences
    assert all(count > 0 for count in grew.values()), grew  # both workers served some of them


def test_a_killed_worker_is_restarted_not_ready_meanwhile_and_catches_up(server: Server) -> None:
    pids = _worker_pids(server)
    victim = pids[1]
    os.kill(victim, signal.SIGKILL)

    def ready_status() -> int:
        try:
            return _get(server.http, "/v2/health/ready")[0]
        except OSError:  # a connection the dying worker's listener had taken, reset
            return 0

    _until(lambda: ready_status() != 200, 30, "readiness to turn false")
    _until(lambda: ready_status() == 200 and _worker_pids(server).get(1) not in (None, victim), 180,
           "the restarted worker to be up")
    restarted = _worker_pids(server)
    assert restarted[0] == pids[0] and restarted[1] != victim
    assert _metric(server, "v2server_worker_restarts_total", worker="1") == 1
    assert f"worker 1 (pid {victim}) exited with signal 9" in server.supervised.log
    channel, stub = _private_stub(restarted[1], 1)
    with channel:  # the model loaded at run time is there: replayed from the journal
        assert stub.ModelReady(pb.ModelReadyRequest(name="example_adder"), timeout=30).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name="simple"), timeout=30).ready
    assert all(_model_ready(server, "example_adder"))
    with grpcclient.InferenceServerClient(server.grpc) as client:
        assert client.is_server_ready()


def test_sigterm_drains_every_worker(server: Server) -> None:
    pids = _worker_pids(server)
    assert len(pids) == 2
    process = server.supervised.process
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    for pid in pids.values():
        with contextlib.suppress(FileNotFoundError):  # gone, or at most a zombie of a reaped process
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
            pytest.fail(f"worker pid {pid} still exists (state {state})")
    assert "shutting down: draining 2 workers" in server.supervised.log
