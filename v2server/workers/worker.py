"""What running as one of several worker processes adds to a server (``--workers``; ``server.V2Server``).

A worker listens on the public HTTP and gRPC ports beside the others (SO_REUSEPORT: the kernel spreads new
connections over them), leaves ``/metrics`` to the supervisor, opens its private endpoint before it loads
anything (so no change made meanwhile passes it by), replays the control journal after its start-up loads,
then tells the supervisor it is up. Its readiness is false while the supervisor's marker says a worker is
starting; a watcher pushes that to ``grpc.health.v1`` too (and stops the worker if its supervisor is gone).
Its log lines and HTTP answers name it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import tornado.httputil
import tornado.web

from v2server._proto import model_config_pb2 as mc
from v2server.dataplane import DataPlane
from v2server.errors import V2Error
from v2server.handle import ModelHandle
from v2server.workers.identity import WorkerIdentity
from v2server.workers.journal import Journal
from v2server.workers.peers import Peers, local_only
from v2server.workers.private import PrivateServer

__all__ = ["WORKER_HEADER", "WorkerRole"]

log = logging.getLogger(__name__)

#: on every HTTP answer of a worker: its index and pid (which process served a connection)
WORKER_HEADER = "X-V2Server-Worker"
#: how often the readiness watcher looks at the supervisor's marker
WATCH_INTERVAL = 0.25


class WorkerRole:
    """Worker ``identity.index`` of ``identity.count``: its peers, private endpoint and readiness watcher."""

    def __init__(self, identity: WorkerIdentity) -> None:
        self.identity = identity
        self.peers = Peers(identity)
        self._private: PrivateServer | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._supervisor = os.getppid()

    def tag_logs(self) -> None:
        """Log lines name this worker (the workers share one standard error): ``v2server.server[worker 1]``."""
        make = logging.getLogRecordFactory()
        tag = f"[worker {self.identity.index}]"

        def record(*args: Any, **kwargs: Any) -> logging.LogRecord:
            made = make(*args, **kwargs)
            made.name = f"{made.name}{tag}"
            return made

        logging.setLogRecordFactory(record)

    def header(self) -> type[tornado.web.OutputTransform]:
        """A Tornado transform that puts ``X-V2Server-Worker: INDEX; pid=PID`` on every answer."""
        value = f"{self.identity.index}; pid={os.getpid()}"

        class WorkerHeader(tornado.web.OutputTransform):
            def transform_first_chunk(
                self, status_code: int, headers: tornado.httputil.HTTPHeaders, chunk: bytes, finishing: bool
            ) -> tuple[int, tornado.httputil.HTTPHeaders, bytes]:
                headers[WORKER_HEADER] = value
                return status_code, headers, chunk

        return WorkerHeader

    async def open(self, core: DataPlane, metrics: Callable[[], bytes]) -> None:
        """Start the private endpoint (before any model loads)."""
        self._private = PrivateServer(self.identity, core, metrics)
        await self._private.start()

    async def catch_up(self, core: DataPlane) -> None:
        """Replay the journal: the changes the other workers made before and while this one started."""
        entries = await asyncio.to_thread(Journal(self.identity.journal).entries)
        with local_only():
            for entry in entries:
                try:
                    await getattr(core, entry.method)(entry.request)
                except V2Error as exc:
                    log.warning("replaying %s from the journal failed: %s", entry.method, exc.message)
        if entries:
            log.info("replayed %d journaled change(s) of the other workers", len(entries))

    def warn_about_gpus(self, handles: Iterable[ModelHandle]) -> None:
        """Worker 0 says when models sit on a GPU: every worker holds its own copy there."""
        on_gpu = sorted({h.name for h in handles for g in h.config.instance_group
                         if g.kind == mc.ModelInstanceGroup.KIND_GPU and g.gpus})
        if on_gpu and self.identity.index == 0:
            log.warning("--workers %d with models on GPUs (%s): each worker loads its own copy onto the GPU "
                        "(memory x %d); --workers 1 is the setting for GPU serving", self.identity.count,
                        ", ".join(on_gpu), self.identity.count)

    def serving(self, readiness_changed: Callable[[], Awaitable[None]]) -> None:
        """Tell the supervisor this worker is up; from now on push marker changes to ``readiness_changed``."""
        up = self.identity.up_file(self.identity.index)
        temporary = up.with_suffix(".tmp")
        temporary.write_text(str(os.getpid()))
        os.replace(temporary, up)
        self._watcher = asyncio.create_task(self._watch(readiness_changed))

    async def _watch(self, readiness_changed: Callable[[], Awaitable[None]]) -> None:
        known = self.peers.all_up()
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            if os.getppid() != self._supervisor:  # the supervisor was killed: drain and exit, as on SIGTERM
                log.error("the supervisor (pid %d) is gone: shutting down", self._supervisor)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            now = self.peers.all_up()
            if now != known:
                known = now
                await readiness_changed()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._private is not None:
            await self._private.stop()
