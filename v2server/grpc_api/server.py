"""The gRPC server factory: our service, the standard health service, message limits, bound port."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from v2server._proto import grpc_service_pb2_grpc as pb_grpc
from v2server.access_log import AccessLog
from v2server.auth import ApiKeys
from v2server.core import InferenceCore
from v2server.errors import Unsupported
from v2server.grpc_api.interceptor import ErrorInterceptor
from v2server.grpc_api.servicer import InferenceServicer
from v2server.settings import Settings
from v2server.tls import grpc_server_credentials

__all__ = ["SERVICE_NAME", "create_grpc_server", "server_options", "set_serving"]

SERVICE_NAME = "inference.GRPCInferenceService"


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Message limits, a cap on concurrent streams per connection, and keepalive enforcement (Triton's flags):
    a client that pings more often than allowed collects strikes and is disconnected."""
    return [
        ("grpc.max_send_message_length", settings.grpc_max_message_size),
        ("grpc.max_receive_message_length", settings.grpc_max_message_size),
        ("grpc.so_reuseport", 0),
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
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A grpc.aio server bound to the settings' address and port (0: any free port), over TLS when
    ``--grpc-use-ssl``; returns it, the bound port and the health servicer. With ``access``, every unary RPC
    is logged, with what ``core`` reports of its inferences."""
    if access is not None:
        core.observe(access)
    server = grpc.aio.server(interceptors=[ErrorInterceptor(access, keys)], options=server_options(settings))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core), server)
    server.add_generic_rpc_handlers((_UnknownMethods(),))  # consulted after the service's own methods
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
    through the interceptor like every answer, rather than gRPC's bare "Method not found!"."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = str(handler_call_details.method)
        if not method.startswith(f"/{SERVICE_NAME}/"):
            return None

        async def refuse(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            raise Unsupported(f"{method.lstrip('/')} is not implemented by this server (ServerMetadata lists the "
                              "extensions it has)")
            yield b""  # pragma: no cover (makes this a stream handler, which suits any call's cardinality)

        return grpc.stream_stream_rpc_method_handler(refuse)


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    """Report readiness through ``grpc.health.v1`` for the whole server and for our service."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, status)
