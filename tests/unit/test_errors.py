"""The error tree: each class's gRPC code and the HTTP status derived from it (Triton's mapping)."""

from __future__ import annotations

import grpc
import pytest

from v2server import errors
from v2server.errors import http_status

TRITON_HTTP_STATUS = [
    (grpc.StatusCode.INVALID_ARGUMENT, 400),
    (grpc.StatusCode.NOT_FOUND, 404),
    (grpc.StatusCode.UNAVAILABLE, 503),
    (grpc.StatusCode.UNIMPLEMENTED, 501),
    (grpc.StatusCode.INTERNAL, 500),
    (grpc.StatusCode.UNAUTHENTICATED, 401),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
]


@pytest.mark.parametrize(("code", "status"), TRITON_HTTP_STATUS, ids=lambda v: getattr(v, "name", v))
def test_http_status_follows_triton(code: grpc.StatusCode, status: int) -> None:
    assert http_status(code) == status


def test_unmapped_code_is_internal() -> None:
    assert http_status(grpc.StatusCode.DATA_LOSS) == 500


@pytest.mark.parametrize(
    ("cls", "code", "status"),
    [
        (errors.V2Error, grpc.StatusCode.INTERNAL, 500),
        (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT, 400),
        (errors.ModelNotFound, grpc.StatusCode.NOT_FOUND, 404),
        (errors.NotFound, grpc.StatusCode.NOT_FOUND, 404),
        (errors.ModelNotReady, grpc.StatusCode.UNAVAILABLE, 503),
        (errors.ServerNotReady, grpc.StatusCode.UNAVAILABLE, 503),
        (errors.QueueFull, grpc.StatusCode.UNAVAILABLE, 503),
        (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, 401),
        (errors.Unsupported, grpc.StatusCode.UNIMPLEMENTED, 501),
        (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, 400),
        (errors.InferenceFailed, grpc.StatusCode.INTERNAL, 500),
        (errors.PayloadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
        (errors.ModelLoadError, grpc.StatusCode.INTERNAL, 500),
        (errors.NotWritable, grpc.StatusCode.FAILED_PRECONDITION, 409),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_error_class_codes(cls: type[errors.V2Error], code: grpc.StatusCode, status: int) -> None:
    error = cls("what is wrong")
    assert isinstance(error, errors.V2Error)
    assert (error.grpc_code, http_status(error.grpc_code)) == (code, status)
    assert error.message == str(error) == "what is wrong"


def test_every_exported_error_is_in_the_tree() -> None:
    classes = [getattr(errors, name) for name in errors.__all__ if name not in ("http_status", "error_for")]
    assert all(issubclass(cls, errors.V2Error) for cls in classes)
    assert len(classes) == 16  # NotWritable (jobs/aliases), StoreUnavailable (results)


def test_a_relayed_status_keeps_its_code_and_message() -> None:
    """What another worker answered is answered again with the same status, whichever class carries it."""
    for kind in errors.V2Error.__subclasses__():
        relayed = errors.error_for(kind.grpc_code, "worker 1 said no")
        assert relayed.grpc_code == kind.grpc_code and relayed.message == "worker 1 said no"
    assert errors.error_for(grpc.StatusCode.UNKNOWN, "?").grpc_code == grpc.StatusCode.INTERNAL
