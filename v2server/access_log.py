"""The optional access log: one line per request, text or JSON, on the ``v2server.access`` logger.

A transport opens an ``AccessRecord`` for each request (``begin``) and writes it when the answer is sent
(``end``). What only the core knows (model, version, the batch the request ran in, queue and compute times)
arrives through the core's observer interface: the transport subscribes the log to its core
(``core.observe(access)``), marks the inference requests it forwards with ``watching(record, request)``, and
the core's report of that very request object (``inferred``) fills the record. No layer below the transport
writes into the transport's state, and no signature carries logging arguments. When the log is off nothing
is created: the core has no observer and skips its report.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Literal

import orjson

from v2server._proto import grpc_service_pb2 as pb
from v2server.core import InferenceReport

__all__ = ["AccessLog", "AccessRecord", "LogFormat"]

LogFormat = Literal["text", "json"]

_log = logging.getLogger("v2server.access")


@dataclass(slots=True)
class AccessRecord:
    protocol: str
    route: str
    request_id: str = ""
    model: str = ""
    version: str = ""
    status: str = ""
    batch_size: int = 0
    queue_us: float = 0.0
    compute_us: float = 0.0
    duration_us: float = 0.0


class AccessLog:
    """Writes access records in the chosen format; an ``InferenceObserver`` of the cores it logs for."""

    def __init__(self, log_format: LogFormat = "text") -> None:
        self._json = log_format == "json"
        #: id(request) -> (request, record) while the request is with the core; the request is held so
        #: that its id cannot be reused meanwhile
        self._watched: dict[int, tuple[pb.ModelInferRequest, AccessRecord]] = {}

    def begin(self, protocol: str, route: str) -> AccessRecord:
        return AccessRecord(protocol, route)

    @contextmanager
    def watching(self, record: AccessRecord, request: pb.ModelInferRequest) -> Iterator[None]:
        """While in this block, the core's report on ``request`` (this object) fills ``record``."""
        key = id(request)
        self._watched[key] = (request, record)
        try:
            yield
        finally:
            if self._watched.get(key, (None,))[0] is request:
                del self._watched[key]

    def inferred(self, request: pb.ModelInferRequest, report: InferenceReport) -> None:
        """The core's report on ``request``; ignored unless a transport is watching that object."""
        watched = self._watched.get(id(request))
        if watched is None or watched[0] is not request:
            return
        record = watched[1]
        record.request_id, record.model, record.version = report.request_id, report.model, report.version
        record.batch_size = report.batch_size
        record.queue_us = report.queue_ns / 1000
        record.compute_us = report.compute_ns / 1000

    def end(self, record: AccessRecord, status: str, duration_ns: int) -> None:
        record.status = status
        record.duration_us = round(duration_ns / 1000, 1)
        if self._json:
            _log.info("%s", orjson.dumps(asdict(record)).decode())
        else:
            _log.info(
                "%s %s id=%s model=%s version=%s status=%s batch=%d queue_us=%.1f compute_us=%.1f duration_us=%.1f",
                record.protocol, record.route, record.request_id or "-", record.model or "-", record.version or "-",
                record.status, record.batch_size, record.queue_us, record.compute_us, record.duration_us,
            )
