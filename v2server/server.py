"""The composition root: builds the registry and data plane, starts the transports, drains on shutdown.

This is the only module that knows every transport. Listening starts before models load, so liveness
answers at once while readiness waits for the models (what Kubernetes probes expect).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import tornado.httpserver
import tornado.netutil
import tornado.web
from grpc_health.v1 import health

from v2server.access_log import AccessLog
from v2server.auth import ApiKeys
from v2server.dataplane import DataPlane
from v2server.errors import ModelLoadError, V2Error
from v2server.grpc_api import create_grpc_server, set_serving
from v2server.jobs import JobLimits, JobService, JobStore
from v2server.log_settings import LogControl, LogState
from v2server.memory import keep_freed_memory
from v2server.metrics import LoopLagSampler, make_registry, render
from v2server.registry import Registry
from v2server.repository.aliases import AliasFiles
from v2server.rest_api.app import make_app, make_metrics_app
from v2server.rest_api.remote_core import connect
from v2server.results import ResultStore, open_store
from v2server.settings import Settings
from v2server.shared_memory import SharedMemoryRegistry
from v2server.tls import grpc_channel_credentials, http_ssl_context
from v2server.tracing import Tracer
from v2server.workers.identity import WorkerIdentity
from v2server.workers.worker import WorkerRole

__all__ = ["RestGateway", "V2Server", "run", "serve"]

log = logging.getLogger(__name__)


@dataclass
class RestGateway:
    """A Tornado listener for an application: the REST gateway (over the data plane or a grpc.aio stub),
    or the metrics endpoint."""

    app: tornado.web.Application
    address: str
    port: int
    max_body_size: int
    #: HTTPS when set
    ssl_context: ssl.SSLContext | None = None
    #: a connection must send a request head within this (Tornado's header and keep-alive idle timer)
    idle_timeout: float = 60.0
    #: and its body within this
    body_timeout: float = 300.0
    #: SO_REUSEPORT: several worker processes listen on the same port (``--workers``)
    reuse_port: bool = False
    bound_port: int | None = field(init=False, default=None)
    _server: tornado.httpserver.HTTPServer | None = field(init=False, default=None)

    @classmethod
    def for_settings(cls, app: tornado.web.Application, settings: Settings, address: str, port: int,
                     max_body_size: int) -> RestGateway:
        """A listener with the settings' TLS and timeouts."""
        return cls(
            app, address, port, max_body_size, http_ssl_context(settings),
            settings.http_idle_timeout_seconds, settings.http_body_timeout_seconds,
        )

    def start(self) -> int:
        """Bind (port 0: any free port) and serve; return the bound port."""
        self._server = tornado.httpserver.HTTPServer(
            self.app, max_body_size=self.max_body_size, xheaders=False, ssl_options=self.ssl_context,
            idle_connection_timeout=self.idle_timeout, body_timeout=self.body_timeout,
        )
        try:
            sockets = tornado.netutil.bind_sockets(self.port, self.address, reuse_port=self.reuse_port)
        except OSError as exc:
            raise OSError(f"cannot listen for HTTP on {self.address}:{self.port}: {exc.strerror}") from exc
        self._server.add_sockets(sockets)
        self.bound_port = sockets[0].getsockname()[1]
        return self.bound_port

    def stop_accepting(self) -> None:
        """Close the listening sockets; connections already open keep being served."""
        if self._server is not None:
            self._server.stop()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()


