"""Every rendered object against its schema: Kubernetes' own (kubernetes-validate) and KServe's CRDs.

Each validator also gets a broken object, so a validator that accepts anything cannot pass for a good chart.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest

from tests.k8s import _crd
from tests.k8s._helm import CHART, SCENARIOS, Helm, Manifest, is_kserve, one, values_file

# The chart's kubeVersion floor and the newest Kubernetes kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"


def _all_objects(helm: Helm, scenario: str) -> list[Manifest]:
    return helm.render(scenario, api_versions=[SERVICE_MONITOR_API])


def _is_core(manifest: Manifest) -> bool:
    """Built into Kubernetes: the core group ("v1") or a group without a dot or under k8s.io."""
    group = manifest["apiVersion"].rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def test_every_ci_values_file_is_a_scenario() -> None:
    """A new ci/*-values.yaml joins SCENARIOS, so the validators and lint below run on it too."""
    files = {path.name.removesuffix("-values.yaml") for path in (CHART / "ci").glob("*-values.yaml")}
    assert files == set(SCENARIOS)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_core_objects_are_valid_kubernetes(helm: Helm, scenario: str, version: str) -> None:
    core = [m for m in _all_objects(helm, scenario) if _is_core(m)]
    # Exactly: a gRPC-only InferenceService renders no core object (not even a test Pod); every other scenario does.
    assert bool(core) == (scenario != "kserve-knative"), [m["kind"] for m in core]
    for manifest in core:
        kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_object_is_checked(helm: Helm, scenario: str) -> None:
    """Nothing escapes both validators: only the Prometheus Operator's ServiceMonitor is left to its own test."""
    manifests = _all_objects(helm, scenario)
    assert manifests, "a scenario that renders nothing would escape every check"
    for manifest in manifests:
        checked = _is_core(manifest) or is_kserve(manifest) or manifest["kind"] == "ServiceMonitor"
        assert checked, manifest["apiVersion"]


@pytest.mark.parametrize("scenario", ["kserve-standard", "kserve-knative"])
def test_kserve_objects_match_their_crds(helm: Helm, crds: Path, scenario: str) -> None:
    kserve = [m for m in helm.render(scenario) if is_kserve(m)]
    assert {m["kind"] for m in kserve} >= {"InferenceService"}
    for manifest in kserve:
        _crd.validate(manifest)


@pytest.mark.parametrize(("sets", "runtime"), [
    (["kserve.protocolVersion=v2"], "ClusterServingRuntime"),
    (["kserve.deploymentMode=Standard", "kserve.protocolVersion=grpc-v2"], "ClusterServingRuntime"),
    (["kserve.runtime.kind=ServingRuntime", "gpu.count=2"], "ServingRuntime"),
    (["probes.readiness.type=grpc", "kserve.deploymentMode=Standard"], "ClusterServingRuntime"),
])
def test_kserve_variants_match_their_crds(helm: Helm, crds: Path, sets: list[str], runtime: str) -> None:
    kserve = [m for m in helm.render("kserve-knative", sets=sets) if is_kserve(m)]
    assert sorted(m["kind"] for m in kserve) == sorted([runtime, "InferenceService"])
    for manifest in kserve:
        _crd.validate(manifest)


def _deployment(helm: Helm) -> Manifest:
    return one(helm.render("cpu"), "Deployment")


def test_kubernetes_validate_rejects_an_unknown_field(helm: Helm) -> None:
    broken = _deployment(helm)
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolcy"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_kubernetes_validate_rejects_a_wrong_type(helm: Helm) -> None:
    broken = _deployment(helm)
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def _isvc(helm: Helm) -> Manifest:
    return one(helm.render("kserve-standard"), "InferenceService")


@pytest.mark.parametrize(("path", "value", "message"), [
    (("spec", "predictor", "model", "storageURI"), "s3://typo", "storageURI"),
    (("spec", "predictor", "minReplicas"), "one", "'one' is not of type 'integer'"),
    (("spec", "predictor", "model", "modelFormat"), {"version": "1"}, "'name' is a required property"),
    (("metadata", "labels", "tier"), 3, "3 is not of type 'string'"),
    (("metadata", "name"), "Not_A_Name", "does not match"),
    (("spec", "predictor", "tolerations"), [{"key": "a", "operator": "Exists", "bogus": 1}], "bogus"),
])
def test_crd_validation_rejects_broken_inference_services(
    helm: Helm, crds: Path, path: tuple[str, ...], value: object, message: str
) -> None:
    broken = _isvc(helm)
    node = broken
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError, match=message):
        _crd.validate(broken)


def test_crd_validation_rejects_a_broken_runtime(helm: Helm, crds: Path) -> None:
    runtime = one(helm.render("kserve-standard"), "ServingRuntime")
    broken = copy.deepcopy(runtime)
    broken["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    with pytest.raises(jsonschema.ValidationError, match="'8080' is not of type 'integer'"):
        _crd.validate(broken)
    broken = copy.deepcopy(runtime)
    broken["spec"]["supportedModelFormats"][0]["priority"] = 0
    with pytest.raises(jsonschema.ValidationError, match="less than the minimum"):
        _crd.validate(broken)
    broken = copy.deepcopy(runtime)
    broken["kind"] = "ClusterServingRuntime"
    with pytest.raises(jsonschema.ValidationError, match="'ClusterServingRuntime' is not one of"):
        _crd.validator("ServingRuntime", "serving.kserve.io/v1alpha1").validate(broken)


def test_crd_schema_keeps_int_or_string() -> None:
    """Quantities are int-or-string in CRDs: both forms pass, other types do not."""
    schema = _crd.strict({"type": "object", "properties": {"q": {"x-kubernetes-int-or-string": True,
                                                                  "anyOf": [{"type": "integer"}, {"type": "string"}]}}})
    check = jsonschema.Draft4Validator(schema)
    assert check.is_valid({"q": 1}) and check.is_valid({"q": "1Gi"})
    assert not check.is_valid({"q": 1.5}) and not check.is_valid({"q": "x", "other": 1})


# -- helm lint and values.schema.json


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_strict(helm: Helm, scenario: str) -> None:
    result = helm.run("lint", "--strict", CHART, "--values", values_file(scenario))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_helm_lint_fails_on_a_broken_chart(helm: Helm, tmp_path: Path) -> None:
    chart = tmp_path / "v2server"
    shutil.copytree(CHART, chart)
    service = chart / "templates" / "service.yaml"
    service.write_text(service.read_text().replace("{{- end }}\n", "", 1))
    result = helm.run("lint", "--strict", chart)
    assert result.returncode != 0
    assert "service.yaml" in result.stdout + result.stderr


def test_helm_lint_fails_on_bad_defaults(helm: Helm, tmp_path: Path) -> None:
    chart = tmp_path / "v2server"
    shutil.copytree(CHART, chart)
    values = chart / "values.yaml"
    values.write_text(values.read_text().replace("  http: 8080", "  http: web"))
    result = helm.run("lint", "--strict", chart)
    assert result.returncode != 0
    assert "ports" in result.stdout + result.stderr


@pytest.mark.parametrize(("sets", "message"), [
    (["gpu.count=-1"], "gpu"),
    (["ports.http=web"], "ports"),
    (["ports.grpc=70000"], "ports"),
    (["replicaCount=two"], "replicaCount"),
    (["unknownKey=1"], "unknownKey"),
    (["server.modelControlMode=lazy"], "modelControlMode"),
    (["server.env[0].name=V2SERVER_LOG_REQUESTS", "server.env[0].value=true"], "value"),
    (["kserve.deploymentMode=Serverless"], "deploymentMode"),
    (["kserve.protocolVersion=v1"], "protocolVersion"),
    (["kserve.runtime.kind=Deployment"], "kind"),
    (["probes.readiness.type=exec"], "type"),
    (["image.pullPolicy=Sometimes"], "pullPolicy"),
])
def test_schema_rejects_bad_values(helm: Helm, sets: list[str], message: str) -> None:
    result = helm.run(*helm.template_args("cpu", sets=sets))
    assert result.returncode != 0, f"--set {sets} rendered"
    assert "schema" in result.stderr and message in result.stderr, result.stderr


@pytest.mark.parametrize(("sets", "message"), [
    (["server.exitTimeoutSeconds=60"], "must be below terminationGracePeriodSeconds"),
    (["autoscaling.enabled=true", "autoscaling.minReplicas=5", "autoscaling.maxReplicas=2"], "maxReplicas"),
])
def test_template_rejects_inconsistent_values(helm: Helm, sets: list[str], message: str) -> None:
    result = helm.run(*helm.template_args("cpu", sets=sets))
    assert result.returncode != 0
    assert message in result.stderr
