"""A worker's peers (v2server/workers/peers.py) against a real private endpoint in this process: changes reach a
running peer, a down peer is skipped, a refusal names the worker, a peer never fans out again, and statistics
are summed."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from v2server._proto import grpc_service_pb2 as pb
from v2server.dataplane import DataPlane
from v2server.errors import V2Error
from v2server.registry import Registry
from v2server.workers.identity import WorkerIdentity
from v2server.workers.journal import Journal
from v2server.workers.peers import Peers
from v2server.workers.private import PrivateServer


@pytest.fixture
async def worker_1(tmp_path: Path) -> AsyncIterator[DataPlane]:
    """Worker 1 of 3, serving its private endpoint; worker 0 is the test's side, worker 2 is down."""
    identity = WorkerIdentity(1, 3, tmp_path)
    (tmp_path / "repository").mkdir()
    core = DataPlane(Registry([tmp_path / "repository"]), control_mode="explicit", peers=Peers(identity))
    private = PrivateServer(identity, core, lambda: b"# worker 1\n")
    await private.start()
    try:
        yield core
    finally:
        await private.stop()


def _peers(directory: Path) -> Peers:
    return Peers(WorkerIdentity(0, 3, directory))


async def test_a_change_reaches_a_running_peer_and_is_journaled(
    tmp_path: Path, worker_1: DataPlane, caplog: pytest.LogCaptureFixture
) -> None:
    value = pb.TraceSettingRequest.SettingValue
    change = pb.TraceSettingRequest(settings={"trace_rate": value(value=["7"])})
    with caplog.at_level(logging.INFO):
        await _peers(tmp_path).apply("TraceSetting", change)
    answer = await worker_1.TraceSetting(pb.TraceSettingRequest())
    assert list(answer.settings["trace_rate"].value) == ["7"]
    assert "worker 2 is down" in caplog.text  # skipped: it replays the journal when it starts
    assert "worker 0 is down" not in caplog.text  # worker 1 did not tell anyone again
    assert [entry.method for entry in Journal(tmp_path / "journal").entries()] == ["TraceSetting"]


async def test_a_peer_that_refuses_is_named(tmp_path: Path, worker_1: DataPlane) -> None:
    with pytest.raises(V2Error) as refused:
        await _peers(tmp_path).apply("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="absent"))
    assert refused.value.message.startswith("worker 1 refused what the other workers did: ")
    assert "absent" in refused.value.message
    with pytest.raises(V2Error, match="worker 1 refused .*unknown model: 'absent'") as refused:
        await _peers(tmp_path).alias("absent", "stable", 1)
    assert refused.value.grpc_code.name == "NOT_FOUND"  # the peer's status, kept


async def test_statistics_add_the_peers_and_skip_one_without_the_model(tmp_path: Path, worker_1: DataPlane) -> None:
    local = pb.ModelStatisticsResponse(model_stats=[pb.ModelStatistics(name="m", version="1", inference_count=3)])
    peers = _peers(tmp_path)
    assert await peers.statistics(pb.ModelStatisticsRequest(), local) == local  # worker 1 serves nothing
    assert await peers.statistics(pb.ModelStatisticsRequest(name="m"), local) == local  # NOT_FOUND there: skipped


async def test_readiness_follows_the_marker(tmp_path: Path) -> None:
    peers = _peers(tmp_path)
    assert peers.all_up()
    WorkerIdentity(0, 3, tmp_path).starting_marker.touch()
    assert not peers.all_up()
