"""An ``InferenceCore`` for transport tests: it records every call and answers from a small script.

It has one model, ``m`` (input ``INPUT0`` FP32 [1], output ``OUTPUT0``), echoes the first input back as the
output, and reports each inference to its observers as a data plane would.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Any

from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import model_config_pb2 as mc
from v2server.core import InferenceObserver, InferenceReport
from v2server.errors import ModelNotFound, Unsupported
from v2server.wire import Buffer

CONFIG = mc.ModelConfig(
    name="m",
    input=[mc.ModelInput(name="INPUT0", data_type=mc.TYPE_FP32, dims=[1])],
    output=[mc.ModelOutput(name="OUTPUT0", data_type=mc.TYPE_FP32, dims=[1])],
)
#: what the fake reports of each inference
REPORT = {"batch_size": 4, "queue_ns": 2_000, "compute_ns": 3_000}


class FakeCore:
    def __init__(self, aliases: dict[str, int] | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []  # (RPC, request) in call order
        self.callers: list[str | None] = []
        self.observers: list[InferenceObserver] = []
        self.infer_error: BaseException | None = None
        self.aliases = aliases  # None: no alias table, as in a remote core

    def for_caller(self, authorization: str | None) -> FakeCore:
        self.callers.append(authorization)
        return self

    def observe(self, observer: InferenceObserver) -> None:
        if observer not in self.observers:
            self.observers.append(observer)

    def _model(self, name: str) -> None:
        if name != "m":
            raise ModelNotFound(f"unknown model '{name}'")

    async def ServerLive(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        self.calls.append(("ServerLive", request))
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        self.calls.append(("ServerReady", request))
        return pb.ServerReadyResponse(ready=False)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        self.calls.append(("ModelMetadata", request))
        self._model(request.name)
        return pb.ModelMetadataResponse(name="m", versions=["1"], platform="pytorch_libtorch")

    async def ModelConfig(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        self.calls.append(("ModelConfig", request))
        self._model(request.name)
        return pb.ModelConfigResponse(config=CONFIG)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest) -> pb.RepositoryIndexResponse:
        self.calls.append(("RepositoryIndex", request))
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(name="m", state="READY")])

    async def ModelInfer(self, request: pb.ModelInferRequest, raw: Sequence[Buffer] | None = None) -> pb.ModelInferResponse:
        if raw is not None:  # recorded as one message, as a remote core would send it
            request.raw_input_contents.extend(bytes(entry) for entry in raw)
        self.calls.append(("ModelInfer", request))
        self._model(request.model_name)
        for observer in self.observers:
            observer.inferred(request, InferenceReport(request.id, "m", "1", **REPORT))
        if self.infer_error is not None:
            raise self.infer_error
        raw = request.raw_input_contents[0] if request.raw_input_contents else b""
        if request.inputs:
            first = request.inputs[0]
            output = pb.ModelInferResponse.InferOutputTensor(name="OUTPUT0", datatype=first.datatype, shape=first.shape)
        else:
            output = pb.ModelInferResponse.InferOutputTensor(name="OUTPUT0", datatype="UINT8", shape=[len(raw)])
        return pb.ModelInferResponse(
            model_name="m", model_version="1", id=request.id, outputs=[output], raw_output_contents=[raw]
        )

    async def ModelStreamInfer(
        self, requests: AsyncIterable[pb.ModelInferRequest]
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for request in requests:
            yield pb.ModelStreamInferResponse(infer_response=await self.ModelInfer(request))

    # -- not used by the transports under test: UNIMPLEMENTED, as the data plane answers some of them

    async def ModelReady(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        raise Unsupported("ModelReady")

    async def ServerMetadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        raise Unsupported("ServerMetadata")

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest) -> pb.ModelStatisticsResponse:
        raise Unsupported("ModelStatistics")

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest) -> pb.RepositoryModelLoadResponse:
        raise Unsupported("RepositoryModelLoad")

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest
    ) -> pb.RepositoryModelUnloadResponse:
        raise Unsupported("RepositoryModelUnload")

    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest
    ) -> pb.SystemSharedMemoryStatusResponse:
        raise Unsupported("SystemSharedMemoryStatus")

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest
    ) -> pb.SystemSharedMemoryRegisterResponse:
        raise Unsupported("SystemSharedMemoryRegister")

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        raise Unsupported("SystemSharedMemoryUnregister")

    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest
    ) -> pb.CudaSharedMemoryStatusResponse:
        raise Unsupported("CudaSharedMemoryStatus")

    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest
    ) -> pb.CudaSharedMemoryRegisterResponse:
        raise Unsupported("CudaSharedMemoryRegister")

    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        raise Unsupported("CudaSharedMemoryUnregister")

    async def TraceSetting(self, request: pb.TraceSettingRequest) -> pb.TraceSettingResponse:
        raise Unsupported("TraceSetting")

    async def LogSettings(self, request: pb.LogSettingsRequest) -> pb.LogSettingsResponse:
        raise Unsupported("LogSettings")

    # -- aliases

    async def resolve_alias(self, name: str, alias: str) -> str:
        return str(self._aliases()[alias])

    async def model_aliases(self, name: str) -> dict[str, int]:
        return dict(self._aliases())

    async def set_model_alias(self, name: str, alias: str, version: int) -> dict[str, int]:
        self._aliases()[alias] = version
        return dict(self._aliases())

    async def delete_model_alias(self, name: str, alias: str) -> dict[str, int]:
        del self._aliases()[alias]
        return dict(self._aliases())

    def _aliases(self) -> dict[str, int]:
        if self.aliases is None:
            raise Unsupported("version aliases are kept by the in-process core")
        return self.aliases
