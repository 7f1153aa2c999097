"""Request tracing: Triton's trace extension (``TraceSetting``, ``/v2[/models/{m}]/trace/setting``) and exports.

Settings: ``--trace-config`` sets the defaults at start (``settings.TraceConfig``, Triton's defaults: level
OFF, rate 1000, count -1, mode triton); the trace API changes the level, rate, count, file and log frequency
for the whole server or for one model while it runs. A model's setting names only the fields it sets and takes
the others from the global setting, following its later changes; clearing a field (REST ``null``, gRPC an
empty value list) falls back to the global value (for the global setting: to the start-up default), and a model
setting with no field left is gone.

Sampling: each scope (the global setting, a model's own) counts its requests; every ``rate``-th is traced
while ``count`` (traces left, -1 for no end) is not 0. A traced request's times come from the core's report
(``core.InferenceReport``, through the data plane's observers): REQUEST_START, QUEUE_START, COMPUTE_START,
COMPUTE_INPUT_END, COMPUTE_OUTPUT_START, COMPUTE_END, REQUEST_END, as Triton names them. The tracer subscribes
to the data plane only once tracing was on, and while it is off the only work per request is one check.

Exports, by mode (fixed at start, as in Triton):

- ``triton``: Triton's JSON trace file: a header object per trace (``id``, ``model_name``, ``model_version``,
  ``request_id``), then one ``{"id", "timestamps": [{"name", "ns"}]}`` object per timestamp, and at level
  TENSORS the inputs and outputs (``{"id", "activity", "tensor": {"name", "data", "shape", "dtype"}}``).
  ``log_frequency`` 0 appends every trace to ``trace_file``, kept a valid JSON array after each write (Triton
  closes the array at exit only); N writes each N traces to ``trace_file.0``, ``.1``, ... Writing happens in
  the tracer's own thread, never on the event loop.
- ``opentelemetry``: OpenTelemetry spans, batched (``BatchSpanProcessor``) to an OTLP/HTTP endpoint
  (``opentelemetry,url=...``), or to the exporter the server was given: a root ``InferRequest`` span, a span
  named after the model (attributes ``triton.model_name``, ``triton.model_version``, ``triton.trace_id``,
  ``triton.trace_parent_id``, ``triton.request_id``) with the request's timestamps as events, and its
  ``compute`` child span with the compute events, as Triton's ``tracer.cc`` builds them. Tensors are not
  traced in this mode (Triton does not either).

A file named over the API must lie in ``--api-file-dir`` (``names.check_client_file``).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from v2server._proto import grpc_service_pb2 as pb
from v2server.core import InferenceReport
from v2server.errors import InvalidRequest, V2Error
from v2server.names import check_client_file
from v2server.settings import TRACE_LEVELS, TraceConfig
from v2server.tensors import from_contents, from_raw
from v2server.wire import Buffer, InferAnswer

__all__ = ["TRACE_SETTINGS", "Tracer", "trace_changes"]

log = logging.getLogger(__name__)

#: the settings the trace API reads and changes
TRACE_SETTINGS = ("trace_level", "trace_rate", "trace_count", "log_frequency", "trace_file")

_ROOT_SPAN = "InferRequest"


@dataclass(slots=True)
class _Scope:
    """One effective trace setting (the global one, or a model's own) and its sampling state."""

    level: frozenset[str]
    rate: int
    count: int
    log_frequency: int
    file: str
    #: a model's own fields (the others follow the global setting)
    specified: frozenset[str] = frozenset()
    #: requests seen since the setting was made
    sample: int = 0
    #: log_frequency > 0: traces waiting for a full file
    pending: list[list[dict[str, Any]]] = field(default_factory=list)

    def value(self, name: str) -> Any:
        return getattr(self, _ATTRIBUTES[name])

    def take(self) -> bool:
        """Whether this request is traced (counts it either way)."""
        if not self.level or self.count == 0:
            return False
        self.sample += 1
        if self.sample % self.rate:
            return False
        if self.count > 0:
            self.count -= 1
        return True


_ATTRIBUTES = {
    "trace_level": "level", "trace_rate": "rate", "trace_count": "count", "log_frequency": "log_frequency",
    "trace_file": "file",
}


def trace_changes(request: pb.TraceSettingRequest) -> dict[str, list[str] | None]:
    """The changes a ``TraceSettingRequest`` asks for: setting -> its values, None to clear it."""
    changes: dict[str, list[str] | None] = {}
    for name, setting in request.settings.items():
        if name not in TRACE_SETTINGS:
            if name == "trace_mode":
                raise InvalidRequest("trace_mode is chosen at start (--trace-config mode=...) and cannot change")
            raise InvalidRequest(f"unknown trace setting '{name}' (known: {', '.join(TRACE_SETTINGS)})")
        changes[name] = list(setting.value) or None
    return changes


class Tracer:
    """Trace settings, sampling and export for one server (an ``InferenceObserver`` of its data plane)."""

    def __init__(
        self,
        config: TraceConfig = TraceConfig(),  # noqa: B008 (frozen)
        file_dir: Path | None = None,
        exporter: Any = None,
    ) -> None:
        """``file_dir``: where clients may put trace files (``--api-file-dir``); ``exporter``: an OpenTelemetry
        ``SpanExporter`` to use in opentelemetry mode instead of OTLP/HTTP to ``config.url``."""
        self._config = config
        self._file_dir = file_dir
        self._default = _Scope(frozenset(config.level), config.rate, config.count, config.log_frequency, config.file)
        self._global = replace(self._default, pending=[])
        self._models: dict[str, _Scope] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self._on = bool(self._global.level)
        self._writer: ThreadPoolExecutor | None = None
        self._files: dict[str, _TraceFile] = {}
        self._spans: Any = None
        if config.mode == "opentelemetry":
            self._spans = _SpanMaker(config, exporter)

    @property
    def active(self) -> bool:
        """Whether some setting traces (a level other than OFF)."""
        return self._on

    # -- settings ------------------------------------------------------------------------------------------

    def settings(self, model: str = "") -> dict[str, list[str]]:
        """The setting ``model`` is traced with (its own, else the global one), as Triton's API shows it."""
        scope = self._models.get(model, self._global) if model else self._global
        levels = [level for level in TRACE_LEVELS if level in scope.level] or ["OFF"]
        shown: dict[str, list[str]] = {
            "trace_level": levels, "trace_rate": [str(scope.rate)], "trace_count": [str(scope.count)],
        }
        if self._config.mode == "triton":
            shown["log_frequency"] = [str(scope.log_frequency)]
            shown["trace_file"] = [scope.file]
        shown["trace_mode"] = [self._config.mode.upper()]
        if self._config.mode == "opentelemetry":
            shown["url"] = [self._config.url]
        return shown

    def update(self, model: str, changes: Mapping[str, Sequence[str] | None]) -> None:
        """Change the global setting (``model`` empty) or ``model``'s own; None clears a field.

        Raises:
            InvalidRequest: a value that is not valid (naming the setting), or a setting that would trace
                without a file to write to.
        """
        values = {name: _parse(name, raw, self._file_dir) for name, raw in changes.items() if raw is not None}
        cleared = {name for name, raw in changes.items() if raw is None}
        if model:
            before = self._models.get(model)
            if before is not None:
                scope = replace(before)
            else:  # a model's first setting starts from the global one, with counts of its own
                scope = replace(self._global, specified=frozenset(), sample=0, pending=[])
            specified = (scope.specified | values.keys()) - cleared
            for name in cleared:
                setattr(scope, _ATTRIBUTES[name], self._global.value(name))
            scope.specified = frozenset(specified)
            scopes = {model: scope}
        else:
            scope = replace(self._global)
            for name in cleared:
                setattr(scope, _ATTRIBUTES[name], self._default.value(name))
            scopes = {"": scope}
        for name, value in values.items():
            setattr(scope, _ATTRIBUTES[name], value)
        if not model:  # models follow the global setting in the fields they do not set
            for name, own in self._models.items():
                follower = replace(own)
                for attribute in set(_ATTRIBUTES) - own.specified:
                    setattr(follower, _ATTRIBUTES[attribute], scope.value(attribute))
                scopes[name] = follower
        for name, candidate in scopes.items():
            if candidate.level and self._config.mode == "triton" and not candidate.file:
                where = f"model '{name}'" if name else "the global setting"
                raise InvalidRequest(
                    f"trace_file: tracing {where} at {'/'.join(sorted(candidate.level))} needs a trace file "
                    "(trace_file, or --trace-config triton,file=PATH)"
                )
        for name, candidate in scopes.items():
            old = self._models.get(name) if name else self._global
            if old is not None and (old.file != candidate.file or old.log_frequency != candidate.log_frequency):
                self._flush_pending(old)
                candidate.pending = []
            if name:
                if candidate.specified:
                    self._models[name] = candidate
                else:
                    self._models.pop(name, None)
            else:
                self._global = candidate
        self._on = not self._closed and (bool(self._global.level) or any(s.level for s in self._models.values()))

    # -- tracing -------------------------------------------------------------------------------------------

    def inferred(self, request: pb.ModelInferRequest, report: InferenceReport) -> None:
        """The data plane's report on one request: trace it when its scope samples it."""
        if not self._on or not report.start_ns:
            return
        scope = self._models.get(report.model, self._global)
        if not scope.take():
            return
        trace_id = next(self._ids)
        if self._spans is not None:
            self._spans.export(trace_id, report)
            return
        tensors = "TENSORS" in scope.level
        timestamps = "TIMESTAMPS" in scope.level
        work = (trace_id, request, report, timestamps, tensors)
        if scope.log_frequency:
            scope.pending.append(_TracePieces(work))
            if len(scope.pending) >= scope.log_frequency or scope.count == 0:
                self._flush_pending(scope)
        else:
            self._write(scope.file, [_TracePieces(work)], indexed=False)

    def _flush_pending(self, scope: _Scope) -> None:
        if scope.pending:
            pieces, scope.pending = scope.pending, []
            self._write(scope.file, pieces, indexed=True)

    def _write(self, path: str, traces: list[Any], indexed: bool) -> None:
        trace_file = self._files.get(path)
        if trace_file is None:
            trace_file = self._files[path] = _TraceFile(Path(path))
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="v2server-trace")
        self._writer.submit(_logged, trace_file.write, traces, indexed)

    def close(self) -> None:
        """Write what is pending and stop the exports, for good (blocking: call it from a worker thread)."""
        self._on, self._closed = False, True
        for scope in (self._global, *self._models.values()):
            self._flush_pending(scope)
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        if self._spans is not None:
            self._spans.close()
            self._spans = None


