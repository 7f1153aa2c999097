"""Every operation of ``inference.GRPCInferenceService``, on protobuf messages, transport-free.

Methods carry the RPC names so that this object and a grpc.aio stub are interchangeable: ``DataPlane`` and
the REST gateway's ``RemoteCore`` both satisfy ``v2server.core.InferenceCore``. The gRPC servicer delegates
here in one line per RPC and the REST gateway awaits the same methods (in-process or through a stub). Policy
(validation, lookup, errors, the raw binary request's shape rule) lives here once; the transports only
translate. What the transports want to log about an inference they learn from ``observe``.

Load limits (design rule 13): the input bytes of all requests being served are counted against
``--max-inflight-bytes`` (past it: ``QueueFull``, 503/UNAVAILABLE), a ModelStreamInfer stream reads no further
request while ``--grpc-max-stream-pending`` of its requests are unanswered (HTTP/2 flow control then slows
the client), and a large request is decoded and its response encoded in a worker thread
(``inference.OFFLOAD_STEPS``). Per model, a dynamically batched model's queue is bounded by its config's
``max_queue_size`` (the batcher); a model without dynamic batching has no queue of its own (as in Triton) and
is bounded by the in-flight bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import TypeVar

from v2server import __version__
from v2server._proto import grpc_service_pb2 as pb
from v2server.core import InferenceObserver, InferenceReport
from v2server.errors import InvalidRequest, QueueFull, Unsupported, V2Error
from v2server.handle import Execution, ModelHandle
from v2server.offload import run_in_worker
from v2server.inference import (
    OFFLOAD_STEPS,
    check_contents,
    complete_raw_binary,
    decode_inputs,
    encode_response,
    encode_steps,
    is_raw_binary,
    requested_outputs,
    schedule_parameters,
)
from v2server.registry import ModelState, Registry
from v2server.settings import ControlMode

__all__ = ["EXTENSIONS", "DataPlane"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: the defaults of --max-inflight-bytes and --grpc-max-stream-pending
DEFAULT_MAX_INFLIGHT_BYTES = 1 << 30
DEFAULT_MAX_STREAM_PENDING = 64

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
        *,
        max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
        max_stream_pending: int = DEFAULT_MAX_STREAM_PENDING,
    ) -> None:
        self._registry = registry
        self._server_name = server_name
        self._strict_readiness = strict_readiness
        self._control_mode = control_mode
        self._accepting = False
        self._observers: list[InferenceObserver] = []
        self._max_inflight_bytes = max_inflight_bytes
        self._inflight_bytes = 0
        self._max_stream_pending = max_stream_pending

    @property
    def inflight_bytes(self) -> int:
        """Input bytes of the requests being served now (counted against ``max_inflight_bytes``)."""
        return self._inflight_bytes

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
        first. Observers hear of every request that reached a model version, whether it succeeded or not.

        Cheap checks come first (names, datatypes, shapes, each input's byte count against its shape), then
        the in-flight bytes are reserved until the request ends; a large decode or encode runs in a worker
        thread."""
        handle = self._registry.get(request.model_name, request.model_version)
        ran: list[Execution] = []
        try:
            return await self._infer(handle, request, ran)
        finally:
            if self._observers:
                times = (ran[0].batch_size, ran[0].queue_ns, ran[0].compute_ns) if ran else (0, 0, 0)
                report = InferenceReport(request.id, handle.name, str(handle.version), *times)
                for observer in self._observers:
                    observer.inferred(request, report)

    async def _infer(
        self, handle: ModelHandle, request: pb.ModelInferRequest, ran: list[Execution]
    ) -> pb.ModelInferResponse:
        signature = handle.signature
        raw = list(request.raw_input_contents)  # protobuf copies an entry at every access: once here
        if is_raw_binary(request):
            await _offload(len(raw[0]) // 4, complete_raw_binary, request, signature, raw[0])
        batch_size = signature.check_inputs((t.name, t.datatype, tuple(t.shape)) for t in request.inputs)
        outputs = requested_outputs(request, signature)
        priority, timeout_us = schedule_parameters(request)
        sizes = check_contents(request, raw)
        with self._holding(sizes.nbytes):
            inputs = await _offload(sizes.steps, decode_inputs, request, raw)
            del raw  # the tensors hold what they need
            execution = await handle.execute(inputs, outputs, batch_size, priority, timeout_us)
            ran.append(execution)
            del inputs
            return await _offload(
                encode_steps(execution.outputs),
                encode_response, request, handle.name, handle.version, execution.outputs,
            )

    @contextlib.contextmanager
    def _holding(self, nbytes: int) -> Iterator[None]:
        """Count ``nbytes`` of input as in flight while the block runs (ended by success, error or
        cancellation alike); refuse the request when they would pass ``--max-inflight-bytes``."""
        if self._inflight_bytes + nbytes > self._max_inflight_bytes:
            raise QueueFull(
                f"the server is serving {self._inflight_bytes} bytes of inputs; this request's {nbytes} more "
                f"would pass --max-inflight-bytes ({self._max_inflight_bytes}); retry later"
            )
        self._inflight_bytes += nbytes
        try:
            yield
        finally:
            self._inflight_bytes -= nbytes

    async def ModelStreamInfer(
        self, requests: AsyncIterable[pb.ModelInferRequest]
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """One response per request, as each completes; a failure is an ``error_message`` and the stream goes on.

        Requests run concurrently, except that requests of one sequence (``sequence_id``) run in order.
        """
        responses: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        sequences: dict[str, asyncio.Task[None]] = {}
        # a permit per unanswered request: past the limit the stream reads nothing more, so gRPC stops taking
        # the client's messages and HTTP/2 flow control slows it; answers keep flowing and free permits
        pending = asyncio.Semaphore(self._max_stream_pending)

        async def answer(request: pb.ModelInferRequest, after: asyncio.Task[None] | None) -> None:
            if after is not None:
                await asyncio.wait([after])
            responses.put_nowait(await self._stream_response(request))

        async def read() -> None:
            try:
                iterator = aiter(requests)
                while True:
                    await pending.acquire()
                    try:
                        request = await anext(iterator)
                    except StopAsyncIteration:
                        break
                    sequence = _sequence_key(request)
                    task = asyncio.create_task(answer(request, sequences.get(sequence) if sequence else None))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    if sequence:
                        sequences[sequence] = task
                        task.add_done_callback(functools.partial(_forget, sequences, sequence))
                if tasks:
                    await asyncio.wait(list(tasks))
            finally:
                responses.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await responses.get()) is not None:
                yield response  # resumed once the transport took it (a write waits for flow control)
                pending.release()
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


async def _offload(steps: int, function: Callable[..., _T], *args: object) -> _T:
    """``function(*args)`` in a worker thread when it takes more than ``OFFLOAD_STEPS`` per-element steps,
    inline otherwise (a thread hop costs more than a small tensor's work)."""
    if steps > OFFLOAD_STEPS:
        return await run_in_worker(function, *args)
    return function(*args)


def _forget(sequences: dict[str, asyncio.Task[None]], key: str, done: asyncio.Task[None]) -> None:
    """Drop a finished sequence's last task (a later request of it will not wait on anything)."""
    if sequences.get(key) is done:
        del sequences[key]


def _sequence_key(request: pb.ModelInferRequest) -> str:
    parameter = request.parameters.get("sequence_id")
    if parameter is None:
        return ""
    value = getattr(parameter, parameter.WhichOneof("parameter_choice") or "string_param")
    return f"{request.model_name}/{value}" if value not in (0, "") else ""

