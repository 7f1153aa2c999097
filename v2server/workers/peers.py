"""A worker's client to the other workers: changes made here are made there before the answer; statistics
are summed over all of them; readiness follows the supervisor's marker.

Every call goes to a peer's private endpoint (``private.py``) over a channel opened for that call: control
changes are rare, and a fresh channel never inherits a reconnect back-off from a peer that was restarting.
A peer that is down (no socket, or nothing listening on it) is skipped: the supervisor is restarting it, and
it replays the journal (written before anyone is told) when it starts. A peer that answers with an error makes
the client's answer that error, naming the worker.

What a peer asks of this worker is done here only (``local_only``), so nothing is told twice or in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import grpc_service_pb2_grpc as pb_grpc
from v2server.errors import V2Error, error_for
from v2server.workers.identity import WorkerIdentity
from v2server.workers.journal import JOURNALED, Journal
from v2server.workers.merge import sum_statistics

__all__ = ["CHANNEL_OPTIONS", "CONTROL_TIMEOUT", "PRIVATE_SERVICE", "Peers", "local_only", "private_method"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: a model load may take long on a busy peer; a peer that takes longer than this is reported as failing
CONTROL_TIMEOUT = 600.0
#: statistics and metrics are quick to make
READ_TIMEOUT = 10.0
#: the private endpoint carries model files of a load: the same limits as the public gRPC port's maximum
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1)]
#: what the V2 service lacks: version aliases (JSON) and a worker's own metrics (text)
PRIVATE_SERVICE = "v2server.worker.Private"

_LOCAL_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("v2server_worker_local_only", default=False)

@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Within the block (a peer's call, a journal replay), changes are made in this worker only."""
    token = _LOCAL_ONLY.set(True)
    try:
        yield
    finally:
        _LOCAL_ONLY.reset(token)


def private_method(name: str) -> str:
    return f"/{PRIVATE_SERVICE}/{name}"


class _Down(Exception):
    """The peer is not running (it will catch up from the journal)."""


class Peers:
    """The other workers of ``identity``'s server; what ``DataPlane`` calls when it runs as a worker."""

    def __init__(self, identity: WorkerIdentity) -> None:
        self._identity = identity
        self._journal = Journal(identity.journal)

    def all_up(self) -> bool:
        """False while the supervisor is starting or restarting a worker (its marker file exists)."""
        return not self._identity.starting_marker.exists()

    async def apply(self, method: str, request: Message) -> None:
        """Journal the change ``method(request)`` just made here, then make it in every running peer; returns
        once all of them have. Raises the error of a peer that refused it, naming the peer."""
        if _LOCAL_ONLY.get():
            return
        if method in JOURNALED:
            await asyncio.to_thread(self._journal.note, method, request)

        async def call(channel: grpc.aio.Channel) -> object:
            return await getattr(pb_grpc.GRPCInferenceServiceStub(channel), method)(request, timeout=CONTROL_TIMEOUT)

        await self._everyone(method, call)

    async def alias(self, name: str, alias: str, version: int | None) -> None:
        """Set (``version``) or delete (None) a version alias in every running peer."""
        if _LOCAL_ONLY.get():
            return
        body = json.dumps({"name": name, "alias": alias, "version": version}).encode()
        method = "SetAlias" if version is not None else "DeleteAlias"

        async def call(channel: grpc.aio.Channel) -> object:
            return await channel.unary_unary(private_method(method))(body, timeout=CONTROL_TIMEOUT)

        await self._everyone(f"{method} {name}/{alias}", call)

    async def statistics(
        self, request: pb.ModelStatisticsRequest, local: pb.ModelStatisticsResponse
    ) -> pb.ModelStatisticsResponse:
        """``local`` plus every running peer's statistics for ``request``. A peer that does not serve the model
        (yet: it is starting) adds nothing."""
        if _LOCAL_ONLY.get():
            return local

        async def call(channel: grpc.aio.Channel) -> pb.ModelStatisticsResponse:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            response: pb.ModelStatisticsResponse = await stub.ModelStatistics(request, timeout=READ_TIMEOUT)
            return response

        answers = await asyncio.gather(*(self._call(peer, call) for peer in self._identity.others),
                                       return_exceptions=True)
        theirs: list[pb.ModelStatisticsResponse] = []
        for peer, answer in zip(self._identity.others, answers, strict=True):
            if isinstance(answer, pb.ModelStatisticsResponse):
                theirs.append(answer)
            elif isinstance(answer, grpc.aio.AioRpcError) and answer.code() in (
                grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE
            ):
                log.info("worker %d has no statistics for this request: %s", peer, answer.details())
            elif isinstance(answer, grpc.aio.AioRpcError):
                raise _error(peer, answer)
            elif not isinstance(answer, _Down):
                raise answer
        return sum_statistics([local, *theirs])

    async def _everyone(self, what: str, call: Callable[[grpc.aio.Channel], Awaitable[object]]) -> None:
        answers = await asyncio.gather(*(self._call(peer, call) for peer in self._identity.others),
                                       return_exceptions=True)
        failures: list[V2Error] = []
        for peer, answer in zip(self._identity.others, answers, strict=True):
            if isinstance(answer, _Down):
                log.info("%s: worker %d is down; it replays the change when it is back", what, peer)
            elif isinstance(answer, grpc.aio.AioRpcError):
                failures.append(_error(peer, answer))
            elif isinstance(answer, BaseException):
                raise answer
        if failures:
            raise failures[0]

    async def _call(self, peer: int, call: Callable[[grpc.aio.Channel], Awaitable[_T]]) -> _T:
        """``call`` over a fresh channel to ``peer``; ``_Down`` when nothing listens there."""
        path = self._identity.socket(peer)
        if not path.exists():
            raise _Down(peer)
        async with grpc.aio.insecure_channel(f"unix:{path}", options=CHANNEL_OPTIONS) as channel:
            try:
                return await call(channel)
            except grpc.aio.AioRpcError as exc:
                # grpc's own words when it could not connect; our errors never start like this
                if exc.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (exc.details() or ""):
                    raise _Down(peer) from exc
                raise


def _error(peer: int, exc: grpc.aio.AioRpcError) -> V2Error:
    """A peer's refusal as our error (same status), saying which worker refused and that the others changed."""
    return error_for(exc.code(), f"worker {peer} refused what the other workers did: {exc.details()}")