def _parse(name: str, values: Sequence[str], file_dir: Path | None) -> Any:
    """A setting's new value from the strings the API carries; ``InvalidRequest`` naming it otherwise."""
    if name == "trace_level":
        levels = {value.strip().upper() for value in values}
        unknown = levels - {"OFF", *TRACE_LEVELS}
        if unknown:
            raise InvalidRequest(f"trace_level: unknown level '{sorted(unknown)[0]}' (OFF, TIMESTAMPS, TENSORS)")
        if "OFF" in levels:
            if len(levels) > 1:
                raise InvalidRequest("trace_level: OFF cannot be given with other levels")
            return frozenset()
        return frozenset(levels)
    if len(values) != 1:
        raise InvalidRequest(f"{name}: expected one value, got {len(values)}")
    text = values[0].strip()
    if name == "trace_file":
        return str(check_client_file(text, file_dir, "trace_file")) if text else ""
    try:
        number = int(text)
    except ValueError:
        raise InvalidRequest(f"{name}: expected an integer, got '{text[:64]}'") from None
    lowest = {"trace_rate": 1, "trace_count": -1, "log_frequency": 0}[name]
    if not lowest <= number <= 2**31 - 1:
        raise InvalidRequest(f"{name}: must be in {lowest}..{2**31 - 1}, got {number}")
    return number


