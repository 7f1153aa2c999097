"""The gRPC server factory: our service, the standard health service, message limits, bound port."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from v2server._proto import grpc_service_pb2_grpc as pb_grpc
from v2server.access_log import AccessLog
from v2server.auth import ApiKeys
from v2server.dataplane import DataPlane
from v2server.grpc_api.interceptor import ErrorInterceptor
from v2server.grpc_api.servicer import InferenceServicer

__all__ = ["SERVICE_NAME", "create_grpc_server", "set_serving"]

SERVICE_NAME = "inference.GRPCInferenceService"


def create_grpc_server(
    core: DataPlane,
    address: str,
    port: int,
    max_message_size: int,
    access: AccessLog | None = None,
    keys: ApiKeys | None = None,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A grpc.aio server bound to ``address:port`` (0: any free port); returns it, the bound port and health."""
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor(access, keys)],
        options=[
            ("grpc.max_send_message_length", max_message_size),
            ("grpc.max_receive_message_length", max_message_size),
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        bound = server.add_insecure_port(f"{address}:{port}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {address}:{port} (is the port in use?)")
    return server, bound, health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    """Report readiness through ``grpc.health.v1`` for the whole server and for our service."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, status)
