"""What every REST handler shares: its dependencies, API keys before the body, CORS, errors, the access log.

Handlers get their dependencies from the route table as one ``Dependencies`` object (Tornado passes it to
``initialize``), so a route family chooses its core, limits and error style in one place. ``V2Handler`` is
the base of every handler of the gateway, whichever module defines it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import orjson
import tornado.web

from v2server._proto import grpc_service_pb2 as pb
from v2server.access_log import AccessLog
from v2server.auth import ApiKeys
from v2server.core import InferenceCore
from v2server.errors import Unauthenticated, V2Error
from v2server.rest_api.error_bodies import ErrorBody, describe_error, v2_error_body
from v2server.rest_api.json_codec import HEADER_LENGTH
from v2server.results import ResultStore
from v2server.wire import Buffer, InferAnswer

__all__ = ["Dependencies", "V2Handler"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Dependencies:
    """What a handler needs, given once per route family in the route table.

    Attributes:
        core: the in-process data plane or a remote core (gateway mode); bound to each request's caller.
        max_body_size: bytes; a larger declared or received body is refused with 413 (0: no limit here).
        access: the access log, when requests are logged.
        keys: the API keys every route but the probes needs (None: no keys).
        cors_origins: origins allowed to call from a browser (``*``: any).
        error_body: how this route family renders an error (``{"error"}``, ``{"detail"}``).
        max_batch_rows: rows a ``/v1`` or ``/predict`` batch may hold; more are refused with 413 (0: no
            limit here).
        results: where ``/v1`` answers asked for as links go (``response_format: "links"``); None: refused.
        results_base_url: what the links the gateway serves start with ("": the request's scheme and host).
    """

    core: InferenceCore
    max_body_size: int = 0
    access: AccessLog | None = None
    keys: ApiKeys | None = None
    cors_origins: frozenset[str] = frozenset()
    error_body: ErrorBody = v2_error_body
    max_batch_rows: int = 0
    results: ResultStore | None = None
    results_base_url: str = ""


@tornado.web.stream_request_body
class V2Handler(tornado.web.RequestHandler):
    """Common plumbing: the core from the route table, API keys, CORS, JSON errors, JSON responses.

    Every route streams its body: ``prepare`` runs as soon as the headers arrive, so a request without a
    valid key, or one that declares a body over the limit, is answered (401, 413) before any of its body
    is read, and Tornado closes the connection rather than read the rest. ``body`` is the whole body.

    One exception: a keyless request that declares a small body (``SMALL_BODY``, at most 64 KiB) is
    refused once that body is in, so that the client reads a 401 rather than a connection reset (closing
    a socket with unread data makes the kernel reset it). Every HTTP method of every subclass is wrapped
    (``__init_subclass__``) to raise that refusal first, so no route can forget it.
    """

    #: a refused request whose declared body is at most this is read before the 401 (see above)
    SMALL_BODY = 64 * 1024

    #: health routes stay open to probes when API keys are set
    needs_key = True

    #: Tornado sets the default headers before ``initialize`` runs
    _cors_origins: frozenset[str] = frozenset()

    def initialize(self, deps: Dependencies) -> None:
        self.core = deps.core.for_caller(self.request.headers.get("Authorization"))
        self.max_body_size = deps.max_body_size
        self.max_batch_rows = deps.max_batch_rows
        self.results = deps.results
        self.results_base_url = deps.results_base_url
        self._access = deps.access
        self._keys = deps.keys
        self._cors_origins = deps.cors_origins
        self._error_body = deps.error_body
        self._work: asyncio.Future[Any] | None = None
        self._client_left = False
        self._chunks: list[bytes] = []
        self._received = 0
        self._refusal: Unauthenticated | None = None
        self._record = self._access.begin("http", f"{self.request.method} {self.request.path}") if self._access else None
        self.set_default_headers()  # Tornado set them before initialize(); error paths set them again

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for verb in ("get", "post", "put", "delete", "patch"):
            if verb in cls.__dict__:
                setattr(cls, verb, _refused_first(cls.__dict__[verb]))

    # -- before and while the body arrives ---------------------------------------------------------------

    def prepare(self) -> None:
        """Headers are in, the body is not: refuse a missing key or a declared oversize body now."""
        declared_text = self.request.headers.get("Content-Length", "")
        declared = int(declared_text) if declared_text.isdigit() else None
        if self.needs_key and self._keys is not None and self.request.method != "OPTIONS":
            try:
                self._keys.check(self.request.headers.get("Authorization"))
            except Unauthenticated as exc:
                if declared is None or declared > self.SMALL_BODY:
                    raise
                self._refusal = exc
        if self.max_body_size and declared is not None and declared > self.max_body_size:
            self._too_large(declared)

    def raise_refusal(self) -> None:
        """Raise the 401 that ``prepare`` deferred until a small keyless body was read, if there is one."""
        if self._refusal is not None:
            raise self._refusal

    def data_received(self, chunk: bytes) -> None:
        if self._refusal is not None:
            return  # a refused small body is read only to be dropped
        self._received += len(chunk)
        if self.max_body_size and self._received > self.max_body_size:
            self._too_large(self._received)
        self._chunks.append(chunk)

    def _too_large(self, size: int) -> None:
        raise tornado.web.HTTPError(
            413, "request body of %d bytes exceeds the limit of %d bytes (--http-max-body-size)",
            size, self.max_body_size,
        )

    @property
    def body(self) -> bytes:
        """The request body as received (joined once: a copy of the whole body, so a handler of large bodies
        joins ``body_parts`` off the event loop instead)."""
        if len(self._chunks) != 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0]

    @property
    def body_parts(self) -> list[bytes]:
        """The request body in the pieces it arrived in (``b"".join`` them for the body)."""
        return self._chunks

    @property
    def body_size(self) -> int:
        """The request body's length in bytes."""
        return self._received

    # -- CORS ----------------------------------------------------------------------------------------------

    def set_default_headers(self) -> None:
        origin = self.request.headers.get("Origin")
        allowed = self._cors_origins
        if origin and ("*" in allowed or origin in allowed):
            self.set_header("Access-Control-Allow-Origin", "*" if "*" in allowed else origin)
            self.set_header("Vary", "Origin")
            self.set_header("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS")
            self.set_header(
                "Access-Control-Allow-Headers",
                f"Authorization, Content-Type, Content-Encoding, Accept-Encoding, {HEADER_LENGTH}",
            )
            self.set_header("Access-Control-Expose-Headers", f"Content-Encoding, {HEADER_LENGTH}")
            self.set_header("Access-Control-Max-Age", "600")

    def options(self, *args: Any, **kwargs: Any) -> None:
        """CORS preflight: the headers are set by ``set_default_headers``."""
        self.set_status(204)
        self.finish()

    def caller(self) -> str:
        """Who owns what this request creates (an asynchronous job): a hash of its API key; "" without keys."""
        return self._keys.owner(self.request.headers.get("Authorization")) if self._keys is not None else ""

    # -- calling the core ----------------------------------------------------------------------------------

    async def run_core(self, call: Awaitable[_T]) -> _T | None:
        """Await core work; a client that disconnects cancels it, which frees its queued work, and then this
        returns None: there is no one to answer. What is cancelled is this handler's own task, while it waits
        here (no task of its own per request: that cost a loop iteration and ~10 us each)."""
        task = asyncio.current_task()
        self._work = task
        try:
            return await call
        except asyncio.CancelledError:
            if not self._client_left or task is None:
                raise
            task.uncancel()
            return None
        finally:
            self._work = None

    def on_connection_close(self) -> None:
        self._client_left = True
        if self._work is not None and not self._work.done():
            self._work.cancel()

    async def model_infer(
        self, request: pb.ModelInferRequest, raw: Sequence[Buffer] | None = None
    ) -> InferAnswer | pb.ModelInferResponse:
        """``core.ModelInfer``; with the access log on, the core's report on ``request`` fills this request's
        record."""
        if self._access is None or self._record is None:
            return await self.core.ModelInfer(request, raw)
        with self._access.watching(self._record, request):
            return await self.core.ModelInfer(request, raw)

    # -- answers -------------------------------------------------------------------------------------------

    def finish(self, chunk: Any = None) -> Any:
        """Writes the access-log line as the answer goes out (on_finish would race the client reading it)."""
        if self._access is not None and self._record is not None:
            record, self._record = self._record, None
            self._access.end(record, str(self.get_status()), int(self.request.request_time() * 1e9))
        return super().finish(chunk)

    def write_status(self, field: str, ok: bool) -> None:
        """Health-style answers: Triton's status (200 or 400), which tritonclient reads, and KServe's body
        (``{"live": true}``, ``{"ready": false}``), which KServe's SDK reads."""
        self.set_status(200 if ok else 400)
        self.write_json({field: ok})

    def write_json(self, value: Any) -> None:
        """A small JSON answer (metadata, configuration), rendered here on the loop."""
        self.write_json_text(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))

    def write_json_text(self, text: bytes) -> None:
        """A JSON answer already rendered (large answers are rendered off the loop)."""
        self.set_header("Content-Type", "application/json")
        self.finish(text)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Every error of every route: mapped once (``describe_error``), rendered in the route's style."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        status, message = describe_error(exc, status_code)
        self.set_status(status)
        self.clear_header("Content-Encoding")
        self.clear_header(HEADER_LENGTH)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(self._error_body(status, message)))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, (V2Error, tornado.web.HTTPError, grpc.RpcError)):
            log.debug("%s %s: %s", self.request.method, self.request.uri, value)
        else:
            super().log_exception(typ, value, tb)


def _refused_first(method: Callable[..., Any]) -> Callable[..., Awaitable[None]]:
    """``method``, preceded by raising the refusal ``prepare`` deferred until a small body was read."""

    @functools.wraps(method)
    async def guarded(self: V2Handler, *args: Any, **kwargs: Any) -> None:
        self.raise_refusal()
        result = method(self, *args, **kwargs)
        if result is not None:
            await result

    return guarded
