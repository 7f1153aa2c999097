"""The core's interface: what every transport may call, typed once.

``InferenceCore`` is the contract between the transports and the protocol core. The in-process ``DataPlane``
satisfies it, and so does the REST gateway's ``RemoteCore`` (a grpc.aio stub to a core in another process), so
a handler is written once against this protocol and never asks which core it has. The methods carry the RPC
names of ``inference.GRPCInferenceService`` (a stub has the same names); beside them:

- ``for_caller``: the core a request talks to (a remote core forwards the caller's ``Authorization``);
- the version-alias operations: no RPC carries them, so a remote core raises ``Unsupported`` (501);
- ``observe``: subscribe to a report of each inference the core runs (model, version, the batch it ran in,
  queue and compute time). Transports' access logs subscribe so that no layer below them writes into a
  transport's state; a remote core runs nothing here and reports nothing.

Nothing here imports a transport or the registry: this module sits beside ``errors`` as a leaf.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from v2server._proto import grpc_service_pb2 as pb
from v2server.wire import Buffer, InferAnswer

__all__ = ["InferenceCore", "InferenceObserver", "InferenceReport"]


@dataclass(frozen=True, slots=True)
class InferenceReport:
    """What the core knows about one ``ModelInfer`` once it ends (successful or not).

    Attributes:
        request_id: the request's ``id``.
        model: the model that served it.
        version: the version that served it.
        batch_size: the size of the batch it ran in (a dynamic batch may hold other requests); 0 when it
            never ran (it failed validation or execution).
        queue_ns: time spent queued for a batch.
        compute_ns: input, inference and output time of the execution.
        start_ns: when the core began the request (``time.perf_counter_ns``; 0 when no observer was
            subscribed then); Triton's REQUEST_START.
        end_ns: when it ended (REQUEST_END).
        queue_start_ns: when it reached the model version's queue or instance (QUEUE_START; 0: never).
        input_ns: the part of ``compute_ns`` spent preparing inputs (up to COMPUTE_INPUT_END).
        output_ns: the part spent on outputs (from COMPUTE_OUTPUT_START).
        response: the response, when it succeeded.
    """

    request_id: str
    model: str
    version: str
    batch_size: int = 0
    queue_ns: int = 0
    compute_ns: int = 0
    start_ns: int = 0
    end_ns: int = 0
    queue_start_ns: int = 0
    input_ns: int = 0
    output_ns: int = 0
    response: InferAnswer | pb.ModelInferResponse | None = None
    #: the request's raw entries when the transport kept them out of the message (``v2server.wire``)
    raw_inputs: Sequence[Buffer] | None = None


class InferenceObserver(Protocol):
    """Told about every inference a core runs; ``request`` is the very object the caller passed, so a
    transport can match the report to its own request by identity (RPC signatures leave no room for more)."""

    def inferred(self, request: pb.ModelInferRequest, report: InferenceReport) -> None: ...


class InferenceCore(Protocol):
    """Every RPC of ``inference.GRPCInferenceService`` as a coroutine on protobuf messages, plus the caller
    binding, the alias operations and the inference observers (see the module docstring)."""

    def for_caller(self, authorization: str | None) -> InferenceCore:
        """The core a request that sent ``authorization`` talks to."""
        ...

    def observe(self, observer: InferenceObserver) -> None:
        """Report each inference run from now on to ``observer`` (once, however often it subscribes)."""
        ...

    # -- health and metadata
    async def ServerLive(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse: ...
    async def ServerReady(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse: ...
    async def ModelReady(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse: ...
    async def ServerMetadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse: ...
    async def ModelMetadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse: ...
    async def ModelConfig(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse: ...
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest) -> pb.ModelStatisticsResponse: ...

    # -- inference
    async def ModelInfer(
        self, request: pb.ModelInferRequest, raw: Sequence[Buffer] | None = None
    ) -> InferAnswer | pb.ModelInferResponse: ...

    def ModelStreamInfer(
        self, requests: AsyncIterable[pb.ModelInferRequest]
    ) -> AsyncIterator[pb.ModelStreamInferResponse]: ...

    # -- repository
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest) -> pb.RepositoryIndexResponse: ...

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest
    ) -> pb.RepositoryModelLoadResponse: ...

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest
    ) -> pb.RepositoryModelUnloadResponse: ...

    # -- shared memory, trace and log settings
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest
    ) -> pb.SystemSharedMemoryStatusResponse: ...

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest
    ) -> pb.SystemSharedMemoryRegisterResponse: ...

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest
    ) -> pb.SystemSharedMemoryUnregisterResponse: ...

    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest
    ) -> pb.CudaSharedMemoryStatusResponse: ...

    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest
    ) -> pb.CudaSharedMemoryRegisterResponse: ...

    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest
    ) -> pb.CudaSharedMemoryUnregisterResponse: ...

    async def TraceSetting(self, request: pb.TraceSettingRequest) -> pb.TraceSettingResponse: ...
    async def LogSettings(self, request: pb.LogSettingsRequest) -> pb.LogSettingsResponse: ...

    # -- version aliases (no RPC carries them: a remote core raises Unsupported)
    async def resolve_alias(self, name: str, alias: str) -> str:
        """The version string ``alias`` of model ``name`` points to now (unknown alias: ModelNotFound)."""
        ...

    async def model_aliases(self, name: str) -> dict[str, int]:
        """Every alias of model ``name`` and the version it points to."""
        ...

    async def set_model_alias(self, name: str, alias: str, version: int) -> dict[str, int]:
        """Point ``alias`` at ``version`` (kept across restarts); returns the model's aliases."""
        ...

    async def delete_model_alias(self, name: str, alias: str) -> dict[str, int]:
        """Remove ``alias``; returns the model's remaining aliases."""
        ...
