"""The KServe YAML in docs/kubernetes.md is what the chart renders, so copying it from the docs deploys the same thing.

(The YAML lived in the README until the README was cut down; the README links to docs/kubernetes.md.)
"""

from __future__ import annotations

import re

import yaml

from tests.k8s._helm import ROOT, Helm, is_kserve

DOCUMENT = ROOT / "docs" / "kubernetes.md"


def _kserve_section() -> str:
    text = DOCUMENT.read_text()
    start = text.index("\n## KServe\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_kubernetes_doc_yaml_is_what_the_chart_renders(helm: Helm) -> None:
    section = _kserve_section()
    blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    documented = [doc for block in blocks for doc in yaml.safe_load_all(block) if doc]
    assert {d["kind"] for d in documented} == {"ServingRuntime", "InferenceService"}
    # The command the doc gives: ci/kserve-standard-values.yaml, release v2server, the registry's image.
    assert "-f helm/v2server/ci/kserve-standard-values.yaml" in section
    rendered = helm.render("kserve-standard", sets=["image.repository=registry.example.com/v2server"],
                           release="v2server")
    kserve = [m for m in rendered if is_kserve(m)]
    for manifest in kserve:
        manifest["metadata"].pop("labels")
    key = lambda m: (m["kind"], m["metadata"]["name"])  # noqa: E731
    assert sorted(documented, key=key) == sorted(kserve, key=key)


def test_readme_points_to_the_kubernetes_doc() -> None:
    """The README keeps no copy of the YAML (a second copy would go stale) and links to the one that is checked."""
    readme = (ROOT / "README.md").read_text()
    assert "docs/kubernetes.md" in readme
    assert "```yaml" not in readme
