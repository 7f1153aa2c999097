"""Triton's --trace-config and --log-* flags: parsed once at start, refused at start when wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from v2server.cli import parse_settings
from v2server.settings import TraceConfig

REPO = ["--model-repository", str(Path(__file__).parent)]


def test_defaults_are_tritons() -> None:
    settings = parse_settings(REPO, {})
    assert settings.trace == TraceConfig(mode="triton", level=(), rate=1000, count=-1, file="", log_frequency=0)
    assert (settings.log_info, settings.log_warning, settings.log_error, settings.log_file) == (True, True, True, None)
    assert settings.api_file_dir is None


def test_tritons_trace_config_flags() -> None:
    args = ["--trace-config", "triton,file=/tmp/trace.json", "--trace-config", "triton,log-frequency=50",
            "--trace-config", "rate=100", "--trace-config", "level=TIMESTAMPS", "--trace-config", "level=TENSORS",
            "--trace-config", "count=100"]
    assert parse_settings([*REPO, *args], {}).trace == TraceConfig(
        level=("TIMESTAMPS", "TENSORS"), rate=100, count=100, file="/tmp/trace.json", log_frequency=50
    )


def test_opentelemetry_mode_from_the_environment() -> None:
    environ = {"V2SERVER_TRACE_CONFIG": "mode=opentelemetry;opentelemetry,url=http://collector:4318/v1/traces;"
               "opentelemetry,resource=service.name=v2;level=TIMESTAMPS;level=OFF;level=TIMESTAMPS"}
    trace = parse_settings(REPO, environ).trace
    assert trace == TraceConfig(mode="opentelemetry", level=("TIMESTAMPS",), url="http://collector:4318/v1/traces",
                                resource=(("service.name", "v2"),))


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("rate", "--trace-config rate: expected [MODE,]SETTING=VALUE"),
        ("rate=0", "--trace-config rate=0: rate must be an integer >= 1"),
        ("count=many", "--trace-config count=many: count must be an integer >= -1"),
        ("level=LOUD", "level must be OFF, TIMESTAMPS or TENSORS"),
        ("mode=jaeger", "mode must be triton or opentelemetry"),
        ("zipkin,url=x", "unknown trace mode 'zipkin'"),
        ("triton,url=x", "unknown setting 'url' (file, log-frequency)"),
        ("opentelemetry,resource=novalue", "resource must be KEY=VALUE"),
        ("level=TIMESTAMPS", "in triton mode needs --trace-config triton,file=PATH"),
    ],
)
def test_bad_trace_config_stops_the_start(item: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse_settings([*REPO, "--trace-config", item], {})
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_log_flags_are_settings_now() -> None:
    settings = parse_settings([*REPO, "--log-info=false", "--log-warning", "false", "--log-error=0",
                               "--log-file", "/var/log/v2.log", "--api-file-dir", "/srv/out"], {})
    assert (settings.log_info, settings.log_warning, settings.log_error) == (False, False, False)
    assert settings.log_file == Path("/var/log/v2.log") and settings.api_file_dir == Path("/srv/out")
