"""The route table of the REST gateway, with Triton's paths (a version in the path is digits only)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson
import tornado.web

from v2server.access_log import AccessLog
from v2server.auth import ApiKeys
from v2server.errors import Unauthenticated
from v2server.rest_api import handlers, simple_handlers

__all__ = ["make_app", "make_metrics_app"]

_MODEL = r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[0-9]+))?"


def make_app(
    core: Any,
    max_body_size: int = 0,
    access: AccessLog | None = None,
    keys: ApiKeys | None = None,
    cors_origins: Iterable[str] = (),
    default_model: str = "",
) -> tornado.web.Application:
    """A Tornado application that serves the V2 REST API on top of ``core`` (a DataPlane or a grpc.aio stub),
    and beside it the simple styles ``/v1/{model}/{selector}`` and ``/predict`` (``default_model`` or the only
    model)."""
    deps = {
        "core": core,
        "max_body_size": max_body_size,
        "access": access,
        "keys": keys if keys is not None and keys.enabled else None,
        "cors_origins": frozenset(cors_origins),
    }
    routes: list[Any] = [
        (r"/v2/health/(live|ready)", handlers.HealthHandler, deps),
        (r"/v2/?", handlers.ServerMetadataHandler, deps),
        (r"/v2/repository(?:/(?P<repository>[^/]+))?/index", handlers.RepositoryIndexHandler, deps),
        (
            r"/v2/repository(?:/(?P<repository>[^/]+))?/models/(?P<name>[^/]+)/(?P<action>load|unload)",
            handlers.RepositoryModelHandler,
            deps,
        ),
        (r"/v2/models/stats", handlers.ModelStatisticsHandler, deps),
        (_MODEL + r"/stats", handlers.ModelStatisticsHandler, deps),
        (_MODEL + r"/ready", handlers.ModelReadyHandler, deps),
        (_MODEL + r"/config", handlers.ModelConfigHandler, deps),
        (_MODEL + r"/infer", handlers.InferHandler, deps),
        (_MODEL, simple_handlers.ModelMetadataHandler, deps),
        (r"/v1/(?P<name>[^/]+)/aliases(?:/(?P<alias>[^/]+))?/?", simple_handlers.AliasesHandler, deps),
        (r"/v1/(?P<name>[^/]+)/(?P<selector>[^/]+)/?", simple_handlers.V1Handler, deps),
        (r"/predict/?", simple_handlers.PredictHandler, {**deps, "default_model": default_model}),
        (r"/models/(?P<name>[^/]+)/predict/?", simple_handlers.PredictHandler, {**deps, "default_model": default_model}),
    ]
    return tornado.web.Application(
        routes,
        default_handler_class=handlers.NotFoundHandler,
        default_handler_args=deps,
        compress_response=False,
    )


class _MetricsHandler(tornado.web.RequestHandler):
    """``GET /metrics``: Prometheus text, computed from the statistics at scrape time; behind the API keys
    when ``--metrics-api-key-required``."""

    def initialize(self, render: Callable[[], tuple[bytes, str]], keys: ApiKeys | None) -> None:
        self._render = render
        self._keys = keys

    def prepare(self) -> None:
        if self._keys is not None:
            try:
                self._keys.check(self.request.headers.get("Authorization"))
            except Unauthenticated as exc:
                self.set_status(401)
                self.set_header("Content-Type", "application/json")
                self.finish(orjson.dumps({"error": exc.message}))

    def get(self) -> None:
        body, content_type = self._render()
        self.set_header("Content-Type", content_type)
        self.finish(body)


def make_metrics_app(
    render: Callable[[], tuple[bytes, str]], keys: ApiKeys | None = None
) -> tornado.web.Application:
    """The metrics listener's application (Triton serves ``/metrics`` on its own port, 8002); ``keys``:
    scrapes need one of them."""
    keys = keys if keys is not None and keys.enabled else None
    return tornado.web.Application([(r"/metrics", _MetricsHandler, {"render": render, "keys": keys})])
