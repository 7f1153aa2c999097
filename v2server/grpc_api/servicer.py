"""The grpc.aio servicer: every RPC delegates to the data plane in one line."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import grpc_service_pb2_grpc as pb_grpc
from v2server.core import InferenceCore

__all__ = ["UNARY_RPCS", "InferenceServicer"]

#: Every unary RPC of ``inference.GRPCInferenceService``; ModelStreamInfer is the one streaming RPC.
UNARY_RPCS: tuple[str, ...] = tuple(
    method.name
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
    if not method.client_streaming
)


def _delegate(rpc: str) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def method(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await getattr(self.core, rpc)(request)

    method.__name__ = rpc
    return method


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Translates nothing itself: errors are mapped once for all RPCs by ``ErrorInterceptor``."""

    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    async def ModelStreamInfer(  # type: ignore[override]
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for response in self.core.ModelStreamInfer(request_iterator):
            yield response


for _rpc in UNARY_RPCS:
    setattr(InferenceServicer, _rpc, _delegate(_rpc))
