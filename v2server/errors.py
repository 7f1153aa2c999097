"""The one error tree of v2server.

Code anywhere raises these; each transport translates them exactly once (the gRPC servicer wrapper and the
REST gateway's ``write_error``). Each class carries its gRPC status code, and :func:`http_status` derives the
HTTP status from it with Triton's mapping, so REST and gRPC always agree on what an error is::

    V2Error                      INTERNAL           500
    ├── InvalidRequest           INVALID_ARGUMENT   400
    ├── ModelNotFound            NOT_FOUND          404
    ├── NotFound                 NOT_FOUND          404  (anything else a request names: a shared-memory region)
    ├── ModelNotReady            UNAVAILABLE        503
    ├── ServerNotReady           UNAVAILABLE        503
    ├── QueueFull                UNAVAILABLE        503
    ├── StoreUnavailable         UNAVAILABLE        503  (the results store: full, or S3 failing)
    ├── DeadlineExceeded         DEADLINE_EXCEEDED  504
    ├── Unauthenticated          UNAUTHENTICATED    401
    ├── Unsupported              UNIMPLEMENTED      501
    ├── AlreadyExists            ALREADY_EXISTS     400
    ├── PayloadTooLarge          RESOURCE_EXHAUSTED 413
    ├── NotWritable              FAILED_PRECONDITION 409 (state that cannot be saved: a read-only repository)
    ├── InferenceFailed          INTERNAL           500
    └── ModelLoadError           INTERNAL           500  (a model that could not be loaded)
"""

from __future__ import annotations

from typing import ClassVar

import grpc

__all__ = [
    "AlreadyExists",
    "DeadlineExceeded",
    "InferenceFailed",
    "InvalidRequest",
    "ModelLoadError",
    "ModelNotFound",
    "ModelNotReady",
    "NotFound",
    "NotWritable",
    "PayloadTooLarge",
    "QueueFull",
    "ServerNotReady",
    "StoreUnavailable",
    "Unauthenticated",
    "Unsupported",
    "V2Error",
    "error_for",
    "http_status",
]


class V2Error(Exception):
    """Base of every error a client may see; the message names what is wrong."""

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(V2Error):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(V2Error):
    grpc_code = grpc.StatusCode.NOT_FOUND


class NotFound(V2Error):
    """Something other than a model that a request names is unknown (a shared-memory region)."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class ModelNotReady(V2Error):
    grpc_code = grpc.StatusCode.UNAVAILABLE


class ServerNotReady(V2Error):
    grpc_code = grpc.StatusCode.UNAVAILABLE


class QueueFull(V2Error):
    grpc_code = grpc.StatusCode.UNAVAILABLE


class StoreUnavailable(V2Error):
    """The results store cannot take an answer now: it holds ``--results-max-bytes`` (until the sweeper frees
    room), or S3 failed."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(V2Error):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(V2Error):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class Unsupported(V2Error):
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class AlreadyExists(V2Error):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class PayloadTooLarge(V2Error):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotWritable(V2Error):
    """State the server must save (version aliases) cannot be written where it lives: a read-only repository
    without ``--state-dir``, or a state folder that refuses the write. Nothing changed."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class InferenceFailed(V2Error):
    """The model itself raised; the message is the model's."""

    grpc_code = grpc.StatusCode.INTERNAL


class ModelLoadError(V2Error):
    """A model version could not be loaded (bad config, missing file, load failure)."""

    grpc_code = grpc.StatusCode.INTERNAL


_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.ALREADY_EXISTS: 400,
    grpc.StatusCode.CANCELLED: 400,
    grpc.StatusCode.UNKNOWN: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
}


def error_for(code: grpc.StatusCode, message: str) -> V2Error:
    """An error of ours with ``code``'s meaning (the first class above that carries it; V2Error, INTERNAL, for
    none), for relaying what another process of this server answered."""
    for kind in V2Error.__subclasses__():
        if kind.grpc_code == code:
            return kind(message)
    return V2Error(message)


def http_status(code: grpc.StatusCode) -> int:
    """HTTP status for a gRPC status code, following Triton's ``http_server.cc`` where clients depend on it."""
    return _HTTP_STATUS.get(code, 500)
