"""Run the Helm binary that ``make tools`` fetches, and cache what ``helm template`` renders."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "v2server"
SCENARIOS = ("cpu", "gpu", "autoscaling", "tls", "kserve-standard", "kserve-knative")

Manifest = dict[str, Any]


def find_helm() -> str | None:
    """``.tools/helm`` first (pinned by the Makefile), then whatever ``helm`` is on PATH."""
    local = ROOT / ".tools" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("helm")


def values_file(scenario: str) -> Path:
    return CHART / "ci" / f"{scenario}-values.yaml"


class Helm:
    """One Helm binary with its own (empty) home, so tests neither read nor write the user's Helm config."""

    def __init__(self, binary: str, home: Path) -> None:
        self.binary = binary
        self._env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        self._renders: dict[tuple[str, ...], list[Manifest]] = {}

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *map(str, args)], env=self._env, capture_output=True, text=True, timeout=60, check=False
        )

    def template_args(
        self,
        scenario: str | None = None,
        sets: Sequence[str] = (),
        api_versions: Sequence[str] = (),
        set_json: Sequence[str] = (),
        release: str = "rel",
    ) -> list[str]:
        args = ["template", release, str(CHART), "--namespace", "ns"]
        if scenario is not None:
            args += ["--values", str(values_file(scenario))]
        for item in sets:
            args += ["--set", item]
        for item in set_json:
            args += ["--set-json", item]
        for api in api_versions:
            args += ["--api-versions", api]
        return args

    def render(
        self,
        scenario: str | None = None,
        sets: Sequence[str] = (),
        api_versions: Sequence[str] = (),
        set_json: Sequence[str] = (),
        release: str = "rel",
    ) -> list[Manifest]:
        """The chart's objects for a scenario (rendered once per run; each caller gets its own copy)."""
        args = self.template_args(scenario, sets, api_versions, set_json, release)
        key = tuple(args)
        if key not in self._renders:
            result = self.run(*args)
            if result.returncode != 0:
                raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
            self._renders[key] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        return copy.deepcopy(self._renders[key])


def find(manifests: Sequence[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: Sequence[Manifest], kind: str) -> Manifest:
    found = find(manifests, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}: {[m['kind'] for m in manifests]}"
    return found[0]


def is_kserve(manifest: Manifest) -> bool:
    return str(manifest["apiVersion"]).startswith("serving.kserve.io/")
