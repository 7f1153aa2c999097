"""``GET /openapi.json`` (the route table as OpenAPI 3.1) and ``GET /docs`` (Swagger UI over it).

Both are open without an API key: the document lists route templates and body shapes, which this project
publishes anyway, and nothing of the models served (docs/security.md). Swagger UI's files come from the
``swagger-ui-py`` package and are served here (``/docs/static/{file}``, only the files the page uses), so the
page loads no script from another host. The document is built once per application.
"""

from __future__ import annotations

import asyncio
import importlib.util
import weakref
from pathlib import Path

import orjson
import tornado.web

from v2server.errors import NotFound, Unsupported
from v2server.rest_api import openapi
from v2server.rest_api.base import V2Handler

__all__ = ["ASSETS", "DocsAssetHandler", "DocsHandler", "OpenApiHandler"]

#: the files of swagger-ui-py's ``static`` folder the page uses, with their media types
ASSETS = {
    "swagger-ui.css": "text/css",
    "index.css": "text/css",
    "swagger-ui-bundle.js": "application/javascript",
    "swagger-ui-standalone-preset.js": "application/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}

_PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>v2server API</title>
  <link rel="stylesheet" href="/docs/static/swagger-ui.css">
  <link rel="stylesheet" href="/docs/static/index.css">
  <link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/static/swagger-ui-bundle.js"></script>
  <script src="/docs/static/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "/openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout",
    });
  </script>
</body>
</html>
"""

_documents: weakref.WeakKeyDictionary[tornado.web.Application, bytes] = weakref.WeakKeyDictionary()
_assets: dict[str, bytes] = {}


def _static_folder() -> Path | None:
    """swagger-ui-py's ``static`` folder, found without importing the package (it imports web frameworks)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "static"


class OpenApiHandler(V2Handler):
    """``GET /openapi.json``: the OpenAPI 3.1 document of every REST route."""

    needs_key = False

    def get(self) -> None:
        text = _documents.get(self.application)
        if text is None:
            text = _documents[self.application] = orjson.dumps(openapi.document(self.application))
        self.write_json_text(text)


class DocsHandler(V2Handler):
    """``GET /docs``: Swagger UI over ``/openapi.json``, its files served by this server."""

    needs_key = False

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(_PAGE)


class DocsAssetHandler(V2Handler):
    """``GET /docs/static/{file}``: one of Swagger UI's files (``ASSETS``); any other name is 404."""

    needs_key = False

    async def get(self, asset: str) -> None:
        if asset not in ASSETS:
            raise NotFound(f"no file '{asset}' under /docs/static")
        content = _assets.get(asset)
        if content is None:
            folder = _static_folder()
            if folder is None:
                raise Unsupported("GET /docs needs the swagger-ui-py package (a dependency of v2server)")
            # a name from ASSETS, never the client's; read once, off the loop (the bundle is about 1.5 MB)
            content = _assets[asset] = await asyncio.to_thread((folder / asset).read_bytes)
        self.set_header("Content-Type", ASSETS[asset])
        self.set_header("Cache-Control", "public, max-age=86400")
        self.finish(content)