def _logged(function: Callable[..., None], *args: Any) -> None:
    try:
        function(*args)
    except Exception:
        log.exception("writing request traces failed")


# -- triton mode: Triton's JSON trace file ----------------------------------------------------------------------


class _TracePieces:
    """One sampled request, rendered to Triton's JSON objects in the writer thread (not on the event loop)."""

    __slots__ = ("_work",)

    def __init__(self, work: tuple[int, pb.ModelInferRequest, InferenceReport, bool, bool]) -> None:
        self._work = work

    def render(self) -> list[dict[str, Any]]:
        trace_id, request, report, timestamps, tensors = self._work
        header: dict[str, Any] = {"id": trace_id, "model_name": report.model, "model_version": int(report.version)}
        if report.request_id:
            header["request_id"] = report.request_id
        objects = [header]
        if timestamps:
            objects += [
                {"id": trace_id, "timestamps": [{"name": name, "ns": ns}]} for name, ns in _timestamps(report)
            ]
        if tensors:
            objects += [
                {"id": trace_id, "activity": activity, "tensor": tensor}
                for activity, tensor in _tensors(request, report.response, report.raw_inputs)
            ]
        return objects


def _timestamps(report: InferenceReport) -> list[tuple[str, int]]:
    """Triton's timestamps of a request, from what the core measured."""
    stamps = [("REQUEST_START", report.start_ns)]
    if report.queue_start_ns:
        compute_start = report.queue_start_ns + report.queue_ns
        compute_end = compute_start + report.compute_ns
        stamps += [
            ("QUEUE_START", report.queue_start_ns),
            ("COMPUTE_START", compute_start),
            ("COMPUTE_INPUT_END", compute_start + report.input_ns),
            ("COMPUTE_OUTPUT_START", compute_end - report.output_ns),
            ("COMPUTE_END", compute_end),
        ]
    stamps.append(("REQUEST_END", report.end_ns))
    return stamps


