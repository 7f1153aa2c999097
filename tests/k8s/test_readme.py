"""The README's KServe YAML is what the chart renders, so copying it from the README deploys the same thing."""

from __future__ import annotations

import re

import yaml

from tests.k8s._helm import ROOT, Helm, is_kserve


def _kubernetes_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Kubernetes\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else len(readme)]


def test_readme_yaml_is_what_the_chart_renders(helm: Helm) -> None:
    section = _kubernetes_section()
    blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    documented = [doc for block in blocks for doc in yaml.safe_load_all(block) if doc]
    assert {d["kind"] for d in documented} == {"ServingRuntime", "InferenceService"}
    # The command the README gives: ci/kserve-standard-values.yaml, release v2server, the registry's image.
    assert "-f helm/v2server/ci/kserve-standard-values.yaml" in section
    rendered = helm.render("kserve-standard", sets=["image.repository=registry.example.com/v2server"],
                           release="v2server")
    kserve = [m for m in rendered if is_kserve(m)]
    for manifest in kserve:
        manifest["metadata"].pop("labels")
    key = lambda m: (m["kind"], m["metadata"]["name"])  # noqa: E731
    assert sorted(documented, key=key) == sorted(kserve, key=key)
