"""Validate KServe objects against their CustomResourceDefinition's ``openAPIV3Schema``, strictly.

No API server runs here, so this does what one would: pick the served version's schema and reject wrong types.
It is stricter than a server that prunes unknown fields silently: an unknown field is an error (a misspelt
field would otherwise vanish on apply), which matches ``kubectl apply --validate=strict``.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.k8s._helm import ROOT

KSERVE_VERSION = "kserve-v0.20.0"
_CRD_FILES = {
    "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
    "ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml",
    "InferenceService": "serving.kserve.io_inferenceservices.yaml",
}
# DNS-1123 subdomain: what metadata.name must be for these kinds.
_NAME = {"type": "string", "maxLength": 253, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {"name": _NAME, "namespace": _NAME, "labels": _STRING_MAP, "annotations": _STRING_MAP},
}


# libyaml parses the 39,000-line InferenceService CRD in about a second; pure Python takes 20.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def crd_dir() -> Path:
    """``$V2SERVER_K8S_CRDS``, or ``shared/k8s-crds`` beside the repository (where the workspace keeps it)."""
    base = Path(os.environ.get("V2SERVER_K8S_CRDS", ROOT.parent / "shared" / "k8s-crds"))
    return base / KSERVE_VERSION


def strict(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema that rejects unknown fields and understands int-or-string."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: strict(sub) for name, sub in out["properties"].items()}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    if "items" in out:
        out["items"] = strict(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [strict(sub) for sub in out[key]]
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def validator(kind: str, api_version: str) -> jsonschema.protocols.Validator:
    """The strict validator for one kind at one ``group/version``, from the CRD that defines it."""
    path = crd_dir() / _CRD_FILES[kind]
    crd = yaml.load(path.read_text(), Loader=_LOADER)
    group = crd["spec"]["group"]
    assert crd["spec"]["names"]["kind"] == kind, path
    for version in crd["spec"]["versions"]:
        if f"{group}/{version['name']}" == api_version and version.get("served", False):
            schema = strict(version["schema"]["openAPIV3Schema"])
            break
    else:
        raise LookupError(f"{path.name} serves no {api_version}")
    schema["properties"]["apiVersion"] = {"enum": [api_version]}
    schema["properties"]["kind"] = {"enum": [kind]}
    schema["properties"]["metadata"] = _METADATA
    schema["required"] = sorted({*schema.get("required", ()), "apiVersion", "kind", "metadata", "spec"})
    schema["additionalProperties"] = False
    # CRD schemas are OpenAPI v3, whose keywords (boolean exclusiveMinimum, ...) are draft 4's.
    return jsonschema.Draft4Validator(schema)


def validate(manifest: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` (the most relevant one) if the CRD would refuse ``manifest``."""
    check = validator(manifest["kind"], manifest["apiVersion"])
    error = jsonschema.exceptions.best_match(check.iter_errors(manifest))
    if error is not None:
        raise error
