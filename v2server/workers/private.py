"""A worker's private endpoint: a grpc.aio server on a unix socket in the supervisor's private folder.

It serves ``inference.GRPCInferenceService`` over the worker's own core, so a peer changes this worker with
the very RPCs clients send, plus what that service lacks (``v2server.worker.Private``): version aliases
(JSON bodies) and this worker's own metrics (Prometheus text), which the supervisor sums for ``/metrics``.
Every call runs ``local_only``: what a peer asks is done here and told to no one else. The socket's folder is
mode 0700, so only the server's own user reaches it; it takes no API key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from v2server.dataplane import DataPlane
from v2server.errors import InvalidRequest
from v2server.grpc_api import SERVICE_NAME
from v2server.grpc_api.interceptor import service_handlers, wrap_handler
from v2server.workers.identity import WorkerIdentity
from v2server.workers.peers import CHANNEL_OPTIONS, PRIVATE_SERVICE, local_only, private_method

__all__ = ["PrivateServer"]

log = logging.getLogger(__name__)

_Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _local_only(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` run ``local_only``: a peer's change is not fanned out again (only unary methods are called)."""
    if handler.unary_unary is None:
        return handler
    behavior: _Behavior = handler.unary_unary

    async def local(request: Any, context: grpc.aio.ServicerContext) -> Any:
        with local_only():
            return await behavior(request, context)

    return grpc.unary_unary_rpc_method_handler(local, handler.request_deserializer, handler.response_serializer)


class PrivateServer:
    """Worker ``identity.index``'s private endpoint over ``core``; ``metrics`` renders its own exposition."""

    def __init__(self, identity: WorkerIdentity, core: DataPlane, metrics: Callable[[], bytes]) -> None:
        self._path = identity.socket(identity.index)
        self._core = core
        self._metrics = metrics
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self._path.unlink(missing_ok=True)  # a socket the previous process of this index left
        server = grpc.aio.server(options=CHANNEL_OPTIONS)
        service = {name: _local_only(handler) for name, handler in service_handlers(self._core, SERVICE_NAME).items()}
        own: dict[str, _Behavior] = {
            "SetAlias": self._set_alias, "DeleteAlias": self._delete_alias, "Metrics": self._render_metrics,
        }
        private = {name: wrap_handler(grpc.unary_unary_rpc_method_handler(behavior), private_method(name), None)
                   for name, behavior in own.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, service),
                                         grpc.method_handlers_generic_handler(PRIVATE_SERVICE, private)))
        if server.add_insecure_port(f"unix:{self._path}") == 0:
            raise OSError(f"cannot listen on the worker's private socket {self._path}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=1)
            self._server = None
        self._path.unlink(missing_ok=True)

    async def _set_alias(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        name, alias, version = _alias_request(body)
        if not isinstance(version, int):
            raise InvalidRequest("SetAlias needs an integer version")
        with local_only():
            return json.dumps(await self._core.set_model_alias(name, alias, version)).encode()

    async def _delete_alias(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        name, alias, _ = _alias_request(body)
        with local_only():
            return json.dumps(await self._core.delete_model_alias(name, alias)).encode()

    async def _render_metrics(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return self._metrics()


def _alias_request(body: bytes) -> tuple[str, str, object]:
    try:
        request = json.loads(body)
        return str(request["name"]), str(request["alias"]), request.get("version")
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest(f"bad alias request from a peer: {exc}") from None
