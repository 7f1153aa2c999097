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
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import Protocol, TypeVar

from google.protobuf.message import Message

from v2server import __version__
from v2server._proto import grpc_service_pb2 as pb
from v2server.classification import classify, classify_steps, requested_classes
from v2server.core import InferenceObserver, InferenceReport
from v2server.decoupled import (
    FINAL_RESPONSE,
    check_stream_request,
    final_response,
    is_decoupled,
    refusal,
    response_delays,
    split_response,
    split_steps,
    wants_empty_final,
)
from v2server.errors import InvalidRequest, QueueFull, Unsupported, V2Error
from v2server.handle import Execution, ModelHandle
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
from v2server.log_settings import LogControl, log_changes, log_response
from v2server.offload import run_in_worker, run_sized
from v2server.registry import ModelState, Registry
from v2server.sequences import sequence_control
from v2server.settings import ControlMode
from v2server.shared_memory import (
    CudaRegion,
    RequestMemory,
    SharedMemoryRegistry,
    SystemRegion,
    bind_request,
    gpu_count,
    read_inputs,
    write_outputs,
)
from v2server.tensors import Tensor
from v2server.tracing import Tracer, trace_changes
from v2server.wire import Buffer, InferAnswer

__all__ = ["EXTENSIONS", "DataPlane", "Peers"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: the defaults of --max-inflight-bytes and --grpc-max-stream-pending
DEFAULT_MAX_INFLIGHT_BYTES = 1 << 30
DEFAULT_MAX_STREAM_PENDING = 64

#: Protocol extensions this server really implements (ServerMetadata's list; the tests read it from here).
#: One that is not here answers 501 / UNIMPLEMENTED naming it (Triton's ``generate`` REST routes;
#: docs/protocol.md#extensions), except CUDA shared memory without a usable GPU, which the issue asks to
#: refuse with INVALID_ARGUMENT / 400 "this server has no GPU".
EXTENSIONS: tuple[str, ...] = (
    "binary_tensor_data",
    "classification",
    *(("cuda_shared_memory",) if gpu_count() else ()),
    "logging",
    "model_configuration",
    "model_repository",
    "model_repository(unload_dependents)",
    "parameters",
    "schedule_policy",
    "sequence",
    "statistics",
    "system_shared_memory",
    "trace",
)


class Peers(Protocol):
    """The other worker processes of this server (``--workers``; ``v2server/workers/``): a change made here
    (models, aliases, system shared-memory regions, trace and log settings) is made there before it is
    answered, statistics are summed over all of them, and no worker is ready while one is starting."""

    def all_up(self) -> bool: ...

    async def apply(self, method: str, request: Message) -> None: ...

    async def alias(self, name: str, alias: str, version: int | None) -> None: ...

    async def statistics(
        self, request: pb.ModelStatisticsRequest, local: pb.ModelStatisticsResponse
    ) -> pb.ModelStatisticsResponse: ...


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
        shared_memory: SharedMemoryRegistry | None = None,
        tracer: Tracer | None = None,
        logs: LogControl | None = None,
        peers: Peers | None = None,
    ) -> None:
        self._registry = registry
        #: the other workers (``--workers`` > 1), told of every change made here; None in a single process
        self._peers = peers
        #: request tracing and the log settings (Triton's trace and logging extensions)
        self._tracer = tracer if tracer is not None else Tracer()
        self._logs = logs if logs is not None else LogControl()
        #: the shared-memory regions clients registered (v2server/shared_memory/)
        self.shared_memory = shared_memory if shared_memory is not None else SharedMemoryRegistry()
        self._server_name = server_name
        self._strict_readiness = strict_readiness
        self._control_mode = control_mode
        self._accepting = False
        self._observers: list[InferenceObserver] = []
        self._max_inflight_bytes = max_inflight_bytes
        self._inflight_bytes = 0
        self._max_stream_pending = max_stream_pending
        if self._tracer.active:
            self.observe(self._tracer)

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
        ready = self._accepting and (self._registry.all_ready() or not self._strict_readiness)
        return ready and (self._peers is None or self._peers.all_up())

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
        response = pb.ModelStatisticsResponse(model_stats=[handle.stats.to_proto() for handle in handles])
        return response if self._peers is None else await self._peers.statistics(request, response)

    async def ModelConfig(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self._registry.get(request.name, request.version).config)

    # -- inference -----------------------------------------------------------------------------------------

    async def ModelInfer(
        self, request: pb.ModelInferRequest, raw: Sequence[Buffer] | None = None
    ) -> InferAnswer:
        """One inference. A raw binary request (no inputs, one raw entry) is described from the model's config
        first. Observers hear of every request that reached a model version, whether it succeeded or not.
        ``raw``: the request's raw entries when the transport kept them out of the message (``wire``); the
        answer keeps the outputs as the model's buffers until the transport writes them (``InferAnswer``).

        Cheap checks come first (names, datatypes, shapes, each input's byte count against its shape), then
        the in-flight bytes are reserved until the request ends; a large decode or encode runs in a worker
        thread."""
        handle = self._registry.get(request.model_name, request.model_version)
        if is_decoupled(handle.config):
            raise refusal(handle.name)  # its responses need a stream (ModelStreamInfer)
        return await self._observed(handle, request, raw)

    async def _observed(
        self, handle: ModelHandle, request: pb.ModelInferRequest, raw: Sequence[Buffer] | None = None
    ) -> InferAnswer:
        """``_infer``, reported to the observers whether it succeeded or not."""
        ran: list[Execution] = []
        started = time.perf_counter_ns() if self._observers else 0  # request traces begin here
        response: InferAnswer | None = None
        try:
            response = await self._infer(handle, request, ran, raw)
            return response
        finally:
            if self._observers:
                report = _report(request, handle, ran, started, response, raw)
                for observer in self._observers:
                    observer.inferred(request, report)

    async def _infer(
        self, handle: ModelHandle, request: pb.ModelInferRequest, ran: list[Execution],
        wire_raw: Sequence[Buffer] | None = None,
    ) -> InferAnswer:
        signature = handle.signature
        if wire_raw is not None and request.raw_input_contents:
            raise InvalidRequest("raw_input_contents given twice")  # only a transport could do that
        # protobuf copies an entry at every access: once here
        raw = list(request.raw_input_contents) if wire_raw is None else list(wire_raw)
        if is_raw_binary(request, raw):
            await _offload(len(raw[0]) // 4, complete_raw_binary, request, signature, raw[0])
        batch_size = signature.check_inputs((t.name, t.datatype, tuple(t.shape)) for t in request.inputs)
        outputs = requested_outputs(request, signature)
        # Triton's classification extension, and the scheduling and sequence parameters: usually none
        classes = requested_classes(request, signature) if request.outputs else {}
        priority, timeout_us, sequence = 0, 0, None
        if request.parameters:
            priority, timeout_us = schedule_parameters(request)
            sequence = sequence_control(request)
        sizes = check_contents(request, raw)
        self._hold(sizes.nbytes)
        try:
            memory = bind_request(self.shared_memory, request, signature, batch_size)
        except BaseException:
            self._inflight_bytes -= sizes.nbytes
            raise
        try:  # the bytes are counted and the regions leased until the request ends, however it ends
            in_memory = None if memory is None else await _read_regions(memory, request)
            inputs = await _offload(sizes.steps, decode_inputs, request, raw, in_memory, True)
            del raw  # the tensors hold what they need
            execution = await handle.execute(inputs, outputs, batch_size, priority, timeout_us, sequence)
            ran.append(execution)
            if classes:
                execution = await _classified(execution, classes, handle)
            del inputs
            written = frozenset() if memory is None else await _write_regions(memory, execution.outputs)
            return await _offload(
                encode_steps(execution.outputs),
                encode_response, request, handle.name, handle.version, execution.outputs, written,
            )
        finally:
            if memory is not None:  # leased, so that unregistering a region meanwhile never takes it from under us
                memory.release()
            self._inflight_bytes -= sizes.nbytes

    def _hold(self, nbytes: int) -> None:
        """Count ``nbytes`` of input as in flight (the caller takes them off when the request ends); refuse
        the request when they would pass ``--max-inflight-bytes``."""
        if self._inflight_bytes + nbytes > self._max_inflight_bytes:
            raise QueueFull(
                f"the server is serving {self._inflight_bytes} bytes of inputs; this request's {nbytes} more "
                f"would pass --max-inflight-bytes ({self._max_inflight_bytes}); retry later"
            )
        self._inflight_bytes += nbytes

    async def ModelStreamInfer(
        self, requests: AsyncIterable[pb.ModelInferRequest]
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """The responses to each request, as they complete; a failure is an ``error_message`` and the stream
        goes on. A model answers one response per request, a decoupled one any number (``decoupled.py``).

        Requests run concurrently, except that requests of one sequence (``sequence_id``) run in order.
        """
        # (response or None, the request's last, set once the transport took it); None ends the stream
        responses: asyncio.Queue[tuple[pb.ModelStreamInferResponse | None, bool, asyncio.Event | None] | None]
        responses = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        sequences: dict[str, asyncio.Task[None]] = {}
        # a permit per unanswered request: past the limit the stream reads nothing more, so gRPC stops taking
        # the client's messages and HTTP/2 flow control slows it; answers keep flowing and free permits
        pending = asyncio.Semaphore(self._max_stream_pending)

        async def answer(request: pb.ModelInferRequest, after: asyncio.Task[None] | None) -> None:
            if after is not None:
                await asyncio.wait([after])
            async for response, last in self._stream_responses(request):
                taken = None if last else asyncio.Event()
                responses.put_nowait((response, last, taken))
                if taken is not None:  # a decoupled request makes its next response once this one left
                    await taken.wait()

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
            while (item := await responses.get()) is not None:
                response, last, taken = item
                if response is not None:
                    yield response  # resumed once the transport took it (a write waits for flow control)
                if taken is not None:
                    taken.set()
                if last:
                    pending.release()
            await reader
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _stream_responses(
        self, request: pb.ModelInferRequest
    ) -> AsyncIterator[tuple[pb.ModelStreamInferResponse | None, bool]]:
        """A stream's answers to one request, each with whether it is the request's last; the last may be None
        (a decoupled request that ends without the empty final response it did not ask for). Never raises."""
        try:
            handle = self._registry.get(request.model_name, request.model_version)
            decoupled = is_decoupled(handle.config)
            if decoupled:
                check_stream_request(request, handle.name)
            response = await self._observed(handle, request)
            answers = [response]
            if decoupled:
                answers = await _offload(split_steps(response), split_response, response, handle.signature)
                delays = response_delays(request, handle.config, len(answers))
        except V2Error as exc:
            yield pb.ModelStreamInferResponse(error_message=exc.message), True
            return
        except Exception as exc:
            log.exception("inference on model '%s' failed", request.model_name)
            yield pb.ModelStreamInferResponse(error_message=f"internal error: {exc}"), True
            return
        if not decoupled:
            message = response.to_message()
            message.parameters[FINAL_RESPONSE].bool_param = True
            yield pb.ModelStreamInferResponse(infer_response=message), True
            return
        for part, delay in zip(answers, delays, strict=True):
            if delay:
                await asyncio.sleep(delay)
            part.parameters[FINAL_RESPONSE].bool_param = False
            yield pb.ModelStreamInferResponse(infer_response=part), False
        if wants_empty_final(request):
            yield final_response(handle.name, str(handle.version), response.id), True
        else:
            yield None, True  # Triton sends the completion flag alone only to those who ask for it

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
        await self._tell_peers("RepositoryModelLoad", request)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest
    ) -> pb.RepositoryModelUnloadResponse:
        """Unload a model once its in-flight requests finish (no model here has dependents to unload)."""
        self._check_explicit("unload")
        await self._registry.unload(request.model_name)
        await self._tell_peers("RepositoryModelUnload", request)
        return pb.RepositoryModelUnloadResponse()

    async def _tell_peers(self, method: str, request: Message) -> None:
        """Make the change ``method(request)`` just made here in the other workers too, before answering (a
        failure here is answered at once: the others would fail alike)."""
        if self._peers is not None:
            await self._peers.apply(method, request)

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
        aliases = await self._registry.set_alias(name, alias, version)
        if self._peers is not None:
            await self._peers.alias(name, alias, version)
        return aliases

    async def delete_model_alias(self, name: str, alias: str) -> dict[str, int]:
        aliases = await self._registry.delete_alias(name, alias)
        if self._peers is not None:
            await self._peers.alias(name, alias, None)
        return aliases

    # -- shared memory (v2server/shared_memory/): regions of both kinds share one namespace, as in Triton --------

    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest
    ) -> pb.SystemSharedMemoryStatusResponse:
        status = pb.SystemSharedMemoryStatusResponse.RegionStatus
        regions = self.shared_memory.status("system", request.name)
        return pb.SystemSharedMemoryStatusResponse(regions={
            r.name: status(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size)
            for r in regions if isinstance(r, SystemRegion)
        })

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest
    ) -> pb.SystemSharedMemoryRegisterResponse:
        """Map a client's ``/dev/shm`` segment (a few system calls: inline)."""
        self.shared_memory.register_system(request.name, request.key, request.offset, request.byte_size)
        await self._tell_peers("SystemSharedMemoryRegister", request)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        """One region, or all system regions when no name is given; an unknown name is no error (Triton)."""
        self.shared_memory.unregister("system", request.name)
        await self._tell_peers("SystemSharedMemoryUnregister", request)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest
    ) -> pb.CudaSharedMemoryStatusResponse:
        status = pb.CudaSharedMemoryStatusResponse.RegionStatus
        regions = self.shared_memory.status("cuda", request.name)
        return pb.CudaSharedMemoryStatusResponse(regions={
            r.name: status(name=r.name, device_id=r.device_id, byte_size=r.byte_size)
            for r in regions if isinstance(r, CudaRegion)
        })

    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest
    ) -> pb.CudaSharedMemoryRegisterResponse:
        """Open a ``cudaIpcMemHandle_t`` (blocking CUDA calls: in a worker thread); no GPU: INVALID_ARGUMENT."""
        await run_in_worker(
            self.shared_memory.register_cuda, request.name, request.raw_handle, request.device_id, request.byte_size
        )
        return pb.CudaSharedMemoryRegisterResponse()

    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        """Closing a handle synchronises its device, so it runs in a worker thread; works without a GPU."""
        await run_in_worker(self.shared_memory.unregister, "cuda", request.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    # -- trace and log settings (tracing.py, log_settings.py) -------------------------------------------------

    async def TraceSetting(self, request: pb.TraceSettingRequest) -> pb.TraceSettingResponse:
        """Read (no settings given) or change the global trace setting or a model's (``model_name``); answers
        the setting in force afterwards. The tracer hears of inferences from the first time tracing is on."""
        if request.model_name:
            self._registry.get(request.model_name)  # an unknown model is NOT_FOUND, as for any other call
        if request.settings:
            self._tracer.update(request.model_name, trace_changes(request))
            if self._tracer.active:
                self.observe(self._tracer)
            await self._tell_peers("TraceSetting", request)
        response = pb.TraceSettingResponse()
        for name, values in self._tracer.settings(request.model_name).items():
            response.settings[name].value.extend(values)
        return response

    async def LogSettings(self, request: pb.LogSettingsRequest) -> pb.LogSettingsResponse:
        """Read or change the log settings, which apply at once; answers those in force afterwards."""
        changes = log_changes(request)
        state = self._logs.update(changes) if changes else self._logs.state
        if changes:
            await self._tell_peers("LogSettings", request)
        return log_response(state)


async def _read_regions(memory: RequestMemory | None, request: pb.ModelInferRequest) -> dict[str, Tensor] | None:
    """The inputs ``request`` keeps in shared memory (views of system regions; copies from CUDA regions, in a
    worker thread), or None when it keeps none there."""
    if memory is None or not memory.inputs:
        return None
    return await _offload(memory.read_steps(request), read_inputs, memory, request)


async def _write_regions(memory: RequestMemory | None, outputs: list[Tensor]) -> frozenset[str]:
    """Copy the outputs asked into shared memory there (a large copy, or any to a device, in a worker thread);
    returns their names (the response carries no data for them)."""
    if memory is None or not memory.outputs:
        return frozenset()
    await run_sized(memory.write_size(outputs), write_outputs, memory, outputs)
    return frozenset(memory.outputs)


async def _offload(steps: int, function: Callable[..., _T], *args: object) -> _T:
    """``function(*args)`` in a worker thread when it takes more than ``OFFLOAD_STEPS`` per-element steps,
    inline otherwise (a thread hop costs more than a small tensor's work)."""
    if steps > OFFLOAD_STEPS:
        return await run_in_worker(function, *args)
    return function(*args)


def _report(
    request: pb.ModelInferRequest,
    handle: ModelHandle,
    ran: list[Execution],
    started: int,
    response: InferAnswer | None,
    raw: Sequence[Buffer] | None = None,
) -> InferenceReport:
    """What the observers hear of one request (``ran``: its execution, if it got that far; ``raw``: its raw
    entries when the transport kept them out of the message)."""
    if not ran:
        return InferenceReport(
            request.id, handle.name, str(handle.version), start_ns=started, end_ns=time.perf_counter_ns()
        )
    execution = ran[0]
    return InferenceReport(
        request.id, handle.name, str(handle.version), execution.batch_size, execution.queue_ns,
        execution.compute_ns, started, time.perf_counter_ns(), execution.started_ns, execution.input_ns,
        execution.output_ns, response, raw,
    )


async def _classified(execution: Execution, classes: dict[str, int], handle: ModelHandle) -> Execution:
    """``execution`` with the outputs asked for with ``classification`` replaced by their top-k strings."""
    outputs = await _offload(
        classify_steps(execution.outputs, classes),
        classify, execution.outputs, classes, handle.labels, handle.signature.max_batch_size > 0,
    )
    return dataclasses.replace(execution, outputs=outputs)


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

