"""Model lifecycle: control modes, the repository API over both protocols, reload under traffic, warmup."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.assets.test_models import Failing, Scaled, _config, _save, _tensor
from tests.conftest import BUNDLED_REPOSITORY, RunningServer, loopback_settings

SCALED_BODY = "max_batch_size: 0\n" + "\n".join(
    [_tensor("input", "INPUT0", "TYPE_INT32", "[ 4 ]"), _tensor("output", "OUTPUT0", "TYPE_INT32", "[ 4 ]")]
)
DATA = np.array([1, 2, 3, 4], dtype=np.int32)


def _scaled(repo: Path, name: str, factor: int, version: int = 1, extra: str = "") -> None:
    _save(repo, name, Scaled(factor), _config(name, SCALED_BODY + "\n" + extra), version)


def _infer(client: grpcclient.InferenceServerClient, model: str, version: str = "") -> np.ndarray:
    tensor = grpcclient.InferInput("INPUT0", [4], "INT32")
    tensor.set_data_from_numpy(DATA)
    return client.infer(model, [tensor], model_version=version).as_numpy("OUTPUT0")


def _wait_until(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    shutil.copytree(BUNDLED_REPOSITORY / "simple", tmp_path / "simple")
    shutil.copytree(BUNDLED_REPOSITORY / "mlp", tmp_path / "mlp")
    _scaled(tmp_path, "scaled", 1)
    return tmp_path


@pytest.fixture
def explicit(repo: Path) -> Iterator[RunningServer]:
    running = RunningServer(loopback_settings(repo, model_control_mode="explicit", load_models=("scaled",)))
    yield running
    running.stop()


def test_explicit_load_unload_over_grpc(explicit: RunningServer) -> None:
    with grpcclient.InferenceServerClient(explicit.grpc_url) as client:
        assert client.is_model_ready("scaled") and not client.is_model_ready("simple")
        client.load_model("simple")
        assert client.is_model_ready("simple")
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["simple"].state == "READY" and index["mlp"].state == "UNAVAILABLE"
        client.unload_model("simple")
        assert not client.is_model_ready("simple")
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["simple"].state == "UNAVAILABLE" and index["simple"].reason == "unloaded"
        assert client.is_server_ready()  # an unloaded model is not one the server should serve
        with pytest.raises(InferenceServerException, match="failed to unload 'nope': not found in the model repository"):
            client.unload_model("nope")
        with pytest.raises(InferenceServerException, match="failed to load 'nope'"):
            client.load_model("nope")


def test_explicit_load_unload_over_http_with_config_override(explicit: RunningServer) -> None:
    client = httpclient.InferenceServerClient(explicit.http_url)
    try:
        client.load_model("mlp", config='{"max_batch_size": "16", "instance_group": [{"count": 2, "kind": "KIND_CPU"}]}')
        config = client.get_model_config("mlp")
        assert config["max_batch_size"] == 16
        assert config["instance_group"][0]["count"] == 2
        assert config["input"][0]["name"] == "INPUT__0"  # the rest of config.pbtxt is kept
        with pytest.raises(InferenceServerException, match="failed to load"):
            client.load_model("mlp", config="{not json")
        assert client.is_model_ready("mlp")  # the failed reload left the previous load serving
        index = {row["name"]: row for row in client.get_model_repository_index()}
        assert "reload failed" in index["mlp"]["reason"]
        client.unload_model("mlp", unload_dependents=True)
        assert not client.is_model_ready("mlp")
    finally:
        client.close()


def test_load_with_file_overrides(explicit: RunningServer, tmp_path: Path) -> None:
    source = tmp_path / "built"
    _scaled(source, "uploaded", 5)
    config = (
        '{"name": "uploaded", "platform": "pytorch_libtorch", "max_batch_size": 0,'
        ' "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [4]}],'
        ' "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [4]}]}'
    )
    files = {"file:1/model.pt": (source / "uploaded" / "1" / "model.pt").read_bytes()}
    with grpcclient.InferenceServerClient(explicit.grpc_url) as client:
        client.load_model("uploaded", config=config, files=files)
        np.testing.assert_array_equal(_infer(client, "uploaded"), DATA * 5)
        with pytest.raises(InferenceServerException, match="need a 'config'"):
            client.load_model("uploaded2", files=files)
    http = httpclient.InferenceServerClient(explicit.http_url)
    try:
        http.load_model("uploaded_http", config=config.replace('"uploaded"', '"uploaded_http"'), files=files)
        assert http.is_model_ready("uploaded_http")
    finally:
        http.close()


def test_reload_under_traffic_fails_no_request(explicit: RunningServer, repo: Path) -> None:
    answers: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        with grpcclient.InferenceServerClient(explicit.grpc_url) as client:
            for _ in range(5000):  # bounded in count and, through `stop`, in time
                if stop.is_set():
                    return
                try:
                    answers.append(int(_infer(client, "scaled")[0]))
                except InferenceServerException as exc:
                    errors.append(exc.message())

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        _wait_until(lambda: len(answers) > 20)
        _scaled(repo, "scaled", 2)  # new weights on disk
        with grpcclient.InferenceServerClient(explicit.grpc_url) as client:
            client.load_model("scaled")
        seen = len(answers)
        _wait_until(lambda: len(answers) > seen + 20)
    finally:
        stop.set()
        worker.join(timeout=60)
    assert errors == []
    assert answers[0] == 1 and answers[-1] == 2
    switch = answers.index(2)
    assert set(answers[switch:]) == {2}, "after the switch every answer comes from the new load"


def test_none_mode_refuses_the_repository_api(repo: Path) -> None:
    running = RunningServer(loopback_settings(repo))
    try:
        with grpcclient.InferenceServerClient(running.grpc_url) as client:
            with pytest.raises(InferenceServerException) as info:
                client.load_model("simple")
            assert info.value.status() == "StatusCode.UNIMPLEMENTED" and "explicit" in info.value.message()
        http = httpclient.InferenceServerClient(running.http_url)
        try:
            with pytest.raises(InferenceServerException) as info:
                http.unload_model("simple")
            assert info.value.status() == "501"
        finally:
            http.close()
    finally:
        running.stop()


def test_poll_mode_follows_the_repository(repo: Path) -> None:
    running = RunningServer(loopback_settings(repo, model_control_mode="poll", repository_poll_seconds=0.2))
    try:
        with grpcclient.InferenceServerClient(running.grpc_url) as client:
            assert client.is_model_ready("scaled")
            _scaled(repo, "added", 3)
            _wait_until(lambda: client.is_model_ready("added"))
            np.testing.assert_array_equal(_infer(client, "added"), DATA * 3)
            _scaled(repo, "scaled", 4, version=2)  # a new version appears
            _wait_until(lambda: client.is_model_ready("scaled", "2"))
            np.testing.assert_array_equal(_infer(client, "scaled"), DATA * 4)
            shutil.rmtree(repo / "added")
            _wait_until(lambda: not client.is_model_ready("added"))
            with pytest.raises(InferenceServerException, match="explicit"):
                client.load_model("added")
    finally:
        running.stop()


def test_warmup_runs_before_ready_and_a_failed_warmup_keeps_the_model_unavailable(tmp_path: Path) -> None:
    warm = """model_warmup [{ name: "zeros" batch_size: 2 count: 3
                 inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } }]"""
    body = "max_batch_size: 4\n" + "\n".join(
        [_tensor("input", "INPUT0", "TYPE_FP32", "[ 4 ]"), _tensor("output", "OUTPUT0", "TYPE_FP32", "[ 4 ]")]
    )
    _save(tmp_path, "warm", Failing(), _config("warm", body + "\n" + warm))
    bad = warm.replace("zeros", "negative").replace("zero_data: true", 'input_data_file: "negative.bin"')
    _save(tmp_path, "cold", Failing(), _config("cold", body + "\n" + bad))
    (tmp_path / "cold" / "warmup").mkdir()
    (tmp_path / "cold" / "warmup" / "negative.bin").write_bytes(np.full(8, -1, np.float32).tobytes())
    running = RunningServer(loopback_settings(tmp_path))
    try:
        with grpcclient.InferenceServerClient(running.grpc_url) as client:
            assert client.is_model_ready("warm")
            assert not client.is_model_ready("cold")
            index = {m.name: m for m in client.get_model_repository_index().models}
            assert index["cold"].state == "UNAVAILABLE"
            assert "negative" in index["cold"].reason and "negative input is not allowed" in index["cold"].reason
    finally:
        running.stop()


def test_config_completed_from_the_module_when_not_strict(tmp_path: Path) -> None:
    (tmp_path / "example_adder" / "1").mkdir(parents=True)
    shutil.copy(BUNDLED_REPOSITORY / "example_adder" / "1" / "model.pt", tmp_path / "example_adder" / "1")
    strict = RunningServer(loopback_settings(tmp_path))
    try:
        with grpcclient.InferenceServerClient(strict.grpc_url) as client:
            assert not client.is_model_ready("example_adder")
    finally:
        strict.stop()
    relaxed = RunningServer(loopback_settings(tmp_path, strict_model_config=False))
    try:
        with grpcclient.InferenceServerClient(relaxed.grpc_url) as client:
            metadata = client.get_model_metadata("example_adder", as_json=True)
            assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [("a", "INT64"), ("b", "INT64"), ("c", "INT64")]
            inputs = []
            for name, value in (("a", 1), ("b", 2), ("c", 3)):
                tensor = grpcclient.InferInput(name, [1], "INT64")
                tensor.set_data_from_numpy(np.array([value], np.int64))
                inputs.append(tensor)
            assert client.infer("example_adder", inputs).as_numpy("OUTPUT__0").tolist() == [6]
    finally:
        relaxed.stop()


def test_several_cpu_instances_share_the_load(tmp_path: Path) -> None:
    _scaled(tmp_path, "multi", 3, extra="")
    config = (tmp_path / "multi" / "config.pbtxt").read_text().replace(
        "instance_group [{ kind: KIND_CPU }]", "instance_group [{ kind: KIND_CPU count: 3 }]"
    )
    (tmp_path / "multi" / "config.pbtxt").write_text(config)
    running = RunningServer(loopback_settings(tmp_path))
    try:
        handle = running.server.registry.get("multi")
        assert len(handle.instances) == 3 and {i.device for i in handle.instances} == {torch.device("cpu")}
        results: list[np.ndarray] = []

        def call() -> None:
            with grpcclient.InferenceServerClient(running.grpc_url) as client:
                for _ in range(10):
                    results.append(_infer(client, "multi"))

        threads = [threading.Thread(target=call) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(results) == 40 and all((r == DATA * 3).all() for r in results)
    finally:
        running.stop()


class Busy(torch.nn.Module):
    """Takes as long as its input asks (``rounds`` matrix products), to keep a request in flight."""

    def forward(self, INPUT0: torch.Tensor) -> torch.Tensor:
        x = torch.ones(256, 256)
        for _ in range(int(INPUT0[0].item())):
            x = torch.tanh(x @ x)
        return INPUT0 + x[0, :4].to(torch.int32) * 0


def test_unload_waits_for_requests_in_flight(tmp_path: Path) -> None:
    _save(tmp_path, "busy", Busy(), _config("busy", SCALED_BODY))
    running = RunningServer(loopback_settings(tmp_path, model_control_mode="explicit", load_models=("busy",)))
    try:
        handle = running.server.registry.get("busy")
        outcome: list[object] = []

        def slow_request() -> None:
            with grpcclient.InferenceServerClient(running.grpc_url) as client:
                tensor = grpcclient.InferInput("INPUT0", [4], "INT32")
                tensor.set_data_from_numpy(np.array([3000, 0, 0, 0], np.int32))
                try:
                    outcome.append(client.infer("busy", [tensor]).as_numpy("OUTPUT0"))
                except InferenceServerException as exc:
                    outcome.append(exc)

        worker = threading.Thread(target=slow_request)
        worker.start()
        _wait_until(lambda: handle.inflight == 1)
        with grpcclient.InferenceServerClient(running.grpc_url) as client:
            client.unload_model("busy")  # returns once the request in flight has finished
            assert handle.inflight == 0
            assert not client.is_model_ready("busy")
        worker.join(timeout=60)
        assert len(outcome) == 1 and isinstance(outcome[0], np.ndarray), outcome
        assert outcome[0].tolist() == [3000, 0, 0, 0]
    finally:
        running.stop()
