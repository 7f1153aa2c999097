"""The gRPC transport over a fake core (error mapping, keys, access log), and the REST gateway in front of it."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.netutil

from tests.unit.fake_core import FakeCore
from v2server._proto import grpc_service_pb2 as pb
from v2server.access_log import AccessLog
from v2server.auth import ApiKeys
from v2server.errors import InvalidRequest
from v2server.grpc_api import create_grpc_server
from v2server.rest_api.app import make_app
from v2server.rest_api.remote_core import RemoteCore, connect
from v2server.settings import Settings


@pytest.fixture()
async def served() -> AsyncIterator[tuple[FakeCore, AccessLog, RemoteCore]]:
    """A fake core behind a real gRPC server (key ``k``, JSON access log) and a ``RemoteCore`` to it."""
    core, access = FakeCore(), AccessLog("json")
    settings = Settings(grpc_address="127.0.0.1", grpc_port=0)
    server, port, _ = create_grpc_server(core, settings, access, ApiKeys(("k",)))
    await server.start()
    channel, remote = connect(f"127.0.0.1:{port}", 1 << 20)
    yield core, access, remote
    await channel.close()
    await server.stop(0)


async def test_errors_keys_and_the_access_log(served: tuple[FakeCore, AccessLog, RemoteCore],
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="v2server.access")
    core, access, remote = served
    assert core.observers == [access]  # create_grpc_server subscribed its log
    caller = remote.for_caller("Bearer k")
    request = pb.ModelInferRequest(id="g1", model_name="m", raw_input_contents=[b"\1\2"])
    response = await caller.ModelInfer(request)
    assert response.id == "g1" and response.raw_output_contents == [b"\1\2"]
    core.infer_error = InvalidRequest("input 'INPUT0': bad")
    with pytest.raises(grpc.RpcError) as caught:
        await caller.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "input 'INPUT0': bad"
    with pytest.raises(grpc.RpcError) as caught:
        await remote.for_caller(None).ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (await remote.for_caller(None).ServerLive(pb.ServerLiveRequest())).live  # probes are open
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "v2server.access"]
    infer = [line for line in lines if line["route"].endswith("/ModelInfer")]
    assert [(line["status"], line["request_id"], line["model"], line["batch_size"]) for line in infer] == [
        ("OK", "g1", "m", 4), ("INVALID_ARGUMENT", "g1", "m", 4),
        ("UNAUTHENTICATED", "", "", 0),  # a refused call is logged too, before the core saw it
    ]
    assert infer[0]["queue_us"] == 2.0 and infer[0]["compute_us"] == 3.0


async def test_the_gateway_sends_a_raw_binary_request_as_one_rpc(
    served: tuple[FakeCore, AccessLog, RemoteCore],
) -> None:
    core, _, remote = served
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
    gateway = tornado.httpserver.HTTPServer(make_app(remote))
    gateway.add_sockets(sockets)
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
    try:
        data = np.arange(4, dtype=np.float32).tobytes()
        url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        headers = {"Inference-Header-Content-Length": "0", "Authorization": "Bearer k"}
        response = await client.fetch(f"{url}/v2/models/m/infer", method="POST", body=data, headers=headers)
        assert response.code == 200 and response.body.endswith(data)
        [(rpc, request)] = core.calls
        assert rpc == "ModelInfer" and not request.inputs and list(request.raw_input_contents) == [data]
        answer: Any = await client.fetch(f"{url}/v1/m/official", method="POST", body=b'{"data": [1.0]}',
                                         headers={"Authorization": "Bearer k"}, raise_error=False)
        assert answer.code == 501 and "version aliases" in json.loads(answer.body)["error"]
        answer = await client.fetch(f"{url}/v2/models/nope", headers={"Authorization": "Bearer k"},
                                    raise_error=False)
        assert answer.code == 404 and json.loads(answer.body) == {"error": "unknown model 'nope'"}
    finally:
        client.close()
        gateway.stop()
        await gateway.close_all_connections()
