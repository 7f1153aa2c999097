"""What the chart renders, scenario by scenario (``helm/v2server/ci/*-values.yaml``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.k8s._helm import CHART, SCENARIOS, Helm, Manifest, find, one, values_file

PLAIN = ("cpu", "gpu", "autoscaling")
KSERVE = ("kserve-standard", "kserve-knative")
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"
GPU = "nvidia.com/gpu"


def _server_container(manifests: list[Manifest]) -> dict[str, Any]:
    deployment = one(manifests, "Deployment")
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


def _runtime(manifests: list[Manifest]) -> Manifest:
    (runtime,) = find(manifests, "ServingRuntime") + find(manifests, "ClusterServingRuntime")
    return runtime


def _assert_hardened(container: dict[str, Any]) -> None:
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


@pytest.mark.parametrize("scenario", PLAIN)
def test_deployment_ports_probes_and_security(helm: Helm, scenario: str) -> None:
    manifests = helm.render(scenario)
    container = _server_container(manifests)
    assert container["args"][:2] == ["v2server", "--model-repository=/mnt/models"]
    assert {"--http-port=8080", "--grpc-port=8081", "--metrics-port=8002"} <= set(container["args"])
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8080, "grpc": 8081, "metrics": 8002}
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    ready = container["readinessProbe"]
    assert ready.get("httpGet") == {"path": "/v2/health/ready", "port": 8080} or ready.get("grpc") == {"port": 8081}
    _assert_hardened(container)

    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert "emptyDir" in tmp
    service = one(manifests, "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": 8080, "grpc": 8081, "metrics": 8002}


@pytest.mark.parametrize("scenario", PLAIN)
def test_prometheus_annotations(helm: Helm, scenario: str) -> None:
    annotations = one(helm.render(scenario), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8002"
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_gpu_limit_only_when_asked_for(helm: Helm, scenario: str) -> None:
    manifests = helm.render(scenario)
    if scenario not in KSERVE:
        containers = [_server_container(manifests)]
    else:
        (runtime_container,) = _runtime(manifests)["spec"]["containers"]
        containers = [runtime_container, one(manifests, "InferenceService")["spec"]["predictor"]["model"]]
    wants_gpu = scenario in ("gpu", "kserve-standard")
    for container in containers:
        limits = container["resources"].get("limits", {})
        assert (limits.get(GPU) == 1) if wants_gpu else (GPU not in limits), container["resources"]


def test_gpu_count_sets_the_limit(helm: Helm) -> None:
    container = _server_container(helm.render("cpu", sets=["gpu.count=4"]))
    assert container["resources"]["limits"][GPU] == 4
    assert container["resources"]["limits"]["memory"] == "4Gi"


def test_model_repository_from_a_claim_or_an_empty_dir(helm: Helm) -> None:
    claimed = one(helm.render("gpu"), "Deployment")["spec"]["template"]["spec"]
    models = next(v for v in claimed["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"] == {"claimName": "v2server-models", "readOnly": True}
    mount = next(m for m in claimed["containers"][0]["volumeMounts"] if m["name"] == "models")
    assert mount == {"name": "models", "mountPath": "/mnt/models", "readOnly": True, "subPath": "repository"}

    default = one(helm.render(), "Deployment")["spec"]["template"]["spec"]
    assert next(v for v in default["volumes"] if v["name"] == "models") == {"name": "models", "emptyDir": {}}


def test_service_monitor_needs_the_operator_api(helm: Helm) -> None:
    assert not find(helm.render("autoscaling"), "ServiceMonitor")
    monitor = one(helm.render("autoscaling", api_versions=[SERVICE_MONITOR_API]), "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    # Not enabled: not rendered even where the API exists.
    assert not find(helm.render("cpu", api_versions=[SERVICE_MONITOR_API]), "ServiceMonitor")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_hpa_and_pdb_only_in_the_autoscaling_scenario(helm: Helm, scenario: str) -> None:
    manifests = helm.render(scenario)
    expected = 1 if scenario == "autoscaling" else 0
    assert len(find(manifests, "HorizontalPodAutoscaler")) == expected
    assert len(find(manifests, "PodDisruptionBudget")) == expected


def test_autoscaling_objects(helm: Helm) -> None:
    manifests = helm.render("autoscaling")
    hpa = one(manifests, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rel-v2server"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert "replicas" not in one(manifests, "Deployment")["spec"], "the HPA owns the replica count"
    pdb = one(manifests, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert pod["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "rel"


def test_scheduling_knobs(helm: Helm) -> None:
    pod = one(helm.render("gpu"), "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == GPU
    assert pod["priorityClassName"] == "inference-high"
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}}
    rendered = helm.render("cpu", set_json=[f"affinity={json.dumps(affinity)}"])
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    assert pod["affinity"] == affinity


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_standard_labels(helm: Helm, scenario: str) -> None:
    manifests = helm.render(scenario)
    assert manifests, "a scenario that renders nothing would check no label"
    for manifest in manifests:
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "v2server"
        assert labels["app.kubernetes.io/instance"] == "rel"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "v2server-0.1.0"
        assert "app.kubernetes.io/version" in labels


@pytest.mark.parametrize("scenario", [*PLAIN, "kserve-standard"])
def test_helm_test_pod(helm: Helm, scenario: str) -> None:
    (pod,) = find(helm.render(scenario), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = spec["containers"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    url = container["args"][-1]
    assert url.endswith("/v2/health/ready")
    expected = {"kserve-standard": "http://simple-predictor.ns.svc.cluster.local/v2/health/ready"}
    assert url == expected.get(scenario, "http://rel-v2server:8080/v2/health/ready")


def test_no_test_pod_for_a_grpc_only_inference_service(helm: Helm) -> None:
    assert not find(helm.render("kserve-knative"), "Pod")
    assert not find(helm.render(sets=["kserve.enabled=true"]), "Pod"), "no InferenceService, nothing to test"


@pytest.mark.parametrize("scenario", KSERVE)
def test_kserve_mode_renders_no_workload(helm: Helm, scenario: str) -> None:
    kinds = {m["kind"] for m in helm.render(scenario)}
    assert kinds.isdisjoint({"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                             "ServiceAccount", "ServiceMonitor"}), kinds
    assert "InferenceService" in kinds


@pytest.mark.parametrize("scenario", KSERVE)
def test_serving_runtime(helm: Helm, scenario: str) -> None:
    runtime = _runtime(helm.render(scenario))
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    assert {f["name"] for f in spec["supportedModelFormats"]} == {"pytorch", "triton"}
    assert spec["annotations"] == {"prometheus.kserve.io/port": "8002", "prometheus.kserve.io/path": "/metrics"}
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    _assert_hardened(container)
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}} in spec["volumes"]


def test_standard_runtime_serves_a_repository_on_every_port(helm: Helm) -> None:
    runtime = _runtime(helm.render("kserve-standard"))
    assert runtime["kind"] == "ServingRuntime"
    (container,) = runtime["spec"]["containers"]
    assert container["args"][:2] == ["v2server", "--model-repository=/mnt/models"]
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("http1", 8080), ("h2c", 8081), ("metrics", 8002)]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    grpc_first = _runtime(helm.render("kserve-standard", sets=["kserve.protocolVersion=grpc-v2"]))
    assert grpc_first["spec"]["containers"][0]["ports"][0] == {"name": "h2c", "containerPort": 8081, "protocol": "TCP"}


@pytest.mark.parametrize(("protocol", "port"), [("grpc-v2", {"name": "h2c", "containerPort": 8081, "protocol": "TCP"}),
                                                ("v2", {"name": "http1", "containerPort": 8080, "protocol": "TCP"})])
def test_knative_exposes_exactly_one_port(helm: Helm, protocol: str, port: dict[str, Any]) -> None:
    manifests = helm.render("kserve-knative", sets=[f"kserve.protocolVersion={protocol}"])
    (container,) = _runtime(manifests)["spec"]["containers"]
    assert container["ports"] == [port]
    assert "startupProbe" not in container
    for probe in ("livenessProbe", "readinessProbe"):
        if protocol == "v2":
            assert container[probe]["httpGet"]["port"] == port["containerPort"], "Knative probes its one port"
        else:
            assert probe not in container, "gRPC only: Knative's own TCP probe"
    assert one(manifests, "InferenceService")["spec"]["predictor"]["model"]["protocolVersion"] == protocol


def test_knative_runtime_serves_one_model_under_the_service_name(helm: Helm) -> None:
    runtime = _runtime(helm.render("kserve-knative"))
    assert runtime["kind"] == "ClusterServingRuntime"
    assert runtime["metadata"]["name"] == "v2server-grpc"
    args = runtime["spec"]["containers"][0]["args"]
    # Helm must leave KServe's own placeholder alone.
    assert args[:3] == ["v2server", "--model-dir=/mnt/models", "--model-name={{.Name}}"]


@pytest.mark.parametrize(("scenario", "mode", "runtime", "protocol"), [
    ("kserve-standard", "Standard", "rel-v2server", "v2"),
    ("kserve-knative", "Knative", "v2server-grpc", "grpc-v2"),
])
def test_inference_service(helm: Helm, scenario: str, mode: str, runtime: str, protocol: str) -> None:
    isvc = one(helm.render(scenario), "InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == mode
    predictor = isvc["spec"]["predictor"]
    assert predictor["securityContext"]["runAsNonRoot"] is True
    assert predictor["terminationGracePeriodSeconds"] > 30, "longer than the server's drain"
    model = predictor["model"]
    assert model["runtime"] == runtime
    assert model["modelFormat"] == {"name": "pytorch", "version": "1"}
    assert model["protocolVersion"] == protocol
    assert model["storageUri"]


def test_inference_service_needs_a_storage_uri(helm: Helm) -> None:
    result = helm.run(*helm.template_args(sets=["kserve.enabled=true", "kserve.inferenceService.create=true"]))
    assert result.returncode != 0
    assert "storageUri is required" in result.stderr


def test_runtime_alone(helm: Helm) -> None:
    kinds = [m["kind"] for m in helm.render(sets=["kserve.enabled=true"])]
    assert kinds == ["ServingRuntime"]


def test_tritonserver_command(helm: Helm) -> None:
    container = _server_container(helm.render("cpu", sets=["server.command=tritonserver"]))
    assert container["args"][0] == "tritonserver"


def test_extra_args_and_env(helm: Helm) -> None:
    container = _server_container(helm.render("autoscaling", sets=["server.env[0].name=V2SERVER_SERVER_NAME",
                                                                   "server.env[0].value=triton"]))
    assert container["args"][-2:] == ["--log-requests", "--log-format=json"]
    assert container["env"] == [{"name": "V2SERVER_SERVER_NAME", "value": "triton"}]


@pytest.mark.parametrize(("scenario", "notes"), [
    ("cpu", ["the model repository on PVC \"v2server-models\"", "rel-v2server.ns.svc:8081", "helm test rel"]),
    ("gpu", ["rel-v2server.ns.svc:8080", "helm test rel"]),
    ("autoscaling", ["no ServiceMonitor was created"]),
    ("kserve-standard", ['ServingRuntime "rel-v2server"', 'InferenceService "simple" (Standard mode, v2)', "helm test"]),
    ("kserve-knative", ['ClusterServingRuntime "v2server-grpc"', 'InferenceService "mlp" (Knative mode, grpc-v2)']),
])
def test_install_notes(helm: Helm, scenario: str, notes: list[str]) -> None:
    result = helm.run("install", "rel", CHART, "--dry-run=client", "--namespace", "ns", "--values", values_file(scenario))
    assert result.returncode == 0, result.stderr
    text = result.stdout.partition("\nNOTES:\n")[2]
    for note in notes:
        assert note in text, text
