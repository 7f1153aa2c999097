"""Fixtures for the chart tests: Helm (skip without it) and the KServe CRDs (skip without them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.k8s import _crd
from tests.k8s._helm import Helm, find_helm


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = find_helm()
    if binary is None:
        pytest.skip("no helm: run `make tools` (fetches .tools/helm) or put helm on PATH")
    return Helm(binary, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def crds() -> Path:
    path = _crd.crd_dir()
    if not path.is_dir():
        pytest.skip(f"KServe CRDs not found at {path} (set V2SERVER_K8S_CRDS to the folder holding {_crd.KSERVE_VERSION}/)")
    return path