def _tensors(
    request: pb.ModelInferRequest, response: InferAnswer | pb.ModelInferResponse | None,
    raw_inputs: Sequence[Buffer] | None = None,
) -> list[tuple[str, dict[str, str]]]:
    """The request's inputs (TENSOR_QUEUE_INPUT) and the response's outputs (TENSOR_BACKEND_OUTPUT) as Triton
    writes them: values comma-separated, BYTES quoted; a tensor that is not in the message (shared memory) is
    left out."""
    found: list[tuple[str, dict[str, str]]] = []
    raw = list(request.raw_input_contents) if raw_inputs is None else list(raw_inputs)
    entries = iter(raw)
    for tensor in request.inputs:
        try:
            if raw:
                decoded = from_raw(tensor.name, tensor.datatype, tensor.shape, next(entries))
            else:
                decoded = from_contents(tensor.name, tensor.datatype, tensor.shape, tensor.contents)
        except (V2Error, StopIteration):
            continue
        found.append(("TENSOR_QUEUE_INPUT", _tensor_json(tensor.name, tensor.datatype, tensor.shape, decoded.array)))
    if response is not None:
        for output, data in zip(response.outputs, response.raw_output_contents, strict=False):
            try:
                decoded = from_raw(output.name, output.datatype, output.shape, data)
            except V2Error:
                continue
            found.append(
                ("TENSOR_BACKEND_OUTPUT", _tensor_json(output.name, output.datatype, output.shape, decoded.array))
            )
    return found


def _tensor_json(name: str, datatype: str, shape: Sequence[int], array: Any) -> dict[str, str]:
    if datatype == "BYTES":
        data = ",".join('"' + item.decode("utf-8", "replace") + '"' for item in array.ravel().tolist())
    elif datatype in ("FP16", "BF16"):
        data = ""  # Triton leaves them out too
    else:
        data = ",".join(str(item) for item in array.ravel().tolist())
    return {"name": name, "data": data, "shape": ",".join(str(d) for d in shape), "dtype": datatype}


class _TraceFile:
    """One trace file; written only from the tracer's writer thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._index = 0
        self._lock = threading.Lock()

    def write(self, traces: list[_TracePieces], indexed: bool) -> None:
        objects = [piece for trace in traces for piece in trace.render()]
        body = b",".join(orjson.dumps(item) for item in objects)
        with self._lock:
            if indexed:
                target = self._path.with_name(f"{self._path.name}.{self._index}")
                self._index += 1
                target.write_bytes(b"[" + body + b"]")
                return
            _append_to_array(self._path, body)


def _append_to_array(path: Path, body: bytes) -> None:
    """Add JSON objects (``body``: comma-separated) to the array in ``path``, which stays valid JSON."""
    with open(path, "ab+") as file:  # noqa: PTH123 (one file handle for the seek and the write)
        size = file.seek(0, os.SEEK_END)
        if size >= 2:
            file.seek(size - 1)
            if file.read(1) == b"]":
                file.truncate(size - 1)
                file.write(b"," + body + b"]")
                return
        file.truncate(0)
        file.write(b"[" + body + b"]")


# -- opentelemetry mode -----------------------------------------------------------------------------------------


class _SpanMaker:
    """Triton's spans for each traced request, batched to the exporter."""

    def __init__(self, config: TraceConfig, exporter: Any) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=config.url)
        resource = Resource.create({"service.name": "v2server", **dict(config.resource)})
        self._provider = TracerProvider(resource=resource)
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("v2server")
        # the report's times are perf_counter_ns; spans take times since the epoch
        self._offset = time.time_ns() - time.perf_counter_ns()

    def export(self, trace_id: int, report: InferenceReport) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        at = self._offset
        stamps = dict(_timestamps(report))
        start, end = stamps["REQUEST_START"] + at, stamps["REQUEST_END"] + at
        root = self._tracer.start_span(_ROOT_SPAN, kind=SpanKind.SERVER, start_time=start)
        context = trace.set_span_in_context(root)
        attributes: dict[str, Any] = {
            "triton.model_name": report.model,
            "triton.model_version": int(report.version),
            "triton.trace_id": trace_id,
            "triton.trace_parent_id": 0,
        }
        if report.request_id:
            attributes["triton.request_id"] = report.request_id
        request = self._tracer.start_span(
            report.model, context=context, kind=SpanKind.SERVER, start_time=start, attributes=attributes
        )
        for name in ("REQUEST_START", "QUEUE_START"):
            if name in stamps:
                request.add_event(name, timestamp=stamps[name] + at)
        if "COMPUTE_START" in stamps:
            compute = self._tracer.start_span(
                "compute", context=trace.set_span_in_context(request), kind=SpanKind.SERVER,
                start_time=stamps["COMPUTE_START"] + at,
            )
            for name in ("COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END"):
                compute.add_event(name, timestamp=stamps[name] + at)
            compute.end(end_time=stamps["COMPUTE_END"] + at)
        request.add_event("REQUEST_END", timestamp=end)
        if report.response is None:
            request.set_status(Status(StatusCode.ERROR, "the request failed"))
        request.end(end_time=end)
        root.end(end_time=end)

    def close(self) -> None:
        self._provider.shutdown()  # exports what the batch processor holds
