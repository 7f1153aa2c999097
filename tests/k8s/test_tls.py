"""TLS (the ``tls`` values, ``ci/tls-values.yaml``): the Secret's volume, the server's flags, HTTPS probes, the
`helm test` pod, and the combinations the kubelet cannot probe, which the chart refuses to render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.k8s import _crd
from tests.k8s._helm import CHART, SCENARIOS, Helm, Manifest, find, is_kserve, one, values_file
from tests.k8s.test_validation import KUBERNETES_VERSIONS, SERVICE_MONITOR_API

TLS_DIR = "/etc/v2server/tls"
SECRET = "v2server-tls"  # ci/tls-values.yaml
HTTP_FLAGS = [f"--http-ssl-cert={TLS_DIR}/tls.crt", f"--http-ssl-key={TLS_DIR}/tls.key"]
GRPC_FLAGS = ["--grpc-use-ssl=true", f"--grpc-server-cert={TLS_DIR}/tls.crt", f"--grpc-server-key={TLS_DIR}/tls.key"]
HTTP_MUTUAL = [f"--http-ssl-client-ca={TLS_DIR}/ca.crt"]
GRPC_MUTUAL = ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={TLS_DIR}/ca.crt"]
TLS_FLAG_PREFIXES = ("--http-ssl-", "--grpc-use-ssl", "--grpc-server-", "--grpc-root-cert")
MOUNT = {"name": "tls", "mountPath": TLS_DIR, "readOnly": True}
# Mutual TLS on REST: the kubelet has no client certificate, so no httpGet probe.
MUTUAL = ["tls.mutual=true", "probes.startup.type=tcp", "probes.liveness.type=tcp", "probes.readiness.enabled=false"]
# kserve-standard with TLS on.
KSERVE_TLS = ["tls.enabled=true", f"tls.secretName={SECRET}"]
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def _volume(*keys: str) -> dict[str, Any]:
    return {"name": "tls", "secret": {"secretName": SECRET, "items": [{"key": k, "path": k} for k in keys]}}


def _pod(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = one(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def _runtime_spec(manifests: list[Manifest]) -> dict[str, Any]:
    (runtime,) = find(manifests, "ServingRuntime") + find(manifests, "ClusterServingRuntime")
    spec: dict[str, Any] = runtime["spec"]
    return spec


def _tls_flags(container: dict[str, Any]) -> list[str]:
    return [arg for arg in container["args"] if arg.startswith(TLS_FLAG_PREFIXES)]


def _test_pod(manifests: list[Manifest]) -> dict[str, Any]:
    (pod,) = find(manifests, "Pod")
    spec: dict[str, Any] = pod["spec"]
    return spec


def _fails(helm: Helm, *args: str, scenario: str | None = "tls", sets: list[str] | None = None) -> str:
    result = helm.run(*helm.template_args(scenario, sets=sets or []), *args)
    assert result.returncode != 0, f"--set {sets} rendered"
    return result.stderr


# -- the ci/tls-values.yaml scenario: a Deployment with TLS on REST and gRPC


def test_secret_is_mounted_read_only(helm: Helm) -> None:
    pod = _pod(helm.render("tls"))
    assert _volume("tls.crt", "tls.key") in pod["volumes"]
    (container,) = pod["containers"]
    assert MOUNT in container["volumeMounts"]
    assert {m["name"] for m in container["volumeMounts"]} == {"models", "tmp", "tls"}


def test_flags_point_at_the_mounted_files(helm: Helm) -> None:
    pod = _pod(helm.render("tls", sets=["server.extraArgs={--log-requests}"]))
    (container,) = pod["containers"]
    flags = _tls_flags(container)
    assert flags == HTTP_FLAGS + GRPC_FLAGS
    mounted = {f"{TLS_DIR}/{item['path']}" for v in pod["volumes"] if v["name"] == "tls" for item in v["secret"]["items"]}
    paths = {flag.partition("=")[2] for flag in flags if "/" in flag}
    assert paths == mounted == {f"{TLS_DIR}/tls.crt", f"{TLS_DIR}/tls.key"}
    assert container["args"][-1] == "--log-requests", "extraArgs stay last, so they can override"


def test_probes_use_https(helm: Helm) -> None:
    (container,) = _pod(helm.render("tls"))["containers"]
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080, "scheme": "HTTPS"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080, "scheme": "HTTPS"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080, "scheme": "HTTPS"}


def test_grpc_service_port_is_not_h2c(helm: Helm) -> None:
    ports = {p["name"]: p for p in one(helm.render("tls"), "Service")["spec"]["ports"]}
    assert "appProtocol" not in ports["grpc"], "gRPC over TLS is not cleartext HTTP/2"
    ports = {p["name"]: p for p in one(helm.render("tls", sets=["tls.grpc=false"]), "Service")["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"


def test_metrics_are_scraped_over_https(helm: Helm) -> None:
    """The server gives the metrics port REST's HTTPS settings: the scrapers must follow."""
    manifests = helm.render("tls", sets=["metrics.serviceMonitor.enabled=true"], api_versions=[SERVICE_MONITOR_API])
    annotations = one(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scheme"] == "https"
    (endpoint,) = one(manifests, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {"insecureSkipVerify": True}
    # Mutual TLS: the ServiceMonitor presents the Secret's certificate.
    manifests = helm.render("tls", sets=[*MUTUAL, "metrics.serviceMonitor.enabled=true"],
                            api_versions=[SERVICE_MONITOR_API])
    (endpoint,) = one(manifests, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["tlsConfig"] == {"insecureSkipVerify": True,
                                     "cert": {"secret": {"name": SECRET, "key": "tls.crt"}},
                                     "keySecret": {"name": SECRET, "key": "tls.key"}}
    # gRPC-only TLS leaves metrics plaintext.
    manifests = helm.render("tls", sets=["tls.http=false", "metrics.serviceMonitor.enabled=true"],
                            api_versions=[SERVICE_MONITOR_API])
    assert "prometheus.io/scheme" not in one(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    (endpoint,) = one(manifests, "ServiceMonitor")["spec"]["endpoints"]
    assert "scheme" not in endpoint and "tlsConfig" not in endpoint


def test_helm_test_pod_curls_https(helm: Helm) -> None:
    spec = _test_pod(helm.render("tls"))
    (container,) = spec["containers"]
    assert container["args"][-2:] == ["--insecure", "https://rel-v2server:8080/v2/health/ready"]
    assert "volumes" not in spec and "volumeMounts" not in container, "no client certificate without mutual TLS"


def test_install_notes(helm: Helm) -> None:
    result = helm.run("install", "rel", CHART, "--dry-run=client", "--namespace", "ns", "--values", values_file("tls"))
    assert result.returncode == 0, result.stderr
    text = result.stdout.partition("\nNOTES:\n")[2]
    assert f'TLS on REST, metrics and gRPC, with the certificate in Secret "{SECRET}"' in text
    assert "curl -sf --insecure https://localhost:8080/v2/health/ready" in text
    result = helm.run("install", "rel", CHART, "--dry-run=client", "--namespace", "ns", "--values", values_file("tls"),
                      *(arg for item in MUTUAL for arg in ("--set", item)))
    assert result.returncode == 0, result.stderr
    text = result.stdout.partition("\nNOTES:\n")[2]
    assert "Mutual TLS: clients, Prometheus included, must present a certificate signed by" in text
    assert "curl -sf --insecure --cert CLIENT.crt --key CLIENT.key https://localhost:8080/" in text


# -- transports and mutual TLS


@pytest.mark.parametrize(("sets", "flags", "https", "http_probes"), [
    (["tls.grpc=false"], HTTP_FLAGS, True, PROBES),
    (["tls.http=false"], GRPC_FLAGS, False, PROBES),
    (["tls.mutual=true", "tls.http=false"], GRPC_FLAGS + GRPC_MUTUAL, False, PROBES),
    # Mutual TLS on REST: the kubelet cannot present a certificate, so no probe is an httpGet one.
    (MUTUAL, HTTP_FLAGS + HTTP_MUTUAL + GRPC_FLAGS + GRPC_MUTUAL, True, ()),
    ([*MUTUAL, "tls.grpc=false", "probes.readiness.enabled=true", "probes.readiness.type=grpc"],
     HTTP_FLAGS + HTTP_MUTUAL, True, ()),
])
def test_transports(
    helm: Helm, sets: list[str], flags: list[str], https: bool, http_probes: tuple[str, ...]
) -> None:
    manifests = helm.render("tls", sets=sets)
    pod = _pod(manifests)
    (container,) = pod["containers"]
    assert _tls_flags(container) == flags
    mutual = "tls.mutual=true" in sets
    assert _volume("tls.crt", "tls.key", *(["ca.crt"] if mutual else [])) in pod["volumes"]
    # Exactly the expected httpGet probes, so the scheme check below cannot pass by finding none.
    assert tuple(probe for probe in PROBES if "httpGet" in container.get(probe, {})) == http_probes
    for probe in http_probes:
        assert container[probe]["httpGet"].get("scheme") == ("HTTPS" if https else None), probe
    url = _test_pod(manifests)["containers"][0]["args"][-1]
    assert url.startswith("https://" if https else "http://")


def test_mutual_tls_probes_and_test_pod(helm: Helm) -> None:
    manifests = helm.render("tls", sets=MUTUAL)
    (container,) = _pod(manifests)["containers"]
    assert container["startupProbe"]["tcpSocket"] == {"port": 8080}
    assert container["livenessProbe"]["tcpSocket"] == {"port": 8080}
    assert "readinessProbe" not in container
    # The test pod presents the mounted certificate as its client certificate.
    spec = _test_pod(manifests)
    (curl,) = spec["containers"]
    args = curl["args"]
    assert args[args.index("--cert") + 1] == f"{TLS_DIR}/tls.crt"
    assert args[args.index("--key") + 1] == f"{TLS_DIR}/tls.key"
    assert "--insecure" in args and args[-1] == "https://rel-v2server:8080/v2/health/ready"
    assert curl["volumeMounts"] == [MOUNT]
    assert spec["volumes"] == [_volume("tls.crt", "tls.key", "ca.crt")]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("sets", [MUTUAL, ["tls.grpc=false"], ["tls.http=false", "tls.mutual=true"]])
def test_variants_are_valid_kubernetes(helm: Helm, sets: list[str], version: str) -> None:
    manifests = helm.render("tls", sets=sets)
    assert sorted(m["kind"] for m in manifests) == ["Deployment", "Pod", "Service", "ServiceAccount"]
    for manifest in manifests:
        kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "tls"])
def test_off_by_default(helm: Helm, scenario: str) -> None:
    manifests = helm.render(scenario)
    assert manifests, "a scenario that renders nothing would show no TLS setting"
    for manifest in manifests:
        text = str(manifest)
        for needle in ("/etc/v2server/tls", "HTTPS", "https://", "ssl", "--insecure"):
            assert needle not in text, (manifest["kind"], needle)


# -- what the schema and the templates refuse


@pytest.mark.parametrize(("sets", "message"), [
    (["tls.secretName="], "secretName"),
    (["tls.secretName=Not_A_Name"], "secretName"),
    (["tls.http=false", "tls.grpc=false"], "/tls"),
    (["tls.cert=server.crt"], "cert"),
    (["tls.mutual=yes"], "mutual"),
    (["probes.readiness.type=exec"], "type"),
])
def test_schema_rejects_bad_tls_values(helm: Helm, sets: list[str], message: str) -> None:
    stderr = _fails(helm, sets=sets)
    assert "schema" in stderr and message in stderr, stderr


def test_enabled_without_a_secret_fails_even_without_the_schema(helm: Helm) -> None:
    for scenario, sets in [("tls", ["tls.secretName="]), (None, ["kserve.enabled=true", "tls.enabled=true"])]:
        stderr = _fails(helm, "--skip-schema-validation", scenario=scenario, sets=sets)
        assert "tls.secretName is required when tls.enabled" in stderr, stderr


@pytest.mark.parametrize(("scenario", "sets", "message"), [
    ("tls", ["probes.readiness.type=grpc"], "probes.readiness.type is grpc, but tls.grpc is on"),
    ("gpu", KSERVE_TLS, "the kubelet's grpc probe cannot speak TLS"),
    ("tls", ["tls.mutual=true"], "probes.startup is an httpGet probe, but tls.mutual"),
    ("tls", [*MUTUAL, "probes.readiness.enabled=true"], "probes.readiness is an httpGet probe"),
    ("kserve-standard", ["tls.mutual=true", *KSERVE_TLS], "the kubelet cannot present"),
    ("kserve-knative", KSERVE_TLS, "tls.grpc cannot be on with kserve.deploymentMode=Knative"),
    ("kserve-knative", [*KSERVE_TLS, "kserve.protocolVersion=v2", "tls.grpc=false"], "queue-proxy"),
])
def test_template_rejects_what_cannot_work(helm: Helm, scenario: str, sets: list[str], message: str) -> None:
    assert message in _fails(helm, scenario=scenario, sets=sets)


# -- KServe: the ServingRuntime renders the same flags, volume and probes


def test_kserve_standard_runtime(helm: Helm, crds: Path) -> None:
    manifests = helm.render("kserve-standard", sets=KSERVE_TLS)
    spec = _runtime_spec(manifests)
    (container,) = spec["containers"]
    assert container["args"][:2] == ["v2server", "--model-repository=/mnt/models"]
    assert _tls_flags(container) == HTTP_FLAGS + GRPC_FLAGS
    assert MOUNT in container["volumeMounts"]
    assert _volume("tls.crt", "tls.key") in spec["volumes"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080, "scheme": "HTTPS"}
    assert spec["annotations"]["prometheus.io/scheme"] == "https", "KServe copies it onto the pods"
    # KServe's predictor Service listens on 80: named, since https:// alone would mean 443.
    (curl,) = _test_pod(manifests)["containers"]
    assert curl["args"][-1] == "https://simple-predictor.ns.svc.cluster.local:80/v2/health/ready"
    assert sorted(m["kind"] for m in manifests) == ["InferenceService", "Pod", "ServingRuntime"]
    for manifest in manifests:
        if is_kserve(manifest):
            _crd.validate(manifest)
        else:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize(("sets", "runtime"), [
    ([*KSERVE_TLS, "tls.mutual=true", "probes.startup.enabled=false", "probes.liveness.type=tcp",
      "probes.readiness.type=tcp"], "ServingRuntime"),
    ([*KSERVE_TLS, "kserve.runtime.singleModel=true", "kserve.runtime.kind=ClusterServingRuntime"],
     "ClusterServingRuntime"),
])
def test_kserve_standard_variants_match_their_crds(helm: Helm, crds: Path, sets: list[str], runtime: str) -> None:
    manifests = helm.render("kserve-standard", sets=sets)
    assert _tls_flags(_runtime_spec(manifests)["containers"][0])
    kserve = [m for m in manifests if is_kserve(m)]
    assert sorted(m["kind"] for m in kserve) == sorted([runtime, "InferenceService"])
    for manifest in kserve:
        _crd.validate(manifest)


@pytest.mark.parametrize(("protocol", "sets", "flags", "http_probes"), [
    ("grpc-v2", ["tls.grpc=false"], HTTP_FLAGS, ()),  # gRPC only: Knative's own TCP probe, none of ours
    ("v2", ["tls.http=false"], GRPC_FLAGS, ("livenessProbe", "readinessProbe")),
])
def test_knative_allows_tls_on_the_port_it_does_not_route(
    helm: Helm, crds: Path, protocol: str, sets: list[str], flags: list[str], http_probes: tuple[str, ...]
) -> None:
    manifests = helm.render("kserve-knative", sets=[*KSERVE_TLS, f"kserve.protocolVersion={protocol}", *sets])
    spec = _runtime_spec(manifests)
    (container,) = spec["containers"]
    assert _tls_flags(container) == flags
    assert MOUNT in container["volumeMounts"] and _volume("tls.crt", "tls.key") in spec["volumes"]
    assert tuple(probe for probe in PROBES if probe in container) == http_probes
    for probe in http_probes:
        assert container[probe]["httpGet"].get("scheme") is None, "Knative's port stays plaintext"
    kserve = [m for m in manifests if is_kserve(m)]
    assert sorted(m["kind"] for m in kserve) == ["ClusterServingRuntime", "InferenceService"]
    for manifest in kserve:
        _crd.validate(manifest)
