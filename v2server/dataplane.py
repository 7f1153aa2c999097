"""Every operation of ``inference.GRPCInferenceService``, on protobuf messages, transport-free.

Methods carry the RPC names so that this object and a grpc.aio stub are interchangeable: ``DataPlane`` and
the REST gateway's ``RemoteCore`` both satisfy ``v2server.core.InferenceCore``. The gRPC servicer delegates
here in one line per RPC and the REST gateway awaits the same methods (in-process or through a stub). Policy
(validation, lookup, errors, the raw binary request's shape rule) lives here once; the transports only
translate. What the transports want to log about an inference they learn from ``observe``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator

from v2server import __version__
from v2server._proto import grpc_service_pb2 as pb
from v2server.core import InferenceObserver, InferenceReport
from v2server.errors import InvalidRequest, Unsupported, V2Error
from v2server.handle import Execution, ModelHandle
from v2server.inference import (
    complete_raw_binary,
    decode_inputs,
    encode_response,
    is_raw_binary,
    requested_outputs,
    schedule_parameters,
)
from v2server.registry import ModelState, Registry
from v2server.settings import ControlMode

__all__ = ["EXTENSIONS", "DataPlane"]

log = logging.getLogger(__name__)

#: Protocol extensions this server really implements; each issue that lands one adds it here.
EXTENSIONS: tuple[str, ...] = (
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "model_repository(unload_dependents)",
    "parameters",
    "schedule_policy",
    "statistics",
)


def _unimplemented(rpc: str) -> Unsupported:
    return Unsupported(f"{rpc} is not implemented by this server yet")


class DataPlane:
    """The protocol core: one instance serves every transport."""

    def __init__(
        self,
        registry: Registry,
        server_name: str = "v2server",
        strict_readiness: bool = True,
        control_mode: ControlMode = "none",
    ) -> None:
        self._registry = registry
        self._server_name = server_name
        self._strict_readiness = strict_readiness
        self._control_mode = control_mode
        self._accepting = False
        self._observers: list[InferenceObserver] = []

    def for_caller(self, authorization: str | None) -> DataPlane:
        """The core a request talks to; in process there is no per-caller state (keys were checked at the
        transport's edge), unlike the gateway's ``RemoteCore``, which forwards the caller's key."""
        return self

    def observe(self, observer: InferenceObserver) -> None:
        """Report every inference from now on to ``observer`` (each observer once, however often it asks)."""
        if not any(known is observer for known in self._observers):
            self._observers.append(observer)

    def set_accepting(self, accepting: bool) -> None:
        """Whether the server has finished starting (and not begun shutting down)."""
        self._accepting = accepting

    @property
    def ready(self) -> bool:
        return self._accepting and (self._registry.all_ready() or not self._strict_readiness)

    # -- health and metadata -------------------------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._registry.is_ready(request.name, request.version))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=self._server_name, version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        handle = self._registry.get(request.name, request.version)
        signature = handle.signature
        return pb.ModelMetadataResponse(
            name=handle.name,
            versions=[str(v) for v in self._registry.ready_versions(handle.name)],
            platform=handle.config.platform,
            inputs=[
                pb.ModelMetadataResponse.TensorMetadata(
                    name=s.name, datatype=s.datatype.name, shape=signature.full_shape(s)
                )
                for s in signature.inputs.values()
            ],
            outputs=[
                pb.ModelMetadataResponse.TensorMetadata(
                    name=s.name, datatype=s.datatype.name, shape=signature.full_shape(s)
                )
                for s in signature.outputs.values()
            ],
        )

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest) -> pb.ModelStatisticsResponse:
        """Triton's statistics of every served version, of one model, or of one version."""
        if request.name and request.version:
            handles = [self._registry.get(request.name, request.version)]
        elif request.name:
            self._registry.get(request.name)  # an unknown or unready model is an error, as in Triton
            handles = self._registry.handles(request.name)
        else:
            handles = self._registry.handles()
        return pb.ModelStatisticsResponse(model_stats=[handle.stats.to_proto() for handle in handles])

    async def ModelConfig(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self._registry.get(request.name, request.version).config)

    # -- inference -----------------------------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """One inference. A raw binary request (no inputs, one raw entry) is described from the model's config
        first. Observers hear of every request that reached a model version, whether it succeeded or not."""
        handle = self._registry.get(request.model_name, request.model_version)
        execution: Execution | None = None
        try:
            execution = await self._execute(handle, request)
            return encode_response(request, handle.name, handle.version, execution.outputs)
        finally:
            if self._observers:
                ran = (execution.batch_size, execution.queue_ns, execution.compute_ns) if execution else (0, 0, 0)
                report = InferenceReport(request.id, handle.name, str(handle.version), *ran)
                for observer in self._observers:
                    observer.inferred(request, report)

    async def _execute(self, handle: ModelHandle, request: pb.ModelInferRequest) -> Execution:
        signature = handle.signature
        if is_raw_binary(request):
            complete_raw_binary(request, signature)
        batch_size = signature.check_inputs((t.name, t.datatype, tuple(t.shape)) for t in request.inputs)
        outputs = requested_outputs(request, signature)
        inputs = decode_inputs(request)
        priority, timeout_us = schedule_parameters(request)
        return await handle.execute(inputs, outputs, batch_size, priority, timeout_us)

    async def ModelStreamInfer(
        self, requests: AsyncIterable[pb.ModelInferRequest]
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """One response per request, as each completes; a failure is an ``error_message`` and the stream goes on.

        Requests run concurrently, except that requests of one sequence (``sequence_id``) run in order.
        """
        responses: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        sequences: dict[str, asyncio.Task[None]] = {}

        async def answer(request: pb.ModelInferRequest, after: asyncio.Task[None] | None) -> None:
            if after is not None:
                await asyncio.wait([after])
            responses.put_nowait(await self._stream_response(request))

        async def read() -> None:
            try:
                async for request in requests:
                    sequence = _sequence_key(request)
                    task = asyncio.create_task(answer(request, sequences.get(sequence) if sequence else None))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    if sequence:
                        sequences[sequence] = task
                if tasks:
                    await asyncio.wait(list(tasks))
            finally:
                responses.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await responses.get()) is not None:
                yield response
            await reader
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _stream_response(self, request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
        try:
            response = await self.ModelInfer(request)
        except V2Error as exc:
            return pb.ModelStreamInferResponse(error_message=exc.message)
        except Exception as exc:
            log.exception("inference on model '%s' failed", request.model_name)
            return pb.ModelStreamInferResponse(error_message=f"internal error: {exc}")
        response.parameters["triton_final_response"].bool_param = True
        return pb.ModelStreamInferResponse(infer_response=response)

    # -- repository ----------------------------------------------------------------------------------------

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest) -> pb.RepositoryIndexResponse:
        rows = self._registry.index()
        if request.ready:
            rows = [row for row in rows if row.state is ModelState.READY]
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=row.name,
                    version=str(row.version) if row.version else "",
                    state=row.state.value,
                    reason=row.reason,
                )
                for row in rows
            ]
        )

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest) -> pb.RepositoryModelLoadResponse:
        """Load or reload a model, optionally with a partial config override and model files."""
        self._check_explicit("load")
        config: str | None = None
        files: dict[str, bytes] = {}
        for key, parameter in request.parameters.items():
            if key == "config":
                if parameter.WhichOneof("parameter_choice") != "string_param":
                    raise InvalidRequest(f"failed to load '{request.model_name}': 'config' must be a string of JSON")
                config = parameter.string_param
            elif key.startswith("file:"):
                if parameter.WhichOneof("parameter_choice") != "bytes_param":
                    raise InvalidRequest(f"failed to load '{request.model_name}': '{key}' must carry bytes")
                files[key.removeprefix("file:")] = parameter.bytes_param
        if files and config is None:
            raise InvalidRequest(f"failed to load '{request.model_name}': file overrides need a 'config' parameter")
        statuses = await self._registry.load(request.model_name, config, files)
        failures = [s for s in statuses if s.state is not ModelState.READY]
        if failures:
            reasons = "; ".join(f"version {s.version}: {s.reason}" if s.version else s.reason for s in failures)
            raise InvalidRequest(f"failed to load '{request.model_name}': {reasons}")
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest
    ) -> pb.RepositoryModelUnloadResponse:
        """Unload a model once its in-flight requests finish (no model here has dependents to unload)."""
        self._check_explicit("unload")
        await self._registry.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def _check_explicit(self, action: str) -> None:
        if self._control_mode != "explicit":
            raise Unsupported(
                f"explicit model {action} is not allowed in model control mode '{self._control_mode}'; "
                "start the server with --model-control-mode=explicit"
            )

    # -- version aliases: no RPC carries them; the REST /v1 routes call these on the in-process core ---------

    async def resolve_alias(self, name: str, alias: str) -> str:
        """The version string ``alias`` of model ``name`` points to now (unknown alias: ModelNotFound)."""
        return self._registry.resolve_alias(name, alias)

    async def model_aliases(self, name: str) -> dict[str, int]:
        return self._registry.aliases(name)

    async def set_model_alias(self, name: str, alias: str, version: int) -> dict[str, int]:
        return await self._registry.set_alias(name, alias, version)

    async def delete_model_alias(self, name: str, alias: str) -> dict[str, int]:
        return await self._registry.delete_alias(name, alias)

    # -- not implemented: shared memory, trace and log settings ---------------------------------------------

    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest
    ) -> pb.SystemSharedMemoryStatusResponse:
        raise _unimplemented("SystemSharedMemoryStatus")

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest
    ) -> pb.SystemSharedMemoryRegisterResponse:
        raise _unimplemented("SystemSharedMemoryRegister")

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        raise _unimplemented("SystemSharedMemoryUnregister")

    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest
    ) -> pb.CudaSharedMemoryStatusResponse:
        raise _unimplemented("CudaSharedMemoryStatus")

    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest
    ) -> pb.CudaSharedMemoryRegisterResponse:
        raise _unimplemented("CudaSharedMemoryRegister")

    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        raise _unimplemented("CudaSharedMemoryUnregister")

    async def TraceSetting(self, request: pb.TraceSettingRequest) -> pb.TraceSettingResponse:
        raise _unimplemented("TraceSetting")

    async def LogSettings(self, request: pb.LogSettingsRequest) -> pb.LogSettingsResponse:
        raise _unimplemented("LogSettings")

def _sequence_key(request: pb.ModelInferRequest) -> str:
    parameter = request.parameters.get("sequence_id")
    if parameter is None:
        return ""
    value = getattr(parameter, parameter.WhichOneof("parameter_choice") or "string_param")
    return f"{request.model_name}/{value}" if value not in (0, "") else ""

