"""The gRPC server factory: our service, the standard health service, message limits, bound port."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from v2server.access_log import AccessLog
from v2server.auth import ApiKeys
from v2server.core import InferenceCore
from v2server.errors import Unsupported
from v2server.grpc_api.interceptor import service_handlers, wrap_handler
from v2server.settings import Settings
from v2server.tls import grpc_server_credentials

__all__ = ["SERVICE_NAME", "create_grpc_server", "server_options", "set_serving"]

SERVICE_NAME = "inference.GRPCInferenceService"


def server_options(settings: Settings, reuse_port: bool = False) -> list[tuple[str, int]]:
    """Message limits, a cap on concurrent streams per connection, and keepalive enforcement (Triton's flags):
    a client that pings more often than allowed collects strikes and is disconnected. SO_REUSEPORT only for
    ``--workers`` (several processes on one port); otherwise a port in use is an error."""
    return [
        ("grpc.max_send_message_length", settings.grpc_max_message_size),
        ("grpc.max_receive_message_length", settings.grpc_max_message_size),
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        ("grpc.keepalive_time_ms", settings.grpc_keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", settings.grpc_keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(settings.grpc_keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", settings.grpc_http2_max_pings_without_data),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            settings.grpc_http2_min_recv_ping_interval_without_data_ms,
        ),
        ("grpc.http2.max_ping_strikes", settings.grpc_http2_max_ping_strikes),
    ]


def create_grpc_server(
    core: InferenceCore,
    settings: Settings,
    access: AccessLog | None = None,
    keys: ApiKeys | None = None,
    reuse_port: bool = False,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A grpc.aio server bound to the settings' address and port (0: any free port), over TLS when
    ``--grpc-use-ssl``; returns it, the bound port and the health servicer. With ``access``, every unary RPC
    is logged, with what ``core`` reports of its inferences. ``reuse_port``: one of several workers on the port."""
    if access is not None:
        core.observe(access)
    server = grpc.aio.server(options=server_options(settings, reuse_port))
    handlers = service_handlers(core, SERVICE_NAME, access, keys)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
    server.add_generic_rpc_handlers((_UnknownMethods(access, keys),))  # consulted after the service's own methods
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    credentials = grpc_server_credentials(settings)
    address = f"{settings.grpc_address}:{settings.grpc_port}"
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {address} (is the port in use?)")
    return server, bound, health_servicer


class _UnknownMethods(grpc.GenericRpcHandler):
    """A method of our service that this server does not know (a later Triton's RPC): UNIMPLEMENTED naming it,
    with its errors mapped like every answer, rather than gRPC's bare "Method not found!"."""

    def __init__(self, access: AccessLog | None, keys: ApiKeys | None) -> None:
        self._access = access
        self._keys = keys if keys is not None and keys.enabled else None

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = str(handler_call_details.method)
        if not method.startswith(f"/{SERVICE_NAME}/"):
            return None

        async def refuse(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            raise Unsupported(f"{method.lstrip('/')} is not implemented by this server (ServerMetadata lists the "
                              "extensions it has)")
            yield b""  # pragma: no cover (makes this a stream handler, which suits any call's cardinality)

        return wrap_handler(grpc.stream_stream_rpc_method_handler(refuse), method, self._access, self._keys)


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    """Report readiness through ``grpc.health.v1`` for the whole server and for our service."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, status)
