"""Gateway mode: the REST gateway's core is a grpc.aio stub to a remote core, called with the caller's key.

``RemoteCore`` satisfies ``v2server.core.InferenceCore`` as the in-process data plane does, so handlers await
either alike. Each HTTP request binds it to its own ``Authorization`` header (``for_caller``), which travels
as gRPC metadata: the core, not the gateway, decides who may call it, and a gateway never upgrades a caller
to its own credentials. What no RPC carries (version aliases) raises ``Unsupported``; the remote core's
errors arrive as ``grpc.RpcError`` with their status code, which the REST error mapping translates.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import grpc

from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import grpc_service_pb2_grpc as pb_grpc
from v2server.core import InferenceObserver
from v2server.errors import Unsupported
from v2server.wire import Buffer

__all__ = ["RemoteCore", "connect"]

_Response = TypeVar("_Response")

_NO_ALIASES = "version aliases are kept by the in-process core; this gateway forwards to a remote one"


class RemoteCore:
    """Every RPC of the core's service, forwarded over ``stub`` with ``authorization`` (when given) as
    metadata."""

    def __init__(self, stub: pb_grpc.GRPCInferenceServiceStub, authorization: str | None = None) -> None:
        self._stub = stub
        self._metadata = (("authorization", authorization),) if authorization else None

    def for_caller(self, authorization: str | None) -> RemoteCore:
        """This core, calling on behalf of a request that sent ``authorization``."""
        return RemoteCore(self._stub, authorization)

    def observe(self, observer: InferenceObserver) -> None:
        """Nothing runs here to report on: the remote core's own access log sees its executions."""

    async def _call(
        self, method: Callable[..., Awaitable[Any]], request: Any, returns: type[_Response]
    ) -> _Response:
        """Await one unary RPC with the caller's metadata (the generated stub is untyped: ``returns`` names the
        response message the RPC returns)."""
        return cast(_Response, await method(request, metadata=self._metadata))

    # -- health and metadata

    async def ServerLive(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return await self._call(self._stub.ServerLive, request, pb.ServerLiveResponse)

    async def ServerReady(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return await self._call(self._stub.ServerReady, request, pb.ServerReadyResponse)

    async def ModelReady(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        return await self._call(self._stub.ModelReady, request, pb.ModelReadyResponse)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return await self._call(self._stub.ServerMetadata, request, pb.ServerMetadataResponse)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        return await self._call(self._stub.ModelMetadata, request, pb.ModelMetadataResponse)

    async def ModelConfig(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        return await self._call(self._stub.ModelConfig, request, pb.ModelConfigResponse)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest) -> pb.ModelStatisticsResponse:
        return await self._call(self._stub.ModelStatistics, request, pb.ModelStatisticsResponse)

    # -- inference

    async def ModelInfer(
        self, request: pb.ModelInferRequest, raw: Sequence[Buffer] | None = None
    ) -> pb.ModelInferResponse:
        """``raw``: entries kept out of the message by the caller go into it here, for the wire."""
        if raw is not None:
            request.raw_input_contents.extend(bytes(entry) for entry in raw)
        return await self._call(self._stub.ModelInfer, request, pb.ModelInferResponse)

    async def ModelStreamInfer(
        self, requests: AsyncIterable[pb.ModelInferRequest]
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        call = self._stub.ModelStreamInfer(requests, metadata=self._metadata)
        try:
            async for response in call:
                yield response
        finally:
            call.cancel()  # no-op once the stream has ended; frees the call when our reader stops early

    # -- repository

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest) -> pb.RepositoryIndexResponse:
        return await self._call(self._stub.RepositoryIndex, request, pb.RepositoryIndexResponse)

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest) -> pb.RepositoryModelLoadResponse:
        return await self._call(self._stub.RepositoryModelLoad, request, pb.RepositoryModelLoadResponse)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest
    ) -> pb.RepositoryModelUnloadResponse:
        return await self._call(self._stub.RepositoryModelUnload, request, pb.RepositoryModelUnloadResponse)

    # -- shared memory, trace and log settings

    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest
    ) -> pb.SystemSharedMemoryStatusResponse:
        return await self._call(self._stub.SystemSharedMemoryStatus, request, pb.SystemSharedMemoryStatusResponse)

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest
    ) -> pb.SystemSharedMemoryRegisterResponse:
        return await self._call(
            self._stub.SystemSharedMemoryRegister, request, pb.SystemSharedMemoryRegisterResponse
        )

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        return await self._call(
            self._stub.SystemSharedMemoryUnregister, request, pb.SystemSharedMemoryUnregisterResponse
        )

    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest
    ) -> pb.CudaSharedMemoryStatusResponse:
        return await self._call(self._stub.CudaSharedMemoryStatus, request, pb.CudaSharedMemoryStatusResponse)

    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest
    ) -> pb.CudaSharedMemoryRegisterResponse:
        return await self._call(self._stub.CudaSharedMemoryRegister, request, pb.CudaSharedMemoryRegisterResponse)

    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        return await self._call(
            self._stub.CudaSharedMemoryUnregister, request, pb.CudaSharedMemoryUnregisterResponse
        )

    async def TraceSetting(self, request: pb.TraceSettingRequest) -> pb.TraceSettingResponse:
        return await self._call(self._stub.TraceSetting, request, pb.TraceSettingResponse)

    async def LogSettings(self, request: pb.LogSettingsRequest) -> pb.LogSettingsResponse:
        return await self._call(self._stub.LogSettings, request, pb.LogSettingsResponse)

    # -- version aliases: no RPC carries them

    async def resolve_alias(self, name: str, alias: str) -> str:
        raise Unsupported(_NO_ALIASES)

    async def model_aliases(self, name: str) -> dict[str, int]:
        raise Unsupported(_NO_ALIASES)

    async def set_model_alias(self, name: str, alias: str, version: int) -> dict[str, int]:
        raise Unsupported(_NO_ALIASES)

    async def delete_model_alias(self, name: str, alias: str) -> dict[str, int]:
        raise Unsupported(_NO_ALIASES)


def connect(
    target: str, max_message_size: int, credentials: grpc.ChannelCredentials | None = None
) -> tuple[grpc.aio.Channel, RemoteCore]:
    """A channel to the core at ``target`` (TLS when ``credentials``) and the core over it."""
    options = [
        ("grpc.max_send_message_length", max_message_size),
        ("grpc.max_receive_message_length", max_message_size),
    ]
    if credentials is None:
        channel = grpc.aio.insecure_channel(target, options=options)
    else:
        channel = grpc.aio.secure_channel(target, credentials, options=options)
    return channel, RemoteCore(pb_grpc.GRPCInferenceServiceStub(channel))
