"""The route table of the REST gateway, with Triton's paths.

A version in the path is any one path segment: the data plane judges it, so ``/versions/v1`` is the same 400
("version 'v1' is not a number") over REST as over gRPC, not a 404 for a route that does not exist.

Each route family gets its ``Dependencies`` here, error style included: ``{"error": ...}`` on V2 and ``/v1``,
``{"detail": ...}`` on ``/predict``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import tornado.web

from v2server.access_log import AccessLog
from v2server.auth import ApiKeys
from v2server.core import InferenceCore
from v2server.jobs import handlers as job_handlers
from v2server.jobs.runner import JobService
from v2server.rest_api import (
    docs_handlers,
    handlers,
    results_handlers,
    settings_handlers,
    shm_handlers,
    simple_handlers,
)
from v2server.rest_api.base import Dependencies
from v2server.rest_api.error_bodies import predict_error_body
from v2server.rest_api.metrics_app import make_metrics_app
from v2server.results import ResultStore

__all__ = ["make_app", "make_metrics_app"]

_MODEL = r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"


def make_app(
    core: InferenceCore,
    max_body_size: int = 0,
    access: AccessLog | None = None,
    keys: ApiKeys | None = None,
    cors_origins: Iterable[str] = (),
    default_model: str = "",
    max_batch_rows: int = 10_000,
    jobs: JobService | None = None,
    max_response_timeout: float = 0.0,
    results: ResultStore | None = None,
    results_base_url: str = "",
) -> tornado.web.Application:
    """A Tornado application that serves the V2 REST API on top of ``core`` (the data plane or a remote core),
    and beside it the simple styles ``/v1/{model}/{selector}`` and ``/predict`` (``default_model`` or the only
    model), whose batches may hold ``max_batch_rows`` rows (``--max-batch-rows``; 0: no limit). With
    ``access``, every request is logged, with what the core reports of its inferences. ``jobs`` serves
    asynchronous ``/v1`` requests and ``/v1/jobs/{id}`` (None: 501, gateway mode); ``max_response_timeout``
    caps a ``/v1`` request's time (``--max-response-timeout-secs``; 0: no cap). ``results`` keeps the answers
    asked for as links (``response_format: "links"``), which start with ``results_base_url`` when the store
    serves them (``--results-base-url``; "": the request's scheme and host)."""
    if access is not None:
        core.observe(access)
    deps = Dependencies(
        core=core,
        max_body_size=max_body_size,
        access=access,
        keys=keys if keys is not None and keys.enabled else None,
        cors_origins=frozenset(cors_origins),
        max_batch_rows=max_batch_rows,
        results=results,
        results_base_url=results_base_url,
    )
    v2 = {"deps": deps}  # the V2 and /v1 routes answer errors as {"error": ...}
    predict = {"deps": dataclasses.replace(deps, error_body=predict_error_body), "default_model": default_model}
    routes: list[Any] = [
        # Tornado tries the routes in order: inference, the busiest, first (no other route ends in /infer)
        (_MODEL + r"/infer", handlers.InferHandler, v2),
        (r"/v2/health/(live|ready)", handlers.HealthHandler, v2),
        (r"/v2/?", handlers.ServerMetadataHandler, v2),
        (r"/v2/repository(?:/(?P<repository>[^/]+))?/index", handlers.RepositoryIndexHandler, v2),
        (
            r"/v2/repository(?:/(?P<repository>[^/]+))?/models/(?P<name>[^/]+)/(?P<action>load|unload)",
            handlers.RepositoryModelHandler,
            v2,
        ),
        (r"/v2/models/stats", handlers.ModelStatisticsHandler, v2),
        *shm_handlers.routes(v2),
        (_MODEL + r"/stats", handlers.ModelStatisticsHandler, v2),
        (_MODEL + r"/ready", handlers.ModelReadyHandler, v2),
        (_MODEL + r"/config", handlers.ModelConfigHandler, v2),
        (r"/v2/trace/setting", settings_handlers.TraceSettingHandler, v2),
        (_MODEL + r"/trace/setting", settings_handlers.TraceSettingHandler, v2),
        (r"/v2/logging", settings_handlers.LoggingHandler, v2),
        # Triton routes of extensions we do not have: 501 naming the extension (docs/protocol.md#extensions)
        (_MODEL + r"/generate(?:_stream)?", settings_handlers.AbsentExtensionHandler, {**v2, "extension": "generate"}),
        (_MODEL, handlers.ModelMetadataHandler, v2),
        (r"/v1/(?P<name>[^/]+)/aliases(?:/(?P<alias>[^/]+))?/?", simple_handlers.AliasesHandler, v2),
        (r"/v1/results/(?P<result_id>[^/]+)/?", results_handlers.ResultHandler, v2),
        (r"/v1/jobs/(?P<job>[^/]+)/?", job_handlers.JobHandler, {**v2, "jobs": jobs}),
        (r"/v1/(?P<name>[^/]+)/(?P<selector>[^/]+)/?", simple_handlers.V1Handler,
         {**v2, "jobs": jobs, "max_timeout": max_response_timeout}),
        (r"/predict/?", simple_handlers.PredictHandler, predict),
        (r"/models/(?P<name>[^/]+)/predict/?", simple_handlers.PredictHandler, predict),
        # the OpenAPI document of this table, and Swagger UI over it (open: docs/security.md)
        (r"/openapi\.json", docs_handlers.OpenApiHandler, v2),
        (r"/docs/?", docs_handlers.DocsHandler, v2),
        (r"/docs/static/(?P<asset>[^/]+)", docs_handlers.DocsAssetHandler, v2),
    ]
    return tornado.web.Application(
        routes,
        default_handler_class=handlers.NotFoundHandler,
        default_handler_args=v2,
        compress_response=False,
    )


