"""The tracer: Triton's trace settings (global, per model, cleared), sampling, the triton JSON file, and the
OpenTelemetry spans read back from an in-memory exporter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from v2server._proto import grpc_service_pb2 as pb
from v2server.core import InferenceReport
from v2server.errors import InvalidRequest
from v2server.settings import TraceConfig
from v2server.tracing import Tracer, trace_changes

STAMPS = ["REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
          "COMPUTE_END", "REQUEST_END"]


def _report(model: str = "m", request_id: str = "r1", ok: bool = True) -> InferenceReport:
    response = pb.ModelInferResponse(
        model_name=model, model_version="1", outputs=[pb.ModelInferResponse.InferOutputTensor(
            name="OUT", datatype="INT32", shape=[2])], raw_output_contents=[np.array([5, 6], np.int32).tobytes()],
    )
    return InferenceReport(
        request_id, model, "1", batch_size=1, queue_ns=100, compute_ns=1_000, start_ns=10_000, end_ns=12_000,
        queue_start_ns=10_200, input_ns=150, output_ns=50, response=response if ok else None,
    )


def _request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", id="r1")
    request.inputs.add(name="IN", datatype="BYTES", shape=[2])
    request.raw_input_contents.append(b"\x01\x00\x00\x00a\x02\x00\x00\x00bc")
    return request


def test_defaults_are_tritons(tmp_path: Path) -> None:
    tracer = Tracer()
    assert not tracer.active
    assert tracer.settings() == {
        "trace_level": ["OFF"], "trace_rate": ["1000"], "trace_count": ["-1"], "log_frequency": ["0"],
        "trace_file": [""], "trace_mode": ["TRITON"],
    }


def test_model_settings_follow_the_global_one_until_cleared(tmp_path: Path) -> None:
    tracer = Tracer(TraceConfig(file=str(tmp_path / "t.json")))
    tracer.update("", {"trace_rate": ["10"]})
    tracer.update("m", {"trace_level": ["TIMESTAMPS"], "trace_count": ["5"]})
    assert tracer.active
    assert tracer.settings("m")["trace_level"] == ["TIMESTAMPS"]
    assert tracer.settings("m")["trace_rate"] == ["10"]
    tracer.update("", {"trace_rate": ["20"], "trace_count": ["7"]})  # the model follows what it does not set
    assert tracer.settings("m")["trace_rate"] == ["20"] and tracer.settings("m")["trace_count"] == ["5"]
    assert tracer.settings("other") == tracer.settings()
    tracer.update("m", {"trace_count": None})  # cleared: the global value again
    assert tracer.settings("m")["trace_count"] == ["7"]
    tracer.update("m", {"trace_level": None})  # nothing of its own left: the global setting
    assert tracer.settings("m") == tracer.settings() and not tracer.active
    tracer.update("", {"trace_rate": None})  # the global one clears to the start-up default
    assert tracer.settings()["trace_rate"] == ["1000"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"trace_rate": ["often"]}, "trace_rate: expected an integer, got 'often'"),
        ({"trace_rate": ["0"]}, "trace_rate: must be in 1..2147483647, got 0"),
        ({"trace_count": ["-2"]}, "trace_count: must be in -1..2147483647, got -2"),
        ({"log_frequency": ["1", "2"]}, "log_frequency: expected one value, got 2"),
        ({"trace_level": ["LOUD"]}, "trace_level: unknown level 'LOUD'"),
        ({"trace_level": ["OFF", "TIMESTAMPS"]}, "trace_level: OFF cannot be given with other levels"),
        ({"trace_level": ["TIMESTAMPS"]}, "trace_file: tracing the global setting at TIMESTAMPS needs a trace file"),
        ({"trace_file": ["/tmp/x.json"]}, "trace_file: this server does not let clients choose the files it writes"),
    ],
)
def test_invalid_settings_name_the_field(changes: dict[str, list[str]], message: str) -> None:
    tracer = Tracer()
    with pytest.raises(InvalidRequest) as caught:
        tracer.update("", changes)
    assert message in caught.value.message
    assert tracer.settings()["trace_rate"] == ["1000"]  # nothing changed


def test_requests_name_known_settings_only() -> None:
    request = pb.TraceSettingRequest()
    request.settings["trace_rate"].value.append("5")
    request.settings["trace_count"]  # noqa: B018 (an empty value list clears)
    assert trace_changes(request) == {"trace_rate": ["5"], "trace_count": None}
    request.settings["trace_mode"].value.append("opentelemetry")
    with pytest.raises(InvalidRequest, match="trace_mode is chosen at start"):
        trace_changes(request)


def test_trace_files_only_inside_the_allowed_folder(tmp_path: Path) -> None:
    tracer = Tracer(file_dir=tmp_path)
    tracer.update("", {"trace_file": ["traces/a.json"]})
    assert tracer.settings()["trace_file"] == [str((tmp_path / "traces" / "a.json").resolve())]
    for outside in ("../a.json", str(tmp_path.parent / "a.json"), "/etc/passwd"):
        with pytest.raises(InvalidRequest, match="trace_file"):
            tracer.update("", {"trace_file": [outside]})


def test_sampling_by_rate_and_count(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    tracer = Tracer(TraceConfig(level=("TIMESTAMPS",), rate=2, count=2, file=str(path)))
    for index in range(8):
        tracer.inferred(_request(), _report(request_id=f"r{index}"))
    tracer.close()
    written = json.loads(path.read_text())
    headers = [item for item in written if "model_name" in item]
    assert [item["request_id"] for item in headers] == ["r1", "r3"]  # every 2nd, 2 in all
    assert tracer.settings()["trace_count"] == ["0"]


def test_triton_file_is_valid_json_after_every_write(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    tracer = Tracer(TraceConfig(level=("TIMESTAMPS", "TENSORS"), rate=1, file=str(path)))
    tracer.inferred(_request(), _report())
    tracer.close()  # waits for the writer thread
    first = json.loads(path.read_text())
    assert first[0] == {"id": 1, "model_name": "m", "model_version": 1, "request_id": "r1"}
    stamps = [item["timestamps"][0] for item in first if "timestamps" in item]
    assert [stamp["name"] for stamp in stamps] == STAMPS
    assert [stamp["ns"] for stamp in stamps] == [10_000, 10_200, 10_300, 10_450, 11_250, 11_300, 12_000]
    tensors = {item["activity"]: item["tensor"] for item in first if "activity" in item}
    assert tensors["TENSOR_QUEUE_INPUT"] == {"name": "IN", "data": '"a","bc"', "shape": "2", "dtype": "BYTES"}
    assert tensors["TENSOR_BACKEND_OUTPUT"] == {"name": "OUT", "data": "5,6", "shape": "2", "dtype": "INT32"}
    again = Tracer(TraceConfig(level=("TIMESTAMPS",), rate=1, file=str(path)))
    again.inferred(_request(), _report(request_id="r2"))
    again.close()
    assert len(json.loads(path.read_text())) == len(first) + 8  # appended, still one array


def test_log_frequency_writes_numbered_files(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    tracer = Tracer(TraceConfig(level=("TIMESTAMPS",), rate=1, log_frequency=2, file=str(path)))
    for _ in range(3):
        tracer.inferred(_request(), _report())
    tracer.close()  # the third trace goes out at the end
    assert not path.exists()
    assert len([item for item in json.loads((tmp_path / "t.json.0").read_text()) if "model_name" in item]) == 2
    assert len([item for item in json.loads((tmp_path / "t.json.1").read_text()) if "model_name" in item]) == 1


def test_off_costs_nothing_and_reports_without_a_start_are_skipped(tmp_path: Path) -> None:
    tracer = Tracer(TraceConfig(level=("TIMESTAMPS",), rate=1, file=str(tmp_path / "t.json")))
    tracer.inferred(_request(), InferenceReport("r", "m", "1"))  # subscribed mid-request: no start time
    tracer.update("", {"trace_level": ["OFF"]})
    tracer.inferred(_request(), _report())
    tracer.close()
    assert not (tmp_path / "t.json").exists()


def test_opentelemetry_spans() -> None:
    exporter = InMemorySpanExporter()
    tracer = Tracer(TraceConfig(mode="opentelemetry", level=("TIMESTAMPS",), rate=1,
                                resource=(("deployment", "test"),)), exporter=exporter)
    assert tracer.settings()["trace_mode"] == ["OPENTELEMETRY"] and "trace_file" not in tracer.settings()
    tracer.inferred(_request(), _report())
    tracer.inferred(_request(), _report(request_id="", ok=False))
    tracer.close()
    spans = exporter.get_finished_spans()
    assert sorted(span.name for span in spans) == sorted(["InferRequest", "m", "compute"] * 2)
    by_name = {span.name: span for span in spans[:3]}
    root, request, compute = by_name["InferRequest"], by_name["m"], by_name["compute"]
    assert request.parent.span_id == root.context.span_id
    assert compute.parent.span_id == request.context.span_id
    assert dict(request.attributes) == {
        "triton.model_name": "m", "triton.model_version": 1, "triton.trace_id": 1, "triton.trace_parent_id": 0,
        "triton.request_id": "r1",
    }
    assert [event.name for event in request.events] == ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
    assert [event.name for event in compute.events] == STAMPS[2:6]
    assert compute.end_time - compute.start_time == 1_000 and root.end_time - root.start_time == 2_000
    assert root.resource.attributes["deployment"] == "test"
    failed = [span for span in spans[3:] if span.name == "m"][0]
    assert not failed.status.is_ok and "triton.request_id" not in failed.attributes
