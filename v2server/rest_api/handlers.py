"""Tornado handlers for the V2 REST routes: parse into the core's protobuf request, await, render.

The ``core`` is anything with the RPC-named coroutine methods of ``inference.GRPCInferenceService``: the
in-process ``DataPlane``, or a ``RemoteCore`` stub to a remote core (gateway mode), bound per request to
the caller's ``Authorization``. Errors from either are mapped
to ``{"error": ...}`` exactly once, in ``write_error``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import orjson
import tornado.web

from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import model_config_pb2 as mc
from v2server.access_log import AccessLog
from v2server.auth import ApiKeys
from v2server.datatypes import from_config_type
from v2server.errors import InvalidRequest, Unauthenticated, V2Error, http_status
from v2server.rest_api.compression import compress, decode_body, negotiate_encoding
from v2server.rest_api.json_codec import (
    HEADER_LENGTH,
    message_to_json,
    parse_infer_request,
    parse_raw_binary_request,
    parse_repository_request,
    render_infer_response,
)
from v2server.tensors import count_bytes_elements

__all__ = [
    "HealthHandler",
    "InferHandler",
    "ModelConfigHandler",
    "ModelMetadataHandler",
    "ModelReadyHandler",
    "ModelStatisticsHandler",
    "NotFoundHandler",
    "RepositoryIndexHandler",
    "RepositoryModelHandler",
    "ServerMetadataHandler",
]

log = logging.getLogger(__name__)


@tornado.web.stream_request_body
class _V2Handler(tornado.web.RequestHandler):
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

    def initialize(
        self,
        core: Any,
        max_body_size: int = 0,
        access: AccessLog | None = None,
        keys: ApiKeys | None = None,
        cors_origins: frozenset[str] = frozenset(),
    ) -> None:
        self.core = core.for_caller(self.request.headers.get("Authorization"))
        self.max_body_size = max_body_size
        self._access = access
        self._keys = keys
        self._cors_origins = cors_origins
        self._work: asyncio.Future[Any] | None = None
        self._chunks: list[bytes] = []
        self._received = 0
        self._refusal: Unauthenticated | None = None
        self._record = access.begin("http", f"{self.request.method} {self.request.path}") if access else None
        self.set_default_headers()  # Tornado set them before initialize(); error paths set them again

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for verb in ("get", "post", "put", "delete", "patch"):
            if verb in cls.__dict__:
                setattr(cls, verb, _refused_first(cls.__dict__[verb]))

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
        """The request body as received (joined once)."""
        if len(self._chunks) != 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0]

    def set_default_headers(self) -> None:
        origin = self.request.headers.get("Origin")
        allowed: frozenset[str] = getattr(self, "_cors_origins", frozenset())
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

    async def run_core(self, call: Awaitable[Any]) -> Any:
        """Await a core call; a client that disconnects cancels it, which frees its queued work."""
        self._work = asyncio.ensure_future(call)
        return await self._work

    def on_connection_close(self) -> None:
        if self._work is not None and not self._work.done():
            self._work.cancel()

    def finish(self, chunk: Any = None) -> Any:
        """Writes the access-log line as the answer goes out (on_finish would race the client reading it)."""
        if self._access is not None and self._record is not None and not self._finished:
            self._access.end(self._record, str(self.get_status()), int(self.request.request_time() * 1e9))
        return super().finish(chunk)

    def write_status(self, ok: bool) -> None:
        """Health-style answers: 200 or 400 with an empty body (Content-Type as Triton sends it)."""
        self.set_status(200 if ok else 400)
        self.set_header("Content-Type", "application/json")
        self.finish()

    def write_json(self, value: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        status, message = status_code, self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, V2Error):
            status, message = http_status(exc.grpc_code), exc.message
        elif isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            status, message = http_status(exc.code()), exc.details() or str(exc.code())
        elif isinstance(exc, tornado.web.HTTPError):
            message = exc.log_message % exc.args if exc.log_message else self._reason
        elif exc is not None:
            message = f"internal error: {exc}"
        self.set_status(status)
        self.clear_header("Content-Encoding")
        self.clear_header(HEADER_LENGTH)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps({"error": message}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, (V2Error, tornado.web.HTTPError, grpc.RpcError)):
            log.debug("%s %s: %s", self.request.method, self.request.uri, value)
        else:
            super().log_exception(typ, value, tb)


def _refused_first(method: Callable[..., Any]) -> Callable[..., Awaitable[None]]:
    """``method``, preceded by raising the refusal ``prepare`` deferred until a small body was read."""

    @functools.wraps(method)
    async def guarded(self: _V2Handler, *args: Any, **kwargs: Any) -> None:
        if self._refusal is not None:
            raise self._refusal
        result = method(self, *args, **kwargs)
        if result is not None:
            await result

    return guarded


class NotFoundHandler(_V2Handler):
    """Unknown paths: 404 with a JSON body, like every other error."""

    def prepare(self) -> None:
        super().prepare()
        if self._refusal is not None:  # keyless with a small body: 401 as on GET, not a hint of which paths exist
            raise self._refusal
        raise tornado.web.HTTPError(404, "no route for %s %s", self.request.method, self.request.path)


class HealthHandler(_V2Handler):
    """``/v2/health/live`` and ``/ready``: 200 or 400 with an empty body, as Triton answers."""

    needs_key = False

    async def get(self, which: str) -> None:
        if which == "live":
            ok = (await self.core.ServerLive(pb.ServerLiveRequest())).live
        else:
            ok = (await self.core.ServerReady(pb.ServerReadyRequest())).ready
        self.write_status(ok)


class ServerMetadataHandler(_V2Handler):
    async def get(self) -> None:
        self.write_json(message_to_json(await self.core.ServerMetadata(pb.ServerMetadataRequest())))


class ModelReadyHandler(_V2Handler):
    """Open to probes, like the server's health routes and gRPC ``ModelReady``."""

    needs_key = False

    async def get(self, name: str, version: str | None) -> None:
        response = await self.core.ModelReady(pb.ModelReadyRequest(name=name, version=version or ""))
        self.write_status(response.ready)


