"""The metrics listener's application: ``GET /metrics``, behind the API keys when asked.

A module of its own, importing no model code, so that the ``--workers`` supervisor (which loads no model and
no torch) serves its summed metrics with the very handler a single server uses.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import orjson
import tornado.web

from v2server.auth import ApiKeys
from v2server.errors import Unauthenticated

__all__ = ["make_metrics_app"]

#: what a scrape renders: the body and its Content-Type, at once or awaited
Render = Callable[[], tuple[bytes, str] | Awaitable[tuple[bytes, str]]]


class _MetricsHandler(tornado.web.RequestHandler):
    """``GET /metrics``: Prometheus text, computed from the statistics at scrape time; behind the API keys
    when ``--metrics-api-key-required``."""

    def initialize(self, render: Render, keys: ApiKeys | None) -> None:
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

    async def get(self) -> None:
        rendered = self._render()
        body, content_type = await rendered if inspect.isawaitable(rendered) else rendered
        self.set_header("Content-Type", content_type)
        self.finish(body)


def make_metrics_app(render: Render, keys: ApiKeys | None = None) -> tornado.web.Application:
    """The metrics listener's application (Triton serves ``/metrics`` on its own port, 8002); ``keys``:
    scrapes need one of them."""
    keys = keys if keys is not None and keys.enabled else None
    return tornado.web.Application([(r"/metrics", _MetricsHandler, {"render": render, "keys": keys})])
