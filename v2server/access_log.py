"""The optional access log: one line per request, text or JSON, on the ``v2server.access`` logger.

A transport opens an ``AccessRecord`` for each request and writes it when the answer is sent; the data plane and
the model handle fill in what only they know (model, version, the batch the request ran in, queue and compute
times) through a context variable, so no signature carries logging arguments. When the log is off nothing is
created: ``current()`` returns None and the fill-ins are skipped.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Literal

import orjson

__all__ = ["AccessLog", "AccessRecord", "current"]

LogFormat = Literal["text", "json"]

_current: ContextVar[AccessRecord | None] = ContextVar("v2server_access_record", default=None)
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


def current() -> AccessRecord | None:
    """The record of the request being served, when the access log is on."""
    return _current.get()


class AccessLog:
    """Writes access records in the chosen format."""

    def __init__(self, log_format: LogFormat = "text") -> None:
        self._json = log_format == "json"

    def begin(self, protocol: str, route: str) -> AccessRecord:
        record = AccessRecord(protocol, route)
        _current.set(record)
        return record

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
