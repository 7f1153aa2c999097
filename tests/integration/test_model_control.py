"""What Triton's ``simple_grpc_model_control.py`` / ``simple_http_model_control.py`` do, over both transports:
config overrides on load (a malformed one fails with "failed to load"; a partial one changes only its fields),
an oversized upload path, an unknown model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import BUNDLED_REPOSITORY, RunningServer, loopback_settings


@pytest.fixture(scope="module")
def explicit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("model_control")
    (repo / "simple").symlink_to(BUNDLED_REPOSITORY / "simple", target_is_directory=True)
    running = RunningServer(loopback_settings(repo, model_control_mode="explicit"))
    yield running
    running.stop()


def _client(server: RunningServer, protocol: str) -> Any:
    if protocol == "grpc":
        return grpcclient.InferenceServerClient(server.grpc_url)
    return httpclient.InferenceServerClient(server.http_url)


def _config(client: Any, protocol: str) -> dict[str, Any]:
    return (
        client.get_model_config("simple", as_json=True)["config"]
        if protocol == "grpc"
        else client.get_model_config("simple")
    )


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_config_overrides_on_load(explicit: RunningServer, protocol: str) -> None:
    client = _client(explicit, protocol)
    try:
        client.load_model("simple")
        assert client.is_model_ready("simple")
        with pytest.raises(InferenceServerException, match="failed to load"):
            client.load_model("simple", config='"parameters": {"config": {{"max_batch_size": "16"}}}')
        assert client.is_model_ready("simple")  # a refused override leaves the model as it was
        client.load_model("simple", config='{"max_batch_size":"16"}')
        config = _config(client, protocol)
        assert int(config["max_batch_size"]) == 16
        assert [t["name"] for t in config["input"]] == ["INPUT0", "INPUT1"]  # the rest of config.pbtxt stays
        assert [t["name"] for t in config["output"]] == ["OUTPUT0", "OUTPUT1"]
        client.unload_model("simple")
        assert not client.is_model_ready("simple")
        with pytest.raises(InferenceServerException, match="failed to load"):
            client.load_model("wrong_model_name")
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_an_oversized_upload_path_is_refused_with_tritons_phrase(
    explicit: RunningServer, protocol: str
) -> None:
    """Triton answers INTERNAL ("failed to poll from model repository"); its own example's TODO says
    INVALID_ARGUMENT fits better, which is what we answer, with Triton's phrase in the message."""
    client = _client(explicit, protocol)
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.load_model("simple", config="{}", files={"file:" + "A" * 256: b"a"})
        assert "failed to poll from model repository" in caught.value.message()
        assert "failed to load 'simple'" in caught.value.message()
        assert "at most 255 bytes" in caught.value.message()
        assert caught.value.status() == ("StatusCode.INVALID_ARGUMENT" if protocol == "grpc" else "400")
        assert client.is_server_live()
    finally:
        client.close()


def test_repository_index_counts_every_model(explicit: RunningServer) -> None:
    with grpcclient.InferenceServerClient(explicit.grpc_url) as client:
        assert [m.name for m in client.get_model_repository_index().models] == ["simple"]
