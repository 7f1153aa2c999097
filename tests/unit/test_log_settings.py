"""Log settings: Triton's six fields, checked by kind, applied to the process's log at once."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from v2server._proto import grpc_service_pb2 as pb
from v2server.errors import InvalidRequest
from v2server.log_settings import LogControl, LogState, log_changes, log_response

DEFAULTS = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True, "log_verbose_level": 0,
            "log_format": "default"}


@pytest.fixture()
def restored() -> Iterator[None]:
    """Puts the process's log back as it was (a change applies to every logger of the process)."""
    root, access = logging.getLogger(), logging.getLogger("tornado.access")
    levels = root.level, access.level
    yield
    LogControl().update(DEFAULTS)  # closes a log file the test opened
    root.setLevel(levels[0])
    access.setLevel(levels[1])


def _request(**values: object) -> pb.LogSettingsRequest:
    request = pb.LogSettingsRequest()
    for name, value in values.items():
        entry = request.settings[name]
        if isinstance(value, bool):
            entry.bool_param = value
        elif isinstance(value, int):
            entry.uint32_param = value
        elif isinstance(value, str):
            entry.string_param = value
    return request


def test_the_response_has_tritons_fields() -> None:
    response = log_response(LogState())
    values = {name: getattr(s, s.WhichOneof("parameter_choice")) for name, s in response.settings.items()}
    assert values == DEFAULTS


def test_changes_are_checked_by_kind() -> None:
    assert log_changes(_request(log_info=False, log_verbose_level=2, log_format="ISO8601")) == {
        "log_info": False, "log_verbose_level": 2, "log_format": "ISO8601",
    }
    assert log_changes(_request(log_error=None)) == {}  # a setting without a value stays as it is
    with pytest.raises(InvalidRequest, match="log_info: expected a boolean, got string"):
        log_changes(_request(log_info="no"))
    with pytest.raises(InvalidRequest, match="log_verbose_level: expected an unsigned integer, got bool"):
        log_changes(_request(log_verbose_level=True))
    with pytest.raises(InvalidRequest, match="unknown log setting 'log_color'"):
        log_changes(_request(log_color="red"))


def test_levels_change_at_once(restored: None) -> None:
    control = LogControl()
    control.update({"log_verbose_level": 1})
    assert logging.getLogger().level == logging.DEBUG
    assert logging.getLogger("tornado.access").level == logging.NOTSET  # Tornado's line per request
    control.update({"log_verbose_level": 0, "log_info": False})
    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger("tornado.access").level == logging.WARNING
    control.update({"log_warning": False, "log_error": False})
    assert logging.getLogger().level > logging.CRITICAL
    assert control.state == LogState(info=False, warning=False, error=False)


def test_a_bad_format_changes_nothing(restored: None) -> None:
    control = LogControl()
    with pytest.raises(InvalidRequest, match="log_format: expected 'default' or 'ISO8601', got 'fancy'"):
        control.update({"log_format": "fancy", "log_verbose_level": 3})
    assert control.state == LogState()


def test_log_file_only_inside_the_allowed_folder(tmp_path: Path, restored: None) -> None:
    with pytest.raises(InvalidRequest, match="log_file: this server does not let clients choose .* --api-file-dir"):
        LogControl().update({"log_file": str(tmp_path / "server.log")})
    control = LogControl(file_dir=tmp_path)
    for outside in ("../server.log", "/etc/cron.d/x", str(tmp_path)):
        with pytest.raises(InvalidRequest, match="log_file"):
            control.update({"log_file": outside})
    state = control.update({"log_file": "server.log", "log_format": "ISO8601", "log_verbose_level": 1})
    assert state.file == str((tmp_path / "server.log").resolve())
    logging.getLogger("v2server.test").debug("a verbose line")
    logging.getLogger("v2server.test").info("an info line")
    control.update({"log_info": False})
    logging.getLogger("v2server.test").info("an info line nobody sees")
    control.update({"log_file": ""})
    logging.getLogger("v2server.test").warning("after the file")
    lines = (tmp_path / "server.log").read_text().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == ["a verbose line", "an info line"]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ DEBUG v2server.test: ", lines[0])