@dataclass
class V2Server:
    """A running server; ``start`` binds and loads, ``stop`` drains and closes."""

    settings: Settings
    #: opentelemetry trace mode: an OpenTelemetry ``SpanExporter`` to send the spans to instead of OTLP/HTTP
    span_exporter: Any = None
    registry: Registry = field(init=False)
    core: DataPlane = field(init=False)
    grpc_port: int | None = field(init=False, default=None)
    http_port: int | None = field(init=False, default=None)
    _grpc: grpc.aio.Server | None = field(init=False, default=None)
    _health: health.aio.HealthServicer | None = field(init=False, default=None)
    _rest: RestGateway | None = field(init=False, default=None)
    _metrics: RestGateway | None = field(init=False, default=None)
    metrics_port: int | None = field(init=False, default=None)
    _poller: asyncio.Task[None] | None = field(init=False, default=None)
    #: asynchronous /v1 jobs (opened before listening, started once the models are loaded)
    jobs: JobService | None = field(init=False, default=None)
    #: where /v1 answers asked for as links go (response_format "links"); started before listening
    results: ResultStore | None = field(init=False, default=None)
    #: v2server_event_loop_lag_seconds on /metrics; samples from start to stop
    loop_lag: LoopLagSampler = field(init=False, default_factory=LoopLagSampler)
    #: one worker of several (``--workers``; the supervisor set its identity): None in a single process
    worker: WorkerRole | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        settings = self.settings
        identity = WorkerIdentity.from_environ()
        if identity is not None:
            self.worker = WorkerRole(identity)
            self.worker.tag_logs()
        self.registry = Registry(
            settings.model_repositories, settings.strict_model_config, self._readiness_changed,
            settings.latency_buckets_us, dict(settings.single_models), alias_files=AliasFiles(settings.state_dir),
        )
        self.access = _access_log(settings)
        self.keys = ApiKeys(settings.api_keys)
        self.tracer = Tracer(settings.trace, settings.api_file_dir, self.span_exporter)
        self.core = DataPlane(
            self.registry, settings.server_name, settings.strict_readiness, settings.model_control_mode,
            max_inflight_bytes=settings.max_inflight_bytes, max_stream_pending=settings.grpc_max_stream_pending,
            shared_memory=SharedMemoryRegistry(settings.max_shm_regions, settings.allow_client_shm),
            tracer=self.tracer, logs=LogControl(LogState.from_settings(settings), settings.api_file_dir),
            peers=self.worker.peers if self.worker is not None else None,
        )

    @property
    def rest_app(self) -> tornado.web.Application | None:
        """The REST gateway's application (its route table), once started with HTTP allowed."""
        return self._rest.app if self._rest is not None else None

    @property
    def metrics_app(self) -> tornado.web.Application | None:
        """The metrics listener's application, once started with metrics allowed."""
        return self._metrics.app if self._metrics is not None else None

    async def start(self) -> None:
        """Listen, load the models, then report ready."""
        settings = self.settings
        self.keys.announce()
        self.loop_lag.start()
        try:
            self.jobs = _job_service(settings, self.core, self.worker)
            await self.jobs.open()
            self.results = open_store(settings)
            await self.results.start()
            await self._listen()
        except BaseException:
            await self.stop(grace=0)  # a listener already started (gRPC, then a bad HTTPS file) must not leak
            raise
        names = self._startup_models() if settings.model_control_mode == "explicit" else None
        failures = await self.registry.load_all(names)
        if failures and settings.exit_on_error:
            reasons = "; ".join(f"{f.name}: {f.reason}" for f in failures)
            await self.stop(grace=0)
            raise ModelLoadError(f"models failed to load (--exit-on-error): {reasons}")
        if self.worker is not None:
            await self.worker.catch_up(self.core)  # what the other workers changed before and meanwhile
            self.worker.warn_about_gpus(self.registry.handles())
        self.core.set_accepting(True)
        assert self.jobs is not None
        await self.jobs.start()
        await self._readiness_changed()
        if self.worker is not None:
            self.worker.serving(self._readiness_changed)
        if settings.model_control_mode == "poll":
            self._poller = asyncio.create_task(self._poll(settings.repository_poll_seconds))
        if self.worker is None:
            log.info("server ready: %s", self.core.ready)
        else:  # the supervisor says when the server is ready: once every worker is up
            log.info("worker up: models loaded")

    async def _listen(self) -> None:
        """Start the enabled listeners; a TLS file that cannot be used raises ``V2Error``, a busy port ``OSError``."""
        settings = self.settings
        reuse_port = self.worker is not None
        if settings.allow_grpc:
            self._grpc, self.grpc_port, self._health = create_grpc_server(
                self.core, settings, self.access, self.keys, reuse_port=reuse_port
            )
            await set_serving(self._health, False)
            await self._grpc.start()
            log.info("gRPC server listening on %s:%d", settings.grpc_address, self.grpc_port)
        if settings.allow_http:
            self._rest = RestGateway.for_settings(
                make_app(
                    self.core, settings.http_max_body_size, self.access, self.keys, settings.cors_allow_origins,
                    default_model=settings.default_model, max_batch_rows=settings.max_batch_rows,
                    jobs=self.jobs, max_response_timeout=settings.max_response_timeout_seconds,
                    results=self.results, results_base_url=settings.results_base_url,
                ),
                settings, settings.http_address, settings.http_port, settings.http_max_body_size,
            )
            if self.worker is not None:
                self._rest.reuse_port = True
                self._rest.app.add_transform(self.worker.header())
            self.http_port = self._rest.start()
            log.info("HTTP server listening on %s:%d", settings.http_address, self.http_port)
        metrics = make_registry(lambda: (handle.stats for handle in self.registry.handles()), loop_lag=self.loop_lag)
        if self.worker is not None:  # the supervisor serves /metrics: this worker's own go to it privately
            await self.worker.open(self.core, lambda: render(metrics)[0])
        elif settings.allow_metrics:
            self._metrics = RestGateway.for_settings(
                make_metrics_app(lambda: render(metrics), self.keys if settings.metrics_api_key_required else None),
                settings, settings.metrics_address, settings.metrics_port, 1 << 16,
            )
            self.metrics_port = self._metrics.start()
            log.info("metrics server listening on %s:%d", settings.metrics_address, self.metrics_port)

    async def _readiness_changed(self) -> None:
        if self._health is not None:
            await set_serving(self._health, self.core.ready)

    async def _poll(self, interval: float) -> None:
        """Poll mode: rescan the repositories every ``interval`` seconds until stopped."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.registry.poll()
            except Exception:
                log.exception("repository poll failed; retrying in %.0f s", interval)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish within ``grace`` seconds, then release models."""
        self.core.set_accepting(False)
        if self.jobs is not None:  # running jobs and deliveries stop where they stand; the next start resumes them
            await self.jobs.stop()
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._poller is not None:
            self._poller.cancel()
        for listener in (self._rest, self._metrics):
            if listener is not None:
                listener.stop_accepting()
        # gRPC refuses new calls and waits for its own; HTTP requests in flight finish on the models meanwhile.
        waits = [asyncio.wait_for(self.registry.drained(), grace)]
        if self._grpc is not None:
            waits.append(self._grpc.stop(grace))
        results = await asyncio.gather(*waits, return_exceptions=True)
        if isinstance(results[0], TimeoutError):
            log.warning("requests still in flight after %.0f s: closing anyway", grace)
        for listener in (self._rest, self._metrics):
            if listener is not None:
                await listener.stop()
        if self.worker is not None:
            await self.worker.close()
        await self.registry.close()
        if self.results is not None:
            await self.results.close()  # a folder the store made is removed; a --results-dir stays
        await asyncio.to_thread(self.core.shared_memory.close)  # unmap (and close CUDA handles): never unlinks
        await asyncio.to_thread(self.tracer.close)  # the traces still pending, the spans still batched
        self.loop_lag.stop()

    def _startup_models(self) -> list[str]:
        """Explicit mode: ``--load-model`` names ('*' is every model on disk)."""
        if "*" in self.settings.load_models:
            return [row.name for row in self.registry.index()]
        return list(dict.fromkeys(self.settings.load_models))


