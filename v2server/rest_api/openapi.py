"""The OpenAPI 3.1 document of the REST gateway, generated from its route table (``GET /openapi.json``).

Every rule of the Tornado application becomes one or more paths: a regex's named groups become path
parameters (``(?P<name>[^/]+)`` -> ``{name}``; a group of literal alternatives, ``load|unload``, an ``enum``),
optional parts and unnamed alternatives become separate paths, and a trailing ``/?`` is dropped. Each HTTP
method the handler class defines becomes an operation; which methods and bodies a handler takes is read from
:data:`OPERATIONS` (the bodies' schemas from :mod:`v2server.rest_api.schemas`), and a handler with no entry
there (a route added later) still gets an operation from its docstring, with any JSON in and out. Whether an
operation needs the API key is the handler's own ``needs_key``. So a route cannot be left out of the document,
and ``tests/integration/test_openapi.py`` validates the document and runs schemathesis against a real server.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import Any

import tornado.routing
import tornado.web

import v2server
from v2server.rest_api.schemas import SCHEMAS, ref

__all__ = ["COMMON_ERRORS", "OPERATIONS", "Operation", "Query", "document", "group_end", "methods", "path_templates"]

#: every error an operation of the gateway may answer, besides those it names (mapped once in write_error)
COMMON_ERRORS = (400, 401, 404, 413, 500, 501, 503, 504)


@dataclasses.dataclass(frozen=True, slots=True)
class Query:
    """A query parameter."""

    name: str
    schema: dict[str, Any]
    description: str
    required: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Operation:
    """What the route table does not say about one (handler, method).

    Attributes:
        summary: one line.
        tag: the group it is listed under.
        request: the JSON body's schema name (None: no body).
        request_required: the body may not be empty.
        answers: status -> schema name of the JSON answer (None: no body).
        media: status -> media types of an answer that is not (only) JSON.
        errors: the error body's schema (``Error``: ``{"error"}``; ``Detail``: ``{"detail"}``).
        extra_errors: statuses beside ``COMMON_ERRORS``.
        query: query parameters.
    """

    summary: str
    tag: str
    request: str | None = None
    request_required: bool = True
    answers: tuple[tuple[int, str | None], ...] = ((200, None),)
    media: tuple[tuple[int, tuple[str, ...]], ...] = ()
    errors: str = "Error"
    extra_errors: tuple[int, ...] = ()
    query: tuple[Query, ...] = ()
    description: str = ""


_TIMEOUT = Query("timeout", {"type": "number", "exclusiveMinimum": 0},
                 "seconds the request may take; past it 504 and its queued work is dropped")
_BATCH = Query("batch", {"type": "string", "enum": ["true", "false"]},
               "read 'data' as a batch (true) or a single request (false); absent: the model's inputs decide")

#: (handler class name, HTTP method) -> what the route table does not say
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("HealthHandler", "GET"): Operation(
        "Server liveness or readiness (200, or 400 when not)", "health", answers=((200, "Live|Ready"),)),
    ("ModelReadyHandler", "GET"): Operation(
        "Model readiness (200, or 400 when not ready or unknown)", "health", answers=((200, "Ready"),)),
    ("ServerMetadataHandler", "GET"): Operation("Server metadata and extensions", "V2", answers=((200, "ServerMetadata"),)),
    ("ModelMetadataHandler", "GET"): Operation("Model metadata", "V2", answers=((200, "ModelMetadata"),)),
    ("ModelConfigHandler", "GET"): Operation("Model configuration (Triton's)", "V2", answers=((200, "ModelConfig"),)),
    ("ModelStatisticsHandler", "GET"): Operation("Inference statistics", "V2", answers=((200, "ModelStatistics"),)),
    ("InferHandler", "POST"): Operation(
        "Inference (JSON; Triton's binary extension and compression: docs/protocol.md)", "V2",
        request="InferenceRequest", answers=((200, "InferenceResponse"),),
        media=((200, ("application/json", "application/octet-stream")),)),
    ("RepositoryIndexHandler", "POST"): Operation(
        "The models of the repository and their states", "repository", request="RepositoryIndexRequest",
        request_required=False, answers=((200, "RepositoryIndex"),)),
    ("RepositoryModelHandler", "POST"): Operation(
        "Load or unload a model (explicit model control)", "repository", request="RepositoryLoadRequest",
        request_required=False, answers=((200, None),)),
    ("TraceSettingHandler", "GET"): Operation("Trace settings", "V2", answers=((200, "Settings"),)),
    ("TraceSettingHandler", "POST"): Operation(
        "Change trace settings", "V2", request="Settings", request_required=False, answers=((200, "Settings"),)),
    ("LoggingHandler", "GET"): Operation("Log settings", "V2", answers=((200, "Settings"),)),
    ("LoggingHandler", "POST"): Operation(
        "Change log settings", "V2", request="Settings", request_required=False, answers=((200, "Settings"),)),
    ("SystemSharedMemoryHandler", "GET"): Operation(
        "System shared-memory regions", "shared memory", answers=((200, "SharedMemoryStatus"),)),
    ("SystemSharedMemoryHandler", "POST"): Operation(
        "Register or unregister a system shared-memory region", "shared memory", request="SharedMemoryRegister",
        request_required=False, answers=((200, None),)),
    ("CudaSharedMemoryHandler", "GET"): Operation(
        "CUDA shared-memory regions", "shared memory", answers=((200, "SharedMemoryStatus"),)),
    ("CudaSharedMemoryHandler", "POST"): Operation(
        "Register or unregister a CUDA shared-memory region", "shared memory", request="SharedMemoryRegister",
        request_required=False, answers=((200, None),)),
    ("AbsentExtensionHandler", "GET"): Operation("An extension this server does not have: 501", "V2"),
    ("AbsentExtensionHandler", "POST"): Operation("An extension this server does not have: 501", "V2"),
    ("V1Handler", "POST"): Operation(
        "Inference, Modelbit style: a single request or a batch; links; asynchronous jobs", "v1",
        request="V1Request", answers=((200, "V1Answer"), (202, "V1Job")), query=(_TIMEOUT, _BATCH)),
    ("AliasesHandler", "GET"): Operation("Version aliases", "v1", answers=((200, "Aliases"),)),
    ("AliasesHandler", "PUT"): Operation(
        "Set or move an alias", "v1", request="AliasVersion", answers=((200, "Aliases"),)),
    ("AliasesHandler", "DELETE"): Operation("Remove an alias", "v1", answers=((200, "Aliases"),)),
    ("JobHandler", "GET"): Operation("An asynchronous job's state and result", "v1", answers=((200, "Job"),)),
    ("ResultHandler", "GET"): Operation(
        "A stored answer (response_format 'links'); the signed link is the credential", "v1",
        answers=((200, "V1Answer"),), extra_errors=(403, 410), query=(
            Query("expires", {"type": "string", "pattern": "^[0-9]+$"}, "when the link expires (Unix time)", True),
            Query("sig", {"type": "string"}, "HMAC-SHA256 of the id and expiry, hex", True),
        )),
    ("PredictHandler", "POST"): Operation(
        "Inference by input names (the default model, or the named one)", "predict", request="PredictRequest",
        answers=((200, "PredictAnswer"),), errors="Detail", query=(_TIMEOUT,)),
    ("OpenApiHandler", "GET"): Operation("This document", "docs", answers=((200, "OpenApi"),)),
    ("DocsHandler", "GET"): Operation("Swagger UI over this document", "docs", media=((200, ("text/html",)),)),
    ("DocsAssetHandler", "GET"): Operation(
        "Swagger UI's files (from the swagger-ui-py package, served here)", "docs",
        media=((200, ("text/css", "application/javascript", "image/png")),)),
}

#: handlers whose methods follow the route (its arguments, the path) rather than the class alone: the shared-
#: memory actions (status GET, register and unregister POST) and the alias collection (GET; PUT and DELETE
#: name an alias, else 405)
_METHODS_BY_ROUTE: dict[str, Callable[[dict[str, Any], str, list[str]], list[str]]] = {
    "SystemSharedMemoryHandler": lambda kwargs, path, own: ["GET" if kwargs.get("action") == "status" else "POST"],
    "CudaSharedMemoryHandler": lambda kwargs, path, own: ["GET" if kwargs.get("action") == "status" else "POST"],
    "AliasesHandler": lambda kwargs, path, own: own if path.endswith("}") else ["GET"],
}


# -- route regexes -> path templates ------------------------------------------------------------------------


def group_end(pattern: str, start: int) -> int:
    """Index of the ``)`` closing the regex group that opens at ``start`` (route patterns -> templates)."""
    depth, i, in_class = 0, start, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unbalanced group in route pattern {pattern!r}")


def path_templates(pattern: str) -> tuple[list[str], dict[str, str]]:
    """The OpenAPI paths a route regex describes, and each path parameter's own regex.

    Understands what route tables use: literals, ``\\x``, named groups, ``(?:...)`` and ``(...)`` groups,
    ``|`` and ``?``; a trailing ``/?`` and ``$`` are dropped. Anything else raises ``ValueError``.
    """
    parameters: dict[str, str] = {}

    def sequence(i: int, end: int) -> list[str]:
        alternatives: list[str] = []
        current = [""]
        while i < end:
            char = pattern[i]
            if char == "|":
                alternatives += current
                current, i = [""], i + 1
                continue
            if char == "(":
                close = group_end(pattern, i)
                if pattern.startswith("(?P<", i):
                    name_end = pattern.index(">", i)
                    name = pattern[i + 4:name_end]
                    parameters[name] = pattern[name_end + 1:close]
                    atom = ["{" + name + "}"]
                elif pattern.startswith("(?:", i):
                    atom = sequence(i + 3, close)
                else:
                    atom = sequence(i + 1, close)
                i = close + 1
            elif char == "\\":
                atom, i = [pattern[i + 1]], i + 2
            elif char == "$" and i == len(pattern) - 1:
                atom, i = [""], i + 1
            elif char in "[]{}.*+^$?":
                raise ValueError(f"route pattern {pattern!r}: cannot describe {char!r} at {i}")
            else:
                atom, i = [char], i + 1
            if i < end and pattern[i] == "?":
                atom, i = ["", *atom], i + 1
            current = [head + tail for head in current for tail in atom]
        return alternatives + current

    paths = list(dict.fromkeys(sequence(0, len(pattern))))
    kept = [path for path in paths if not (path.endswith("/") and path != "/" and path[:-1] in paths)]
    return kept, parameters


def _parameter_schema(regex: str) -> dict[str, Any]:
    if re.fullmatch(r"\w+(\|\w+)*", regex):
        return {"type": "string", "enum": regex.split("|")}
    return {"type": "string", "minLength": 1, "pattern": f"^(?:{regex})$"}


# -- the document ------------------------------------------------------------------------------------------


def methods(handler: type[tornado.web.RequestHandler], kwargs: dict[str, Any], path: str) -> list[str]:
    """The methods ``path`` of a rule serves: those its handler class (or its own bases, above Tornado's)
    defines, CORS preflight aside, unless :data:`_METHODS_BY_ROUTE` narrows them."""
    bases = [cls for cls in handler.__mro__
             if issubclass(cls, tornado.web.RequestHandler) and cls is not tornado.web.RequestHandler]
    own = [m for m in tornado.web.RequestHandler.SUPPORTED_METHODS
           if m != "OPTIONS" and any(m.lower() in cls.__dict__ for cls in bases)]
    by_route = _METHODS_BY_ROUTE.get(handler.__name__)
    return by_route(kwargs, path, own) if by_route is not None else own


def _fallback(handler: type[tornado.web.RequestHandler], method: str) -> Operation:
    """An operation for a handler :data:`OPERATIONS` does not describe: its docstring, any JSON."""
    summary = (handler.__doc__ or handler.__name__).strip().splitlines()[0]
    body = "Any" if method in ("POST", "PUT", "PATCH") else None
    return Operation(summary, "other", request=body, request_required=False, answers=((200, "Any"),))


def _json(schema_name: str | None) -> dict[str, Any]:
    if schema_name is None:
        return {}
    if "|" in schema_name:
        return {"anyOf": [_json(part) for part in schema_name.split("|")]}
    return {} if schema_name == "Any" else ref(schema_name)


def _operation(rule_handler: type[tornado.web.RequestHandler], method: str, template: str,
               parameters: dict[str, str]) -> dict[str, Any]:
    spec = OPERATIONS.get((rule_handler.__name__, method)) or _fallback(rule_handler, method)
    open_route = not getattr(rule_handler, "needs_key", True)
    names = re.findall(r"{(\w+)}", template)
    operation: dict[str, Any] = {
        "tags": [spec.tag],
        "summary": spec.summary,
        "operationId": f"{method.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', template).strip('_') or 'root'}",
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": _parameter_schema(parameters[name])}
            for name in names
        ] + [
            {"name": q.name, "in": "query", "required": q.required, "schema": q.schema, "description": q.description}
            for q in spec.query
        ],
        "responses": {},
    }
    if spec.description:
        operation["description"] = spec.description
    if spec.request is not None:
        operation["requestBody"] = {
            "required": spec.request_required,
            "content": {"application/json": {"schema": _json(spec.request)}},
        }
    media = dict(spec.media)
    for status, schema_name in spec.answers:
        answer: dict[str, Any] = {"description": "OK" if status < 300 else "Accepted"}
        types = media.get(status, ("application/json",) if schema_name is not None else ())
        if types:
            answer["content"] = {
                kind: ({"schema": _json(schema_name)} if kind == "application/json" and schema_name else {})
                for kind in types
            }
        operation["responses"][str(status)] = answer
    for status, types in media.items():
        if str(status) not in operation["responses"]:
            operation["responses"][str(status)] = {"description": "OK", "content": {kind: {} for kind in types}}
    errors = sorted(set(COMMON_ERRORS + spec.extra_errors) - ({401} if open_route else set()))
    for status in errors:
        operation["responses"].setdefault(str(status), {"$ref": f"#/components/responses/{spec.errors}{status}"})
    if rule_handler.__name__ in ("HealthHandler", "ModelReadyHandler"):
        # Triton answers "not live/ready" with 400 and KServe's body
        status_schema = {"anyOf": [_json(n) for n in spec.answers[0][1].split("|")] + [ref("Error")]}  # type: ignore[union-attr]
        operation["responses"]["400"] = {
            "description": "not live or not ready, or a bad request",
            "content": {"application/json": {"schema": status_schema}},
        }
    operation["security"] = [] if open_route else [{"apiKey": []}, {}]
    return operation


def _rules(app: tornado.web.Application) -> Iterator[tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]]:
    for rule in app.wildcard_router.rules:
        target, matcher = rule.target, rule.matcher
        if isinstance(target, type) and issubclass(target, tornado.web.RequestHandler) and isinstance(
            matcher, tornado.routing.PathMatches
        ):
            yield matcher.regex.pattern, target, dict(rule.target_kwargs or {})


def document(app: tornado.web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s routes (first match wins, as in Tornado's router)."""
    paths: dict[str, dict[str, Any]] = {}
    for pattern, handler, kwargs in _rules(app):
        templates, parameters = path_templates(pattern)
        for template in templates:
            item = paths.setdefault(template, {})
            for method in methods(handler, kwargs, template):
                item.setdefault(method.lower(), _operation(handler, method, template, parameters))
    statuses = sorted({int(status) for item in paths.values() for op in item.values()
                       for status, answer in op["responses"].items() if "$ref" in answer})
    responses = {
        f"{body}{status}": {
            "description": _STATUS_TEXT.get(status, "error"),
            "content": {"application/json": {"schema": ref(body)}},
        }
        for body in ("Error", "Detail") for status in statuses
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "v2server",
            "version": v2server.__version__,
            "description": "KServe V2 / Open Inference Protocol over REST with Triton's paths and extensions, and "
            "the simple styles /v1 and /predict. gRPC and /metrics (its own port) are not described here.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": responses,
            "securitySchemes": {"apiKey": {
                "type": "http", "scheme": "bearer",
                "description": "an API key (--api-key), when the server requires keys",
            }},
        },
    }


_STATUS_TEXT = {
    400: "bad request: the message names what is wrong",
    401: "a missing or wrong API key",
    403: "the link's signature does not match",
    404: "unknown model, version, alias, job, answer or route",
    410: "the link expired; its answer has been removed",
    413: "the body, or a batch's rows, over a limit",
    500: "the model or the server failed",
    501: "not supported here (gateway mode, an absent extension)",
    503: "not ready, or a queue or store is full",
    504: "the request's timeout passed",
}
