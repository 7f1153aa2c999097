"""Triton's shared-memory routes: ``/v2/systemsharedmemory`` and ``/v2/cudasharedmemory``.

``GET  .../[region/{name}/]status``, ``POST .../region/{name}/register`` and
``POST .../[region/{name}/]unregister`` (without a name: every region of that kind). Each becomes the gRPC
request of the same name and awaits the core, so both transports share every rule and message. Bodies are
small (a register body is a key or a 64-byte handle), so they are parsed on the loop. Unregister bodies are
empty (tritonclient sends ``""``); status answers are Triton's JSON lists, with numbers as numbers.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson
import tornado.web

from v2server._proto import grpc_service_pb2 as pb
from v2server.errors import InvalidRequest
from v2server.rest_api.base import Dependencies, V2Handler

__all__ = ["CudaSharedMemoryHandler", "SystemSharedMemoryHandler", "routes"]

_REGION = r"/region/(?P<name>[^/]+)"


def routes(deps: dict[str, Any]) -> list[tuple[str, type[V2Handler], dict[str, Any]]]:
    """The route table's rules for both kinds: one per action (``deps``: the V2 routes' handler arguments)."""
    rules: list[tuple[str, type[V2Handler], dict[str, Any]]] = []
    for prefix, handler in (("systemsharedmemory", SystemSharedMemoryHandler),
                            ("cudasharedmemory", CudaSharedMemoryHandler)):
        optional = f"(?:{_REGION})?"
        for action, region in (("status", optional), ("register", _REGION), ("unregister", optional)):
            rules.append((f"/v2/{prefix}{region}/{action}", handler, {**deps, "action": action}))
    return rules


class _SharedMemoryHandler(V2Handler):
    """Status on GET; register and unregister on POST (another method for an action is 405)."""

    kind = ""

    def initialize(self, deps: Dependencies, action: str = "status") -> None:  # type: ignore[override]
        super().initialize(deps)
        self.action = action

    async def get(self, name: str | None = None) -> None:
        if self.action != "status":
            raise tornado.web.HTTPError(405, "%s needs POST", self.action)
        self.write_json(await self._status(name or ""))

    async def post(self, name: str | None = None) -> None:
        if self.action == "status":
            raise tornado.web.HTTPError(405, "status needs GET")
        if self.action == "register":
            await self._register(name or "", _body_object(self.body, f"{self.kind} shared memory register"))
        else:
            await self._unregister(name or "")
        self.set_header("Content-Type", "application/json")
        self.finish()

    async def _status(self, name: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def _register(self, name: str, body: dict[str, Any]) -> None:
        raise NotImplementedError

    async def _unregister(self, name: str) -> None:
        raise NotImplementedError


class SystemSharedMemoryHandler(_SharedMemoryHandler):
    """Register body: ``{"key": str, "offset": int, "byte_size": int}`` (offset optional, default 0)."""

    kind = "system"

    async def _status(self, name: str) -> list[dict[str, Any]]:
        response = await self.core.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name=name))
        return [
            {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
            for r in response.regions.values()
        ]

    async def _register(self, name: str, body: dict[str, Any]) -> None:
        key = body.get("key")
        if not isinstance(key, str):
            raise InvalidRequest("system shared memory register: 'key' must be a string")
        request = pb.SystemSharedMemoryRegisterRequest(
            name=name, key=key, offset=_count(body, "offset", 0), byte_size=_count(body, "byte_size")
        )
        await self.core.SystemSharedMemoryRegister(request)

    async def _unregister(self, name: str) -> None:
        await self.core.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name=name))


class CudaSharedMemoryHandler(_SharedMemoryHandler):
    """Register body: ``{"raw_handle": {"b64": str}, "device_id": int, "byte_size": int}``."""

    kind = "CUDA"

    async def _status(self, name: str) -> list[dict[str, Any]]:
        response = await self.core.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest(name=name))
        return [
            {"name": r.name, "device_id": r.device_id, "byte_size": r.byte_size} for r in response.regions.values()
        ]

    async def _register(self, name: str, body: dict[str, Any]) -> None:
        handle = body.get("raw_handle")
        text = handle.get("b64") if isinstance(handle, dict) else None
        if not isinstance(text, str):
            raise InvalidRequest("CUDA shared memory register: 'raw_handle' must be {\"b64\": <base64 text>}")
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("CUDA shared memory register: 'raw_handle.b64' is not valid base64") from None
        request = pb.CudaSharedMemoryRegisterRequest(
            name=name, raw_handle=raw, device_id=_count(body, "device_id"), byte_size=_count(body, "byte_size")
        )
        await self.core.CudaSharedMemoryRegister(request)

    async def _unregister(self, name: str) -> None:
        await self.core.CudaSharedMemoryUnregister(pb.CudaSharedMemoryUnregisterRequest(name=name))


def _body_object(body: bytes, where: str) -> dict[str, Any]:
    try:
        document = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"{where}: the body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidRequest(f"{where}: the body must be a JSON object")
    return document


def _count(body: dict[str, Any], field: str, default: int | None = None) -> int:
    """A non-negative integer member (one that fits protobuf's uint64/int64 fields)."""
    value = body.get(field, default)
    if type(value) is not int or not 0 <= value < 2**63:
        raise InvalidRequest(f"shared memory register: '{field}' must be a non-negative integer")
    return value
