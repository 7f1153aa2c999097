"""Instances on CUDA devices: placement per instance_group, correct results, completed config (GPU only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

from tests.assets.test_models import Identity, _config, _save, _tensor
from tests.conftest import BUNDLED_REPOSITORY, RunningServer, loopback_settings

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class DeviceReport(torch.nn.Module):
    """Returns its input doubled and the CUDA device index it ran on (-1 on CPU)."""

    def forward(self, INPUT0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = INPUT0.get_device()
        return INPUT0 * 2, torch.full([INPUT0.shape[0], 1], index, dtype=torch.int32)


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    repo = tmp_path_factory.mktemp("gpu_models")
    body = "max_batch_size: 8\n" + "\n".join([
        _tensor("input", "INPUT0", "TYPE_FP32", "[ -1 ]"),
        _tensor("output", "OUTPUT0", "TYPE_FP32", "[ -1 ]"),
        _tensor("output", "DEVICE", "TYPE_INT32", "[ 1 ]"),
    ])
    _save(repo, "on_gpu", DeviceReport(),
          _config("on_gpu", body).replace("instance_group [{ kind: KIND_CPU }]", "instance_group [{ kind: KIND_GPU count: 2 gpus: [ 0 ] }]"))
    _save(repo, "on_cpu", DeviceReport(), _config("on_cpu", body))
    _save(repo, "identity_bf16_gpu", Identity(), _config("identity_bf16_gpu", "max_batch_size: 8\n" + "\n".join([
        _tensor("input", "INPUT0", "TYPE_BF16", "[ -1 ]"), _tensor("output", "OUTPUT0", "TYPE_BF16", "[ -1 ]")
    ])).replace("KIND_CPU", "KIND_GPU"))
    running = RunningServer(loopback_settings(BUNDLED_REPOSITORY, repo))
    yield running
    running.stop()


def _infer(client: grpcclient.InferenceServerClient, model: str, data: np.ndarray, datatype: str = "FP32"):  # type: ignore[no-untyped-def]
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return client.infer(model, [tensor])


def test_gpu_instances_run_on_the_gpu(gpu_server: RunningServer) -> None:
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    with grpcclient.InferenceServerClient(gpu_server.grpc_url) as client:
        for _ in range(4):  # both instances take requests
            result = _infer(client, "on_gpu", data)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data * 2)
            assert result.as_numpy("DEVICE").tolist() == [[0], [0], [0]]
        cpu = _infer(client, "on_cpu", data)
        assert cpu.as_numpy("DEVICE").tolist() == [[-1], [-1], [-1]]
        group = client.get_model_config("on_gpu", as_json=True)["config"]["instance_group"][0]
        assert group["kind"] == "KIND_GPU" and group["gpus"] == [0] and group["count"] == 2


def test_auto_kind_resolves_to_gpu(gpu_server: RunningServer) -> None:
    with grpcclient.InferenceServerClient(gpu_server.grpc_url) as client:
        group = client.get_model_config("mlp", as_json=True)["config"]["instance_group"][0]
        assert group["kind"] == "KIND_GPU"
        data = np.random.default_rng(0).standard_normal((4, 784)).astype(np.float32)
        module = torch.jit.load(str(BUNDLED_REPOSITORY / "mlp" / "1" / "model.pt"))
        expected = module(torch.from_numpy(data)).detach().numpy()
        tensor = grpcclient.InferInput("INPUT__0", [4, 784], "FP32")
        tensor.set_data_from_numpy(data)
        np.testing.assert_allclose(client.infer("mlp", [tensor]).as_numpy("OUTPUT__0"), expected, rtol=1e-4, atol=1e-4)


def test_bf16_on_gpu(gpu_server: RunningServer) -> None:
    from ml_dtypes import bfloat16

    data = np.array([[1.5, -2.25, 3.0]], dtype=bfloat16)
    with grpcclient.InferenceServerClient(gpu_server.grpc_url) as client:
        output = _infer(client, "identity_bf16_gpu", data, "BF16").as_numpy("OUTPUT0")
    np.testing.assert_array_equal(output.view(np.uint16), data.view(np.uint16))
