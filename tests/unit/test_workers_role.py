"""What a worker adds to a server (v2server/workers/worker.py): the GPU warning, its HTTP header, catching up."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import model_config_pb2 as mc
from v2server.workers.identity import WorkerIdentity
from v2server.workers.journal import Journal
from v2server.workers.worker import WorkerRole


def _handle(name: str, kind: int, gpus: list[int]) -> SimpleNamespace:
    config = mc.ModelConfig(name=name)
    config.instance_group.add(kind=kind, count=1, gpus=gpus)
    return SimpleNamespace(name=name, config=config)


def test_worker_0_warns_about_models_on_gpus(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    handles = [_handle("on_gpu", mc.ModelInstanceGroup.KIND_GPU, [0]),
               _handle("on_cpu", mc.ModelInstanceGroup.KIND_CPU, []),
               _handle("gpu_asked_none_there", mc.ModelInstanceGroup.KIND_GPU, [])]  # placed on the CPU
    with caplog.at_level(logging.WARNING):
        WorkerRole(WorkerIdentity(1, 2, tmp_path)).warn_about_gpus(handles)  # type: ignore[arg-type]
        assert caplog.text == ""  # one warning for the server, from worker 0
        WorkerRole(WorkerIdentity(0, 2, tmp_path)).warn_about_gpus(handles)  # type: ignore[arg-type]
    assert "models on GPUs (on_gpu)" in caplog.text and "--workers 1 is the setting for GPU serving" in caplog.text


def test_the_http_header_names_the_worker(tmp_path: Path) -> None:
    import tornado.httputil

    header = WorkerRole(WorkerIdentity(3, 4, tmp_path)).header()
    headers = tornado.httputil.HTTPHeaders()
    status, headers, chunk = header(None).transform_first_chunk(200, headers, b"{}", True)  # type: ignore[arg-type]
    assert (status, chunk) == (200, b"{}")
    assert headers["X-V2Server-Worker"] == f"3; pid={os.getpid()}"


async def test_catching_up_replays_the_journal_here_only(tmp_path: Path) -> None:
    identity = WorkerIdentity(1, 2, tmp_path)
    journal = Journal(identity.journal)
    journal.note("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="a"))
    journal.note("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name="b"))
    called: list[tuple[str, str]] = []

    class Core:
        async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest) -> None:
            called.append(("load", request.model_name))

        async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest) -> None:
            from v2server.errors import ModelNotFound

            called.append(("unload", request.model_name))
            raise ModelNotFound("not loaded here")  # logged, and the replay goes on

    await WorkerRole(identity).catch_up(Core())  # type: ignore[arg-type]
    assert called == [("load", "a"), ("unload", "b")]