def _job_service(settings: Settings, core: DataPlane, worker: WorkerRole | None = None) -> JobService:
    """Asynchronous /v1 jobs, kept under --state-dir (in memory without it), with the settings' limits."""
    limits = JobLimits(
        max_pending=settings.max_pending_jobs, max_running=settings.max_running_jobs,
        max_rows=settings.max_batch_rows, attempts=settings.webhook_attempts,
        backoff=settings.webhook_backoff_seconds, backoff_max=settings.webhook_backoff_max_seconds,
        result_ttl=settings.job_result_ttl_seconds, record_ttl=settings.job_record_ttl_seconds,
        allow=settings.webhook_allow, secret=settings.webhook_secret, webhook_timeout=settings.webhook_timeout_seconds,
    )
    store = JobStore.in_state_dir(settings.state_dir)
    if worker is not None and settings.state_dir is not None:  # one database per worker: SQLite has one writer
        store = JobStore(settings.state_dir / f"jobs-worker-{worker.identity.index}.sqlite3")
    return JobService(core, store, limits)


def _access_log(settings: Settings) -> AccessLog | None:
    """The access log when requests are logged: JSON lines with --log-format=json, text otherwise."""
    if not settings.log_requests:
        return None
    return AccessLog("json" if settings.log_format == "json" else "text")


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then drain."""
    if settings.grpc_target:
        channel, remote = connect(
            settings.grpc_target, settings.grpc_max_message_size, grpc_channel_credentials(settings)
        )
        access = _access_log(settings)
        results = open_store(settings)
        await results.start()
        gateway = RestGateway.for_settings(
            make_app(
                remote, settings.http_max_body_size, access, ApiKeys(settings.api_keys), settings.cors_allow_origins,
                default_model=settings.default_model, max_batch_rows=settings.max_batch_rows,
                max_response_timeout=settings.max_response_timeout_seconds,
                results=results, results_base_url=settings.results_base_url,
            ),
            settings, settings.http_address, settings.http_port, settings.http_max_body_size,
        )
        port = gateway.start()
        log.info("REST gateway on %s:%d forwarding to gRPC core at %s", settings.http_address, port, settings.grpc_target)
        await _until_signalled()
        await gateway.stop()
        await results.close()
        await channel.close()
        return
    server = V2Server(settings)
    await server.start()
    # The models and the server's own objects live until shutdown: out of the collector's generations, a full
    # collection no longer walks them (about 110 ms over some 200,000 start-up objects, the loop stalled).
    gc.freeze()
    await _until_signalled()
    log.info("shutting down: draining in-flight requests (up to %.0f s)", settings.shutdown_grace_seconds)
    await server.stop()


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when asked or (``auto``) installed: the benchmark measures 10-20 % more infer/s with it."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise V2Error("--event-loop uvloop: uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def run(settings: Settings) -> None:
    keep_freed_memory()
    with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
        runner.run(serve(settings))
