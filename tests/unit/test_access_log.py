"""The access log: records filled from the core's reports on watched request objects, and its line formats."""

from __future__ import annotations

import json
import logging

import pytest

from v2server._proto import grpc_service_pb2 as pb
from v2server.access_log import AccessLog
from v2server.core import InferenceReport

REPORT = InferenceReport("id-1", "m", "2", batch_size=8, queue_ns=1_500, compute_ns=250_000)


def test_a_report_fills_the_record_of_the_watched_request_only() -> None:
    access = AccessLog()
    record = access.begin("http", "POST /v2/models/m/infer")
    request, other = pb.ModelInferRequest(), pb.ModelInferRequest()
    with access.watching(record, request):
        access.inferred(other, REPORT)  # not watched: ignored
        assert record.model == ""
        access.inferred(request, REPORT)
    assert (record.request_id, record.model, record.version, record.batch_size) == ("id-1", "m", "2", 8)
    assert (record.queue_us, record.compute_us) == (1.5, 250.0)
    fresh = access.begin("http", "again")
    access.inferred(request, REPORT)  # no longer watched once the block is left
    assert fresh.model == "" and record.protocol == "http"


def test_nothing_is_left_watched_after_an_error() -> None:
    access = AccessLog()
    record, request = access.begin("grpc", "/x"), pb.ModelInferRequest()
    with pytest.raises(RuntimeError), access.watching(record, request):
        raise RuntimeError
    access.inferred(request, REPORT)
    assert record.model == ""


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_line_formats(log_format: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="v2server.access")
    access = AccessLog(log_format)  # type: ignore[arg-type]
    record, request = access.begin("grpc", "/inference.GRPCInferenceService/ModelInfer"), pb.ModelInferRequest()
    with access.watching(record, request):
        access.inferred(request, REPORT)
    access.end(record, "OK", 1_234_567)
    [line] = [r.getMessage() for r in caplog.records if r.name == "v2server.access"]
    if log_format == "json":
        assert json.loads(line) == {
            "protocol": "grpc", "route": "/inference.GRPCInferenceService/ModelInfer", "request_id": "id-1",
            "model": "m", "version": "2", "status": "OK", "batch_size": 8, "queue_us": 1.5, "compute_us": 250.0,
            "duration_us": 1234.6,
        }
    else:
        assert line == (
            "grpc /inference.GRPCInferenceService/ModelInfer id=id-1 model=m version=2 status=OK batch=8 "
            "queue_us=1.5 compute_us=250.0 duration_us=1234.6"
        )
