"""JSON Schemas (2020-12, as OpenAPI 3.1 uses them) of the REST bodies the codecs read and write.

One place for every body's shape, read by :mod:`v2server.rest_api.openapi` (``GET /openapi.json``). Where a
codec has a table, the schema takes it from there: the datatypes from :data:`v2server.datatypes.DATATYPES`, the
``/v1`` body fields from :class:`~v2server.rest_api.simple_codec.V1Options` (a unit test checks that each field
is described) and ``response_format``'s values from ``simple_codec.RESPONSE_FORMATS``. The schemas say what a
well-formed body looks like; the codecs stay the judges of values (a shape, a datatype's range), with a 400
that names what is wrong.
"""

from __future__ import annotations

from typing import Any

from v2server.datatypes import DATATYPES
from v2server.rest_api.simple_codec import RESPONSE_FORMATS

__all__ = ["SCHEMAS", "ref"]

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    """A reference to ``#/components/schemas/NAME``."""
    assert name in SCHEMAS, name
    return {"$ref": f"#/components/schemas/{name}"}


_ANY: Schema = {}  # any JSON value
_STRING: Schema = {"type": "string"}
_PARAMETERS: Schema = {
    "type": "object",
    "description": "parameters: names to strings, numbers or booleans",
    "additionalProperties": {"type": ["string", "number", "boolean"]},
}
_SHAPE: Schema = {"type": "array", "items": {"type": "integer"}}
_DATATYPE: Schema = {"type": "string", "enum": list(DATATYPES)}


def _object(required: tuple[str, ...] = (), description: str = "", **properties: Schema) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    return schema


_TENSOR_METADATA = _object(("name", "datatype", "shape"), name=_STRING, datatype=_STRING, shape=_SHAPE)

SCHEMAS: dict[str, Schema] = {
    # -- errors (rest_api/error_bodies.py) --
    "Error": _object(("error",), "V2 and /v1 errors", error=_STRING),
    "Detail": _object(("detail",), "/predict errors ('Inference failed: ...' on a 500)", detail=_STRING),
    # -- health --
    "Live": _object(("live",), live={"type": "boolean"}),
    "Ready": _object(("ready",), ready={"type": "boolean"}),
    # -- metadata (json_codec.message_to_json of the core's messages) --
    "ServerMetadata": _object(
        ("name", "version", "extensions"), name=_STRING, version=_STRING,
        extensions={"type": "array", "items": _STRING},
    ),
    "ModelMetadata": _object(
        ("name",), name=_STRING, versions={"type": "array", "items": _STRING}, platform=_STRING,
        inputs={"type": "array", "items": _TENSOR_METADATA}, outputs={"type": "array", "items": _TENSOR_METADATA},
        parameters=_object(aliases={"type": "object", "additionalProperties": {"type": "integer"}}),
    ),
    "ModelConfig": {"type": "object", "description": "Triton's ModelConfig as JSON (model_config.proto)"},
    "ModelStatistics": _object(("model_stats",), model_stats={"type": "array", "items": {"type": "object"}}),
    # -- V2 inference (json_codec.parse_infer_request, render_infer_response) --
    "Datatype": _DATATYPE,
    "InferenceRequest": _object(
        ("inputs",), "a V2 inference request; Triton's binary extension and raw bodies are described in "
        "docs/protocol.md", id=_STRING, parameters=_PARAMETERS,
        inputs={"type": "array", "items": _object(
            ("name", "shape", "datatype"), name=_STRING, shape=_SHAPE, datatype=_DATATYPE, parameters=_PARAMETERS,
            data=_ANY,
        )},
        outputs={"type": "array", "items": _object(("name",), name=_STRING, parameters=_PARAMETERS)},
    ),
    "InferenceResponse": _object(
        ("model_name", "outputs"), model_name=_STRING, model_version=_STRING, id=_STRING, parameters=_PARAMETERS,
        outputs={"type": "array", "items": _object(
            ("name", "shape", "datatype"), name=_STRING, shape=_SHAPE, datatype=_STRING, parameters=_PARAMETERS,
            data=_ANY,
        )},
    ),
    # -- repository --
    "RepositoryIndexRequest": _object(ready={"type": "boolean"}),
    "RepositoryIndex": {"type": "array", "items": _object(
        ("name",), name=_STRING, version=_STRING, state=_STRING, reason=_STRING,
    )},
    "RepositoryLoadRequest": _object(
        description="load parameters: 'config' (a JSON text of the model's config) and 'file:<version>/<path>' "
        "(base64 file contents)", parameters={"type": "object"},
    ),
    # -- settings, shared memory (Triton's extensions) --
    "Settings": {"type": "object", "description": "trace or log settings: names to values"},
    "SharedMemoryStatus": {"type": "array", "items": {"type": "object"}},
    "SharedMemoryRegister": {"type": "object", "description": "system: {key, offset, byte_size}; CUDA: "
                             "{raw_handle: {b64}, device_id, byte_size}"},
    # -- /v1 (simple_codec.v1_plan, v1_answer; jobs) --
    "V1Request": _object(
        ("data",), "a single request (the model's arguments) or a batch of rows [ID, arg1, ..., argN]; "
        "fields beside 'data' follow Modelbit's names (docs/protocol.md#v1)",
        data=_ANY,
        response_format={"type": "string", "enum": list(RESPONSE_FORMATS),
                         "description": "links: answer {\"data\": URL}, the answer stored until --results-ttl"},
        response_timeout={"type": "number", "exclusiveMinimum": 0,
                          "description": "seconds the request may run; past it 504"},
        response_webhook={"type": "string", "description": "answer 202 with a job; POST the result here"},
        response_webhook_ignore_timeout={"type": "boolean",
                                         "description": "the job is not held to --max-response-timeout-secs"},
    ),
    "V1Answer": _object(
        ("data",), "the result; for a batch [[ID, result], ...] sorted by ID; with response_format 'links' a URL "
        "to this same document", data=_ANY,
    ),
    "V1Job": _object(("job", "status_url"), job=_STRING, status_url=_STRING),
    "Job": _object(
        ("job", "status"), "an asynchronous /v1 job (docs/jobs.md)", job=_STRING,
        status={"type": "string",
                "enum": ["queued", "running", "succeeded", "failed", "delivered", "delivery-failed"]},
        data=_ANY, error=_STRING,
    ),
    "Aliases": {"type": "object", "additionalProperties": {"type": "integer"}, "description": "alias -> version"},
    "AliasVersion": _object(("version",), version={"type": "integer", "minimum": 1}),
    # -- /predict (simple_codec.predict_plan, predict_answer) --
    "PredictRequest": {"type": "object", "description": "input name -> value (one more dimension: a batch)"},
    "PredictAnswer": {"type": "object", "description": "output name -> value (a list of rows for a batch)"},
    # -- GET /openapi.json --
    "OpenApi": _object(("openapi", "info", "paths"), "this document", openapi={"const": "3.1.0"}),
}
