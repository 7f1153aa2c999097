"""gRPC transport: ``inference.GRPCInferenceService`` and ``grpc.health.v1`` over grpc.aio."""

from v2server.grpc_api.server import SERVICE_NAME, create_grpc_server, set_serving

__all__ = ["SERVICE_NAME", "create_grpc_server", "set_serving"]
