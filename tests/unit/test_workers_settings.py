"""``--workers``: a count or ``auto`` (the CPUs this process may use); refused where it cannot work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from v2server.cli import parse_settings
from v2server.workers import WorkerIdentity, is_worker

REPO = ["--model-repository", "/models"]


def test_one_process_by_default() -> None:
    assert parse_settings(REPO).workers == 1


@pytest.mark.parametrize(("argv", "env", "count"), [
    (["--workers", "3"], {}, 3),
    (["--workers=2"], {"V2SERVER_WORKERS": "5"}, 2),  # the command line wins
    ([], {"V2SERVER_WORKERS": "4"}, 4),
    (["--workers", "auto"], {}, len(os.sched_getaffinity(0))),
    (["--workers", "AUTO"], {}, len(os.sched_getaffinity(0))),
])
def test_counts(argv: list[str], env: dict[str, str], count: int) -> None:
    assert parse_settings([*REPO, *argv], env).workers == count


@pytest.mark.parametrize("value", ["0", "-1", "two", ""])
def test_a_count_must_be_positive(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings([*REPO, "--workers", value], {})
    assert "--workers must be a positive number or auto" in capsys.readouterr().err


def test_gateway_mode_refuses_workers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings(["gateway", "--grpc-target", "core:8001", "--workers", "2"], {})
    assert "--workers is for the core" in capsys.readouterr().err


def test_a_worker_knows_itself_from_its_environment(tmp_path: Path) -> None:
    assert WorkerIdentity.from_environ({}) is None and not is_worker({})
    identity = WorkerIdentity(1, 3, tmp_path)
    assert WorkerIdentity.from_environ(identity.environ()) == identity
    assert identity.others == (0, 2)
    assert identity.socket(2).name == "worker-2.sock"
