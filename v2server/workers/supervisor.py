"""The supervisor of ``--workers N``: starts N server processes on the same ports, restarts the ones that die,
serves ``/metrics`` for all of them, and drains them all on SIGTERM.

Each worker is ``python -m v2server`` with the same arguments (a fresh interpreter: torch and grpc are not
fork-safe) and its identity in the environment (``identity.py``). Port 0 is resolved here, once, to a free
port that stays reserved (bound, not listening, SO_REUSEPORT) so that every worker binds the same one and
nothing else takes it meanwhile; the workers bind the public HTTP and gRPC ports with SO_REUSEPORT and the
kernel spreads new connections over them. The supervisor itself loads no model and imports no torch.

While a worker is not up (starting, or dead and waiting for its restart) a marker file in the private folder
makes every worker report not ready; liveness stays true. A worker that exits before the server first became
ready stops the whole server (a bad flag, a busy port: what a single process would exit with); one that dies
later is restarted after a back-off that doubles with each failure (0.5 s up to 30 s; reset once it has run
for a minute). SIGTERM or SIGINT is passed to every worker, which drains as a single server does; one still
running ``--exit-timeout-secs`` + 15 s later is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tornado.httpserver
import tornado.netutil

from v2server.auth import ApiKeys
from v2server.settings import Settings
from v2server.tls import http_ssl_context
from v2server.workers.identity import WorkerIdentity
from v2server.workers.scrape import WorkerState, make_metrics_app

__all__ = ["Supervisor", "supervise"]

log = logging.getLogger("v2server.supervisor")

POLL_INTERVAL = 0.2
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: a worker that ran this long has its back-off reset
STABLE_AFTER = 60.0
#: on top of --exit-timeout-secs: what a draining worker gets to release its models and exit
EXIT_MARGIN = 15.0
#: a unix socket path must fit in sun_path (108 bytes with its terminator)
_SOCKET_PATH_MAX = 100


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    up: bool = False
    restarts: int = 0
    failures: int = 0
    due: float = 0.0


@dataclass
class Supervisor:
    """``settings.workers`` workers of the server that ``argv`` (the command line, without the program) starts."""

    settings: Settings
    argv: Sequence[str]
    workers: list[_Worker] = field(init=False, default_factory=list)
    _directory: Path = field(init=False)
    _reserved: list[socket.socket] = field(init=False, default_factory=list)
    _serving: bool = field(init=False, default=False)
    _failed: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.workers = [_Worker(index) for index in range(self.settings.workers)]

    async def run(self) -> int:
        """Supervise until SIGTERM or SIGINT (returns 0 once every worker drained) or a failed first start
        (returns 1)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        self._directory = _private_folder()
        metrics: tornado.httpserver.HTTPServer | None = None
        try:
            args, env = self._worker_command()
            self._marker.touch()
            if self.settings.allow_metrics:
                metrics = self._serve_metrics()
            log.info("starting %d workers (each loads its own copy of the models)", len(self.workers))
            while not stop.is_set() and self._failed is None:
                self._tick(args, env)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL_INTERVAL)
            clean = await self._drain()
        finally:
            if metrics is not None:
                metrics.stop()
            for reserved in self._reserved:
                reserved.close()
            shutil.rmtree(self._directory, ignore_errors=True)
        if self._failed is not None:
            return 1
        return 0 if clean else 1

    # -- start and restart ------------------------------------------------------------------------------------

    def _identity(self, index: int) -> WorkerIdentity:
        return WorkerIdentity(index, len(self.workers), self._directory)

    @property
    def _marker(self) -> Path:
        return self._identity(0).starting_marker

    def _worker_command(self) -> tuple[list[str], dict[str, str]]:
        """The workers' arguments (concrete ports appended: the last occurrence of a flag wins) and environment."""
        settings = self.settings
        args = [*self.argv]
        if settings.allow_http:
            args.append(f"--http-port={self._reserve(settings.http_address, settings.http_port)}")
        if settings.allow_grpc:
            args.append(f"--grpc-port={self._reserve(settings.grpc_address, settings.grpc_port)}")
        env = dict(os.environ)
        # links to stored /v1 answers must work whichever worker serves them: one folder, one key
        if settings.results_dir is None and not settings.results_url:
            env["V2SERVER_RESULTS_DIR"] = str(self._directory / "results")
        if not settings.results_secret:
            env["V2SERVER_RESULTS_SECRET"] = secrets.token_hex(32)
        return args, env

    def _reserve(self, address: str, port: int) -> int:
        """``port``, or for 0 a free port, held bound (not listening) with SO_REUSEPORT until the end."""
        if port != 0:
            return port
        family, kind, _, _, where = socket.getaddrinfo(
            address or None, 0, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )[0]
        held = socket.socket(family, kind)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(where)
        self._reserved.append(held)
        bound: int = held.getsockname()[1]
        return bound

    def _start(self, worker: _Worker, args: list[str], env: dict[str, str]) -> None:
        identity = self._identity(worker.index)
        for stale in (identity.up_file(worker.index), identity.socket(worker.index)):
            stale.unlink(missing_ok=True)
        worker.process = subprocess.Popen(
            [sys.executable, "-m", "v2server", *args], env={**env, **identity.environ()}, stdin=subprocess.DEVNULL
        )
        worker.started = time.monotonic()
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)

    def _tick(self, args: list[str], env: dict[str, str]) -> None:
        """Start what is due, notice what came up or died, keep the marker true to the workers' states."""
        now = time.monotonic()
        for worker in self.workers:
            if worker.process is None:
                if now >= worker.due:
                    self._start(worker, args, env)
                continue
            code = worker.process.poll()
            if code is None:
                if not worker.up and self._says_up(worker):
                    worker.up = True
                    log.info("worker %d (pid %d) is up", worker.index, worker.process.pid)
                if worker.up and now - worker.started > STABLE_AFTER:
                    worker.failures = 0
                continue
            self._exited(worker, code, now)
        all_up = all(worker.up for worker in self.workers)
        if all_up:
            self._marker.unlink(missing_ok=True)
            if not self._serving:
                self._serving = True
                log.info("server ready: all %d workers up", len(self.workers))
        else:
            self._marker.touch()

    def _says_up(self, worker: _Worker) -> bool:
        assert worker.process is not None
        try:
            return self._identity(worker.index).up_file(worker.index).read_text() == str(worker.process.pid)
        except OSError:
            return False

    def _exited(self, worker: _Worker, code: int, now: float) -> None:
        assert worker.process is not None
        pid, worker.process, worker.up = worker.process.pid, None, False
        self._marker.touch()  # at once: no worker answers ready from here until the restart is up
        how = f"signal {-code}" if code < 0 else f"code {code}"
        if not self._serving:
            log.error("worker %d (pid %d) exited with %s before the server was ready: stopping", worker.index,
                      pid, how)
            self._failed = code
            return
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2**worker.failures)
        worker.failures += 1
        worker.restarts += 1
        worker.due = now + delay
        log.warning("worker %d (pid %d) exited with %s: restarting it in %.1f s (not ready meanwhile)",
                    worker.index, pid, how, delay)

    # -- metrics and shutdown ---------------------------------------------------------------------------------

    def states(self) -> list[WorkerState]:
        return [
            WorkerState(w.index, w.process.pid if w.process else None, w.up, w.restarts,
                        self._identity(w.index).socket(w.index))
            for w in self.workers
        ]

    def _serve_metrics(self) -> tornado.httpserver.HTTPServer:
        settings = self.settings
        keys = ApiKeys(settings.api_keys) if settings.metrics_api_key_required else None
        server = tornado.httpserver.HTTPServer(make_metrics_app(self.states, keys),
                                               ssl_options=http_ssl_context(settings), xheaders=False)
        try:
            sockets = tornado.netutil.bind_sockets(settings.metrics_port, settings.metrics_address)
        except OSError as exc:
            raise OSError(f"cannot listen for metrics on {settings.metrics_address}:{settings.metrics_port}: "
                          f"{exc.strerror}") from exc
        server.add_sockets(sockets)
        log.info("metrics server listening on %s:%d", settings.metrics_address, sockets[0].getsockname()[1])
        return server

    async def _drain(self) -> bool:
        """SIGTERM to every worker, then wait for them (bounded); True when none had to be killed."""
        running = [w.process for w in self.workers if w.process is not None]
        log.info("shutting down: draining %d workers (up to %.0f s)", len(running),
                 self.settings.shutdown_grace_seconds)
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds + EXIT_MARGIN
        while any(p.poll() is None for p in running) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        clean = True
        for process in running:
            if process.poll() is None:
                log.error("worker pid %d did not exit in time: killing it", process.pid)
                process.kill()
                process.wait()
                clean = False
            elif process.returncode != 0:
                log.warning("worker pid %d exited with code %d", process.pid, process.returncode)
        return clean


def _private_folder() -> Path:
    """A folder only this user can enter (mkdtemp: 0700), short enough for the unix sockets inside."""
    folder = Path(tempfile.mkdtemp(prefix="v2server-workers-"))
    if len(str(folder / "worker-999.sock")) > _SOCKET_PATH_MAX:
        shutil.rmtree(folder)
        folder = Path(tempfile.mkdtemp(prefix="v2server-workers-", dir="/tmp"))
    return folder


def supervise(settings: Settings, argv: Sequence[str]) -> int:
    """Run the server as ``settings.workers`` processes; returns the exit code."""
    return asyncio.run(Supervisor(settings, argv).run())
