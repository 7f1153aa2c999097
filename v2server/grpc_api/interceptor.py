"""Our errors -> gRPC status, API keys and the access log, applied once to every RPC.

The public server wraps each method's handler once, at start-up (``service_handlers``): a grpc.aio server
interceptor would cost every call an extra coroutine and a handler lookup. ``ErrorInterceptor`` does the same
for servers whose handlers come from elsewhere."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from v2server._proto import grpc_service_pb2 as pb
from v2server.access_log import AccessLog
from v2server.auth import OPEN_RPCS, ApiKeys
from v2server.core import InferenceCore
from v2server.errors import Unauthenticated, V2Error
from v2server.wire import SplitRequest, serialize_answer, split_infer_request

__all__ = ["ErrorInterceptor", "service_handlers", "wrap_handler"]

log = logging.getLogger(__name__)


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    if isinstance(exc, V2Error):
        await context.abort(exc.grpc_code, exc.message)
    log.exception("unexpected error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc}")


def wrap_handler(
    handler: grpc.RpcMethodHandler, method: str, access: AccessLog | None, keys: ApiKeys | None = None
) -> grpc.RpcMethodHandler:
    """``handler`` with errors mapped to status codes, the access log written, and (``keys``) the caller's
    key checked before the method runs."""
    if keys is not None and method not in OPEN_RPCS:
        handler = _keyed(handler, keys)
    if handler.unary_unary is not None:
        behavior = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - anything unexpected is INTERNAL, logged by _abort
                await _abort(context, exc, method)

        if access is not None:
            plain = unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                record, start, status = access.begin("grpc", method), time.perf_counter_ns(), "OK"
                try:
                    # the core reports on this very request object
                    with access.watching(record, request.message if isinstance(request, SplitRequest) else request):
                        return await plain(request, context)
                except BaseException:
                    code = context.code()
                    status = code.name if isinstance(code, grpc.StatusCode) else "CANCELLED"
                    raise
                finally:
                    access.end(record, status, time.perf_counter_ns() - start)

        return grpc.unary_unary_rpc_method_handler(
            unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_stream is not None:
        stream_behavior: Callable[..., AsyncIterator[Any]] = handler.stream_stream

        async def stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for response in stream_behavior(requests, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - anything unexpected is INTERNAL, logged by _abort
                await _abort(context, exc, method)

        return grpc.stream_stream_rpc_method_handler(
            stream, handler.request_deserializer, handler.response_serializer
        )
    return handler


def _keyed(handler: grpc.RpcMethodHandler, keys: ApiKeys) -> grpc.RpcMethodHandler:
    """``handler`` preceded by the API key check (``Unauthenticated`` before the request is looked at)."""

    def check(context: grpc.aio.ServicerContext) -> None:
        keys.check(dict(context.invocation_metadata() or ()).get("authorization"))

    if handler.stream_stream is not None:
        stream_behavior = handler.stream_stream

        async def stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            check(context)
            async for response in stream_behavior(requests, context):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)
    behavior = handler.unary_unary

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        check(context)
        return await behavior(request, context)

    return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)


def service_handlers(
    core: InferenceCore, service: str, access: AccessLog | None = None, keys: ApiKeys | None = None
) -> dict[str, grpc.RpcMethodHandler]:
    """Every method of ``inference.GRPCInferenceService`` bound straight to ``core`` (no servicer layer),
    wrapped once: what a server registers with ``add_registered_method_handlers``."""
    keys = keys if keys is not None and keys.enabled else None
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in pb.DESCRIPTOR.services_by_name[service.rsplit(".", 1)[1]].methods:
        request_type = getattr(pb, method.input_type.name)
        serializer = getattr(pb, method.output_type.name).SerializeToString
        call = getattr(core, method.name)
        if method.client_streaming:
            handler = grpc.stream_stream_rpc_method_handler(_streaming(call), request_type.FromString, serializer)
        elif method.name == "ModelInfer":  # large tensors pass without protobuf's copies (v2server.wire)
            handler = grpc.unary_unary_rpc_method_handler(_infer(call), split_infer_request, serialize_answer)
        else:
            handler = grpc.unary_unary_rpc_method_handler(_unary(call), request_type.FromString, serializer)
        handlers[method.name] = wrap_handler(handler, f"/{service}/{method.name}", access, keys)
    return handlers


def _unary(call: Callable[[Any], Awaitable[Any]]) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await call(request)

    return unary


def _infer(call: Callable[..., Awaitable[Any]]) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def infer(request: pb.ModelInferRequest | SplitRequest, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, SplitRequest):
            return await call(request.message, request.raw)
        return await call(request)

    return infer


def _streaming(call: Callable[[Any], AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for response in call(requests):
            yield response

    return stream


def _refuse(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that answers UNAUTHENTICATED before doing anything."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - abort raises; this makes the function an async generator

    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            refuse_stream, handler.request_deserializer, handler.response_serializer
        )
    return grpc.unary_unary_rpc_method_handler(refuse, handler.request_deserializer, handler.response_serializer)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns ``V2Error`` into its status code and anything else into INTERNAL (logged with its traceback),
    and writes the access log when one is given (unary RPCs; a stream is one entry of its own requests' work).
    The log learns model, version, batch and times from the core's report on the request object it watches
    (the core must be subscribed: ``create_grpc_server`` does it).

    Wrapped handlers are built once per method and cached, so a call pays one dict lookup.
    """

    def __init__(self, access: AccessLog | None = None, keys: ApiKeys | None = None) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        self._access = access
        self._keys = keys if keys is not None and keys.enabled else None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return handler
            wrapped = self._wrapped[method] = wrap_handler(handler, method, self._access)
        if self._keys is not None and method not in OPEN_RPCS:
            metadata = dict(handler_call_details.invocation_metadata or ())
            try:
                self._keys.check(metadata.get("authorization"))
            except Unauthenticated as exc:
                return _refuse(wrapped, exc.message)
        return wrapped
