"""``state`` values: ``--state-dir`` on a volume of its own, so aliases and async jobs never need a writable model
repository (the chart mounts the repository read-only by default)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.k8s._helm import Helm, Manifest, find, one
from tests.k8s.test_validation import KUBERNETES_VERSIONS

STATE_DIR = "/var/lib/v2server"
MOUNT = {"name": "state", "mountPath": STATE_DIR}


def _pod(manifests: list[Manifest]) -> dict[str, Any]:
    (workload,) = find(manifests, "Deployment") + find(manifests, "ServingRuntime") + find(
        manifests, "ClusterServingRuntime"
    )
    spec: dict[str, Any] = workload["spec"]
    return spec["template"]["spec"] if workload["kind"] == "Deployment" else spec


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = pod["containers"][0]
    return container


@pytest.mark.parametrize("scenario", ["cpu", "kserve-standard", "kserve-knative"])
def test_off_by_default(helm: Helm, scenario: str) -> None:
    pod = _pod(helm.render(scenario))
    assert not [a for a in _container(pod)["args"] if a.startswith("--state-dir")]
    assert "state" not in {volume["name"] for volume in pod["volumes"]}


@pytest.mark.parametrize("scenario", ["cpu", "kserve-standard", "kserve-knative"])
def test_an_empty_dir_by_default(helm: Helm, scenario: str) -> None:
    pod = _pod(helm.render(scenario, sets=["state.enabled=true", "state.sizeLimit=2Gi"]))
    assert f"--state-dir={STATE_DIR}" in _container(pod)["args"]
    assert MOUNT in _container(pod)["volumeMounts"]
    assert {"name": "state", "emptyDir": {"sizeLimit": "2Gi"}} in pod["volumes"]


@pytest.mark.parametrize("scenario", ["cpu", "kserve-standard"])
def test_a_claim_keeps_jobs_across_restarts(helm: Helm, scenario: str) -> None:
    manifests = helm.render(scenario, sets=["state.enabled=true", "state.existingClaim=v2server-state"])
    pod = _pod(manifests)
    assert {"name": "state", "persistentVolumeClaim": {"claimName": "v2server-state"}} in pod["volumes"]
    assert MOUNT in _container(pod)["volumeMounts"]
    if scenario == "cpu":  # the model repository stays read-only beside it
        deployment = one(manifests, "Deployment")
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(deployment, version, strict=True)


def test_knative_refuses_a_claim(helm: Helm) -> None:
    result = helm.run(*helm.template_args(
        "kserve-knative", sets=["state.enabled=true", "state.existingClaim=v2server-state"]
    ))
    assert result.returncode != 0 and "podspec-persistent-volume-claim" in result.stderr


def test_the_schema_refuses_unknown_keys(helm: Helm) -> None:
    result = helm.run(*helm.template_args("cpu", sets=["state.path=/data"]))
    assert result.returncode != 0 and "state" in result.stderr
