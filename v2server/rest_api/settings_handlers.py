"""REST routes of Triton's trace and logging extensions, and the answer for an extension we do not serve.

- ``GET|POST /v2/trace/setting``, ``GET|POST /v2/models/{m}/trace/setting``: the core's ``TraceSetting``. A POST
  body is ``{"trace_level": ["TIMESTAMPS"], "trace_rate": "100", ...}`` (numbers may also be JSON integers);
  ``null`` clears a setting (a model's falls back to the global one). The answer is Triton's: every value a
  string, ``trace_level`` a list.
- ``GET|POST /v2/logging``: the core's ``LogSettings``; a POST body is ``{"log_verbose_level": 1,
  "log_info": false, "log_format": "ISO8601", ...}``, ``null`` leaving a setting as it is.
- ``AbsentExtensionHandler``: a Triton route whose extension this server does not have (``generate``): 501
  naming it, on every method, rather than 404 for a route Triton's clients know.
"""

from __future__ import annotations

from typing import Any

import orjson

from v2server._proto import grpc_service_pb2 as pb
from v2server.errors import InvalidRequest, Unsupported
from v2server.rest_api.base import Dependencies, V2Handler
from v2server.rest_api.messages import json_body

__all__ = ["AbsentExtensionHandler", "LoggingHandler", "TraceSettingHandler"]

_UINT32_MAX = 2**32 - 1


class TraceSettingHandler(V2Handler):
    """``/v2[/models/{m}[/versions/{v}]]/trace/setting`` (a version is accepted and ignored, as in Triton)."""

    async def get(self, name: str | None = None, version: str | None = None) -> None:
        await self._answer(pb.TraceSettingRequest(model_name=name or ""))

    async def post(self, name: str | None = None, version: str | None = None) -> None:
        await self._answer(_trace_request(name or "", json_body(self.body, "trace setting")))

    async def _answer(self, request: pb.TraceSettingRequest) -> None:
        response = await self.core.TraceSetting(request)
        self.write_json({
            key: list(setting.value) if key == "trace_level" else ",".join(setting.value)
            for key, setting in response.settings.items()
        })


class LoggingHandler(V2Handler):
    """``/v2/logging``."""

    async def get(self) -> None:
        await self._answer(pb.LogSettingsRequest())

    async def post(self) -> None:
        await self._answer(_log_request(json_body(self.body, "log settings")))

    async def _answer(self, request: pb.LogSettingsRequest) -> None:
        response = await self.core.LogSettings(request)
        self.write_json({
            key: getattr(setting, setting.WhichOneof("parameter_choice") or "string_param")
            for key, setting in response.settings.items()
        })


class AbsentExtensionHandler(V2Handler):
    """A route of a Triton extension this server does not implement: 501 naming the extension."""

    def initialize(self, deps: Dependencies, extension: str = "") -> None:  # type: ignore[override]
        super().initialize(deps)
        self._extension = extension

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise Unsupported(
            f"the '{self._extension}' extension is not supported by this server "
            f"({self.request.method} {self.request.path}; GET /v2 lists the extensions it has)"
        )

    async def get(self, *args: Any, **kwargs: Any) -> None:
        self._refuse()

    async def post(self, *args: Any, **kwargs: Any) -> None:
        self._refuse()


def _trace_request(name: str, document: dict[str, Any]) -> pb.TraceSettingRequest:
    """A REST trace setting body as the core's request: each value a string or a list of strings."""
    request = pb.TraceSettingRequest(model_name=name)
    for key, value in document.items():
        entry = request.settings[key]  # with no value: clear the setting
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        if not items:
            raise InvalidRequest(f"{key}: give a value (null clears the setting)")
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise InvalidRequest(f"{key}: expected a string or an integer, got {orjson.dumps(item).decode()[:64]}")
            entry.value.append(str(item))
    return request


def _log_request(document: dict[str, Any]) -> pb.LogSettingsRequest:
    """A REST log settings body as the core's request (the core checks which kind each setting takes)."""
    request = pb.LogSettingsRequest()
    for key, value in document.items():
        entry = request.settings[key]  # with no value: leave the setting as it is
        if value is None:
            continue
        if isinstance(value, bool):
            entry.bool_param = value
        elif isinstance(value, int):
            if not 0 <= value <= _UINT32_MAX:
                raise InvalidRequest(f"{key}: expected an integer in 0..{_UINT32_MAX}, got {value}")
            entry.uint32_param = value
        elif isinstance(value, str):
            entry.string_param = value
        else:
            raise InvalidRequest(f"{key}: expected a boolean, an integer or a string, got {type(value).__name__}")
    return request
