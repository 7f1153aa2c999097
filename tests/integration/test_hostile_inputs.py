"""Property-based: generated names, parameters and bodies against a live server, over REST and gRPC.

Whatever hypothesis sends, the server answers with a client error (never a 5xx or INTERNAL/UNKNOWN), writes
nothing outside its own temporary folders, and stays ready.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import BUNDLED_REPOSITORY, RunningServer, http_call, loopback_settings
from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import grpc_service_pb2_grpc as pb_grpc

EXAMPLES = settings(
    max_examples=120, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
HOSTILE_NAMES = ["..", ".", "../x", "../../victim/m", "/tmp/v2server-victim/m", "a/b", "a\\b", "x\x00y", "\n",
                 "simple", "simple/../simple", "é" * 130, "x" * 256, "", " ", "%2e%2e"]
names = st.one_of(st.sampled_from(HOSTILE_NAMES), st.text(max_size=40), st.text(min_size=250, max_size=300))
file_keys = st.one_of(
    st.sampled_from(["file:1/model.pt", "file:../1/model.pt", "file:/etc/x", "file:1/../../x", "file:0/a",
                     "file:1/a/b/c", "file:1", "file:", "file:1/\x00", "file:1/a\\b"]),
    st.text(max_size=20).map(lambda s: "file:" + s),
)
configs = st.one_of(
    st.just('{"max_batch_size": 0, "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [4]}], '
            '"output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [4]}]}'),
    st.sampled_from(['{"default_model_filename": "/etc/passwd"}', '{"max_batch_size": 18446744073709551615}',
                     '{"version_policy": {"specific": {"versions": [-1]}}}', "[]", "null", "{", '{"name": "other"}',
                     '{"cc_model_filenames": {"a": "../../x"}}', '{"instance_group": [{"count": -5}]}']),
    st.text(max_size=60),
)
json_values = st.recursive(
    # the widest integers JSON carries here (orjson's range); wider ones are in test_security's explicit cases
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
load_parameters = st.dictionaries(
    st.one_of(st.just("config"), file_keys, st.text(max_size=12)),
    st.one_of(configs, json_values, st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())),
    max_size=4,
)


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RunningServer, Path]]:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(uploads))
    repo = tmp_path / "repo"
    shutil.copytree(BUNDLED_REPOSITORY / "simple", repo / "simple")
    running = RunningServer(loopback_settings(repo, model_control_mode="explicit", load_models=("simple",)))
    yield running, tmp_path
    running.stop()


def _unharmed(running: RunningServer, root: Path) -> None:
    assert sorted(p.name for p in root.iterdir()) == ["repo", "uploads"]
    assert sorted(p.name for p in (root / "repo").iterdir()) == ["simple"]
    assert not Path("/tmp/v2server-victim").exists()
    assert http_call(running, "GET", "/v2/health/ready")[0] == 200


def test_repository_api_over_rest(hostile: tuple[RunningServer, Path]) -> None:
    running, root = hostile

    @EXAMPLES
    @given(name=names, action=st.sampled_from(["load", "unload"]), parameters=load_parameters)
    def check(name: str, action: str, parameters: dict[str, Any]) -> None:
        path = f"/v2/repository/models/{urllib.parse.quote(name, safe='')}/{action}"
        status, _, body = http_call(running, "POST", path, orjson.dumps({"parameters": parameters}))
        assert status < 500, (status, body)
        if status >= 400:
            assert orjson.loads(body)["error"]
        _unharmed(running, root)

    check()


def test_repository_api_over_grpc(hostile: tuple[RunningServer, Path]) -> None:
    running, root = hostile
    values = st.one_of(
        st.builds(lambda v: pb.ModelRepositoryParameter(string_param=v), configs),
        st.builds(lambda v: pb.ModelRepositoryParameter(bytes_param=v), st.binary(max_size=64)),
        st.builds(lambda v: pb.ModelRepositoryParameter(int64_param=v), st.integers(-(2**63), 2**63 - 1)),
        st.builds(lambda v: pb.ModelRepositoryParameter(bool_param=v), st.booleans()),
    )
    with grpc.insecure_channel(running.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        @EXAMPLES
        @given(name=names, parameters=st.dictionaries(st.one_of(st.just("config"), file_keys), values, max_size=4),
               unload=st.booleans())
        def check(name: str, parameters: dict[str, pb.ModelRepositoryParameter], unload: bool) -> None:
            try:
                if unload:
                    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=name), timeout=60)
                else:
                    stub.RepositoryModelLoad(
                        pb.RepositoryModelLoadRequest(model_name=name, parameters=parameters), timeout=60
                    )
            except grpc.RpcError as exc:
                assert exc.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), exc.details()
            _unharmed(running, root)

        check()


def test_infer_decoders_over_rest(hostile: tuple[RunningServer, Path]) -> None:
    running, root = hostile
    tensors = st.fixed_dictionaries(
        {"name": st.sampled_from(["INPUT0", "INPUT1", "x"]),
         "shape": st.lists(st.integers(-3, 2**40), max_size=3),
         "datatype": st.sampled_from(["INT32", "FP32", "BYTES", "BF16", "FP16", "BOOL", "x"]),
         "data": json_values},
        optional={"parameters": st.dictionaries(st.text(max_size=10), json_values, max_size=2)},
    )
    bodies = st.one_of(
        st.builds(lambda inputs, extra: orjson.dumps({"inputs": inputs, **extra}),
                  st.lists(tensors, max_size=3),
                  st.dictionaries(st.sampled_from(["outputs", "parameters", "id"]), json_values, max_size=2)),
        st.binary(max_size=200),
    )

    header_values = st.one_of(st.none(), st.integers(-5, 400).map(str),
                              st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=5))

    @EXAMPLES
    @given(name=names, body=bodies, header_length=header_values)
    def check(name: str, body: bytes, header_length: str | None) -> None:
        headers = {} if header_length is None else {"Inference-Header-Content-Length": header_length}
        for path in (f"/v2/models/{urllib.parse.quote(name, safe='')}/infer", "/v2/models/simple/infer"):
            status, _, answer = http_call(running, "POST", path, body, headers)
            assert status < 500, (status, answer)
        status, _, answer = http_call(running, "POST", "/v1/simple/latest", body)
        assert status < 500, (status, answer)
        _unharmed(running, root)

    check()