class ModelMetadataHandler(_V2Handler):
    async def get(self, name: str, version: str | None) -> None:
        request = pb.ModelMetadataRequest(name=name, version=version or "")
        self.write_json(message_to_json(await self.core.ModelMetadata(request)))


class ModelConfigHandler(_V2Handler):
    async def get(self, name: str, version: str | None) -> None:
        response = await self.core.ModelConfig(pb.ModelConfigRequest(name=name, version=version or ""))
        self.write_json(message_to_json(response.config))


class ModelStatisticsHandler(_V2Handler):
    """``GET /v2/models/stats`` (all models) and ``/v2/models/{m}[/versions/{v}]/stats``."""

    async def get(self, name: str | None = None, version: str | None = None) -> None:
        request = pb.ModelStatisticsRequest(name=name or "", version=version or "")
        self.write_json(message_to_json(await self.core.ModelStatistics(request), with_defaults=True))


class RepositoryIndexHandler(_V2Handler):
    async def post(self, repository: str | None = None) -> None:
        body = self.body.strip()
        ready = False
        if body:
            try:
                ready = bool(orjson.loads(body).get("ready", False))
            except (orjson.JSONDecodeError, AttributeError):
                raise InvalidRequest("repository index body must be a JSON object such as {\"ready\": true}") from None
        response = await self.core.RepositoryIndex(
            pb.RepositoryIndexRequest(repository_name=repository or "", ready=ready)
        )
        self.write_json([message_to_json(model) for model in response.models])


class RepositoryModelHandler(_V2Handler):
    """``POST /v2/repository/models/{m}/load|unload`` (bodies may be empty)."""

    async def post(self, repository: str | None, name: str, action: str) -> None:
        parameters = parse_repository_request(self.body, f"{action} '{name}'")
        if action == "load":
            await self.core.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(repository_name=repository or "", model_name=name, parameters=parameters)
            )
        else:
            await self.core.RepositoryModelUnload(
                pb.RepositoryModelUnloadRequest(repository_name=repository or "", model_name=name, parameters=parameters)
            )
        self.set_header("Content-Type", "application/json")
        self.finish()


class InferHandler(_V2Handler):
    """``POST .../infer``: JSON, Triton's binary extension, compression; the body size is capped up front."""

    async def post(self, name: str, version: str | None) -> None:
        body = decode_body(self.body, self.request.headers.get("Content-Encoding"), self.max_body_size)
        header_length = self._header_length()
        if header_length == 0:
            request, options = await self._raw_binary_request(name, version or "", body)
        else:
            request, options = parse_infer_request(name, version or "", body, header_length)
        try:
            response = await self.run_core(self.core.ModelInfer(request))
        except asyncio.CancelledError:
            if self.request.connection is None or self._work is None or not self._work.cancelled():
                raise
            return  # the client went away; its work was dropped and there is no one to answer
        payload, json_length = render_infer_response(response, options)
        if json_length is not None:
            self.set_header(HEADER_LENGTH, str(json_length))
            self.set_header("Content-Type", "application/octet-stream")
        else:
            self.set_header("Content-Type", "application/json")
        encoding = negotiate_encoding(self.request.headers.get("Accept-Encoding"))
        if encoding is not None:
            payload = compress(payload, encoding)
            self.set_header("Content-Encoding", encoding)
        self.finish(payload)

    def _header_length(self) -> int | None:
        value = self.request.headers.get(HEADER_LENGTH)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise InvalidRequest(f"{HEADER_LENGTH} must be an integer, got '{value}'") from None

    async def _raw_binary_request(self, name: str, version: str, body: bytes) -> tuple[pb.ModelInferRequest, Any]:
        """``Inference-Header-Content-Length: 0``: the body is the one input of a single-input model, batch 1."""
        config = (await self.core.ModelConfig(pb.ModelConfigRequest(name=name, version=version))).config
        if len(config.input) != 1:
            raise InvalidRequest(
                f"a raw binary request ({HEADER_LENGTH}: 0) needs a model with exactly one input; "
                f"'{name}' has {len(config.input)}"
            )
        tensor = config.input[0]
        datatype = from_config_type(mc.DataType.Name(tensor.data_type))
        dims = list(tensor.dims)
        if dims.count(-1) == 1:
            known = math.prod(d for d in dims if d != -1)
            count = count_bytes_elements(body) if datatype.name == "BYTES" else len(body) // datatype.itemsize
            dims[dims.index(-1)] = count // known if known else 0
        shape = ([1] if config.max_batch_size > 0 else []) + dims
        return parse_raw_binary_request(name, version, body, tensor.name, datatype.name, shape)
