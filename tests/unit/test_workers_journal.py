"""The control journal a restarted worker replays (v2server/workers/journal.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from v2server._proto import grpc_service_pb2 as pb
from v2server.workers.journal import Journal


def test_the_last_change_per_model_is_kept_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    assert journal.entries() == []
    journal.note("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="a"))
    journal.note("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="b"))
    journal.note("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name="a"))
    entries = journal.entries()
    assert [(e.method, e.request.model_name) for e in entries] == [
        ("RepositoryModelLoad", "b"), ("RepositoryModelUnload", "a")
    ]


def test_a_load_keeps_its_parameters(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    request = pb.RepositoryModelLoadRequest(model_name="m")
    request.parameters["config"].string_param = '{"max_batch_size": 4}'
    request.parameters["file:1/model.pt"].bytes_param = b"\x00\x01weights"
    journal.note("RepositoryModelLoad", request)
    assert journal.entries()[0].request == request


def test_shared_memory_regions_come_and_go(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for name in ("r1", "r2", "r3"):
        journal.note("SystemSharedMemoryRegister",
                     pb.SystemSharedMemoryRegisterRequest(name=name, key=f"/{name}", byte_size=64))
    journal.note("SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest(name="r2"))
    assert [e.request.name for e in journal.entries()] == ["r1", "r3"]
    journal.note("LogSettings", pb.LogSettingsRequest(settings={"log_info": pb.LogSettingsRequest.SettingValue(
        bool_param=False)}))
    journal.note("SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest())  # all of them
    assert [e.method for e in journal.entries()] == ["LogSettings"]


def test_trace_and_log_settings_are_kept_per_setting(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    value = pb.TraceSettingRequest.SettingValue
    journal.note("TraceSetting", pb.TraceSettingRequest(settings={"trace_rate": value(value=["10"]),
                                                                   "trace_level": value(value=["TIMESTAMPS"])}))
    journal.note("TraceSetting", pb.TraceSettingRequest(settings={"trace_rate": value(value=["20"])}))
    journal.note("TraceSetting", pb.TraceSettingRequest(model_name="m", settings={"trace_rate": value(value=["5"])}))
    kept = {(e.request.model_name, name, tuple(v.value))
            for e in journal.entries() for name, v in e.request.settings.items()}
    assert kept == {("", "trace_level", ("TIMESTAMPS",)), ("", "trace_rate", ("20",)), ("m", "trace_rate", ("5",))}


def test_an_unreadable_entry_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal(tmp_path)
    journal.note("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="a"))
    (tmp_path / "broken.json").write_text("{not json")
    assert [e.request.model_name for e in journal.entries()] == ["a"]
    assert "unreadable journal entry" in caplog.text


def test_other_methods_are_not_journaled(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not journaled"):
        Journal(tmp_path).note("ModelInfer", pb.ModelInferRequest())
