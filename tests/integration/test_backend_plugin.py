"""A third-party backend, installed as a package would be, is found through its entry point and served
beside TorchScript: the example of docs/backends.md, pip-installed into a temporary folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from tests.conftest import BUNDLED_REPOSITORY, ROOT, cli_process, logged_port

EXAMPLE = ROOT / "docs" / "examples" / "scale_backend"
DOUBLER = """
name: "doubler"
backend: "scale"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""


def test_an_installed_backend_serves_its_models(tmp_path: Path) -> None:
    source = shutil.copytree(EXAMPLE, tmp_path / "src")  # pip builds in the source folder: not in the repo's
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "--target", str(site),
         str(source)],
        check=True, timeout=300,
    )
    repo = tmp_path / "repo"
    (repo / "doubler" / "1").mkdir(parents=True)
    (repo / "doubler" / "config.pbtxt").write_text(DOUBLER)
    (repo / "doubler" / "1" / "model.json").write_text('{"scale": 2}')
    shutil.copytree(BUNDLED_REPOSITORY / "simple", repo / "simple")
    args = ["--model-repository", str(repo), "--grpc-address", "127.0.0.1", "--grpc-port", "0",
            "--allow-http=false", "--allow-metrics=false"]
    with cli_process(args, until="server ready", env={"PYTHONPATH": str(site)}) as (_, log):
        port = logged_port(log, "gRPC server listening on")
        with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
            assert client.is_server_ready() and client.is_model_ready("simple")
            metadata = client.get_model_metadata("doubler")
            assert metadata.platform == "scale_json"
            tensor = grpcclient.InferInput("INPUT0", [3], "FP32")
            tensor.set_data_from_numpy(np.array([1.5, 2.0, -3.0], dtype=np.float32))
            result = client.infer("doubler", [tensor]).as_numpy("OUTPUT0")
            np.testing.assert_array_equal(result, [3.0, 4.0, -6.0])


def test_the_documented_example_is_the_installed_one() -> None:
    text = (ROOT / "docs" / "backends.md").read_text()
    block = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert block == (EXAMPLE / "scale_backend" / "__init__.py").read_text()
