"""Tornado handlers for the V2 REST routes: parse into the core's protobuf request, await, render.

The ``core`` is a ``v2server.core.InferenceCore``: the in-process ``DataPlane``, or a ``RemoteCore`` stub to a
remote core (gateway mode), bound per request to the caller's ``Authorization``. Keys, CORS, the body limit,
errors (``{"error": ...}``, mapped once in ``write_error``) and the access log are ``V2Handler``'s
(``base.py``); the handlers here only translate.
"""

from __future__ import annotations

import orjson
import tornado.web

from v2server._proto import grpc_service_pb2 as pb
from v2server.errors import InvalidRequest, Unsupported
from v2server.offload import COPY_DISCOUNT, run_sized
from v2server.rest_api.base import V2Handler
from v2server.rest_api.compression import MAX_INFLATE_RATIO, decode_body, encode_answer, negotiate_encoding
from v2server.rest_api.json_codec import (
    HEADER_LENGTH,
    OutputOptions,
    message_to_json,
    parse_infer_parts,
    parse_raw_binary_parts,
    parse_repository_request,
    render_infer_response,
)
from v2server.wire import Buffer

__all__ = [
    "HealthHandler",
    "InferHandler",
    "ModelConfigHandler",
    "ModelMetadataHandler",
    "ModelReadyHandler",
    "ModelStatisticsHandler",
    "NotFoundHandler",
    "RepositoryIndexHandler",
    "RepositoryModelHandler",
    "ServerMetadataHandler",
]

class NotFoundHandler(V2Handler):
    """Unknown paths: 404 with a JSON body, like every other error."""

    def prepare(self) -> None:
        super().prepare()
        self.raise_refusal()  # keyless with a small body: 401 as on GET, not a hint of which paths exist
        raise tornado.web.HTTPError(404, "no route for %s %s", self.request.method, self.request.path)


class HealthHandler(V2Handler):
    """``/v2/health/live`` and ``/ready``: 200 or 400 as Triton answers, with ``{"live"|"ready": bool}`` as
    KServe answers."""

    needs_key = False

    async def get(self, which: str) -> None:
        if which == "live":
            ok = (await self.core.ServerLive(pb.ServerLiveRequest())).live
        else:
            ok = (await self.core.ServerReady(pb.ServerReadyRequest())).ready
        self.write_status(which, ok)


class ServerMetadataHandler(V2Handler):
    async def get(self) -> None:
        self.write_json(message_to_json(await self.core.ServerMetadata(pb.ServerMetadataRequest())))


class ModelReadyHandler(V2Handler):
    """Open to probes, like the server's health routes and gRPC ``ModelReady``."""

    needs_key = False

    async def get(self, name: str, version: str | None) -> None:
        response = await self.core.ModelReady(pb.ModelReadyRequest(name=name, version=version or ""))
        self.write_status("ready", response.ready)


class ModelMetadataHandler(V2Handler):
    """V2 model metadata, with the model's version aliases as ``parameters.aliases`` when it has any (the
    protobuf response has no parameters field, so they come from the core's alias table; a remote core
    keeps none)."""

    async def get(self, name: str, version: str | None) -> None:
        request = pb.ModelMetadataRequest(name=name, version=version or "")
        document = message_to_json(await self.core.ModelMetadata(request))
        try:
            aliases = await self.core.model_aliases(document.get("name", name))
        except Unsupported:
            aliases = {}
        if aliases:
            document["parameters"] = {"aliases": aliases}
        self.write_json(document)


class ModelConfigHandler(V2Handler):
    async def get(self, name: str, version: str | None) -> None:
        response = await self.core.ModelConfig(pb.ModelConfigRequest(name=name, version=version or ""))
        self.write_json(message_to_json(response.config))


class ModelStatisticsHandler(V2Handler):
    """``GET /v2/models/stats`` (all models) and ``/v2/models/{m}[/versions/{v}]/stats``."""

    async def get(self, name: str | None = None, version: str | None = None) -> None:
        request = pb.ModelStatisticsRequest(name=name or "", version=version or "")
        self.write_json(message_to_json(await self.core.ModelStatistics(request), with_defaults=True))


class RepositoryIndexHandler(V2Handler):
    async def post(self, repository: str | None = None) -> None:
        body = self.body.strip()
        ready = False
        if body:
            try:
                ready = bool(orjson.loads(body).get("ready", False))
            except (orjson.JSONDecodeError, AttributeError):
                raise InvalidRequest("repository index body must be a JSON object such as {\"ready\": true}") from None
        response = await self.core.RepositoryIndex(
            pb.RepositoryIndexRequest(repository_name=repository or "", ready=ready)
        )
        self.write_json([message_to_json(model) for model in response.models])


class RepositoryModelHandler(V2Handler):
    """``POST /v2/repository/models/{m}/load|unload`` (bodies may be empty)."""

    async def post(self, repository: str | None, name: str, action: str) -> None:
        parameters = parse_repository_request(self.body, f"{action} '{name}'")
        if action == "load":
            await self.core.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(repository_name=repository or "", model_name=name, parameters=parameters)
            )
        else:
            await self.core.RepositoryModelUnload(
                pb.RepositoryModelUnloadRequest(repository_name=repository or "", model_name=name, parameters=parameters)
            )
        self.set_header("Content-Type", "application/json")
        self.finish()


class InferHandler(V2Handler):
    """``POST .../infer``: JSON, Triton's binary extension, compression; the body size is capped up front.

    Reading the body (inflating, parsing, converting) and writing the answer (rendering, compressing) take
    time proportional to their size, so above ``offload.INLINE_BYTES`` of such work each runs in a worker
    thread while the loop serves other clients; a compressed body counts as the most it could inflate to.
    """

    async def post(self, name: str, version: str | None) -> None:
        encoding = self.request.headers.get("Content-Encoding")
        header_length = self._header_length()
        compressed = (encoding or "").strip().lower() not in ("", "identity")
        if compressed:
            work = self.body_size * MAX_INFLATE_RATIO
        elif header_length is not None and 0 <= header_length <= self.body_size:  # JSON, then binary tensors
            work = header_length + (self.body_size - header_length) // COPY_DISCOUNT
        else:
            work = self.body_size
        request, options, raw = await run_sized(
            work, _read_request, name, version or "", self.body_parts, encoding, header_length, self.max_body_size
        )
        response = await self.run_core(self.model_infer(request, raw))
        if response is None:
            return  # the client went away; its work was dropped and there is no one to answer
        accept_encoding = self.request.headers.get("Accept-Encoding")
        copied = COPY_DISCOUNT if negotiate_encoding(accept_encoding) is None else 1  # compressing is no copy
        work = sum(  # binary outputs are copied, JSON ones printed
            len(raw) // copied if options.is_binary(output.name) else len(raw)
            for output, raw in zip(response.outputs, response.raw_output_contents, strict=False)
        )
        payload, json_length, answer_encoding = await run_sized(
            work, _write_answer, response, options, accept_encoding
        )
        if json_length is not None:
            self.set_header(HEADER_LENGTH, str(json_length))
            self.set_header("Content-Type", "application/octet-stream")
        else:
            self.set_header("Content-Type", "application/json")
        if answer_encoding is not None:
            self.set_header("Content-Encoding", answer_encoding)
        self.finish(payload)

    def _header_length(self) -> int | None:
        value = self.request.headers.get(HEADER_LENGTH)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise InvalidRequest(f"{HEADER_LENGTH} must be an integer, got '{value}'") from None


def _read_request(
    name: str, version: str, parts: list[bytes], encoding: str | None, header_length: int | None, limit: int
) -> tuple[pb.ModelInferRequest, OutputOptions, list[Buffer]]:
    """The body (its pieces joined, inflated under ``limit``) as the core's request and its raw entries."""
    body = decode_body(parts[0] if len(parts) == 1 else b"".join(parts), encoding, limit)
    if header_length == 0:
        return parse_raw_binary_parts(name, version, body)
    return parse_infer_parts(name, version, body, header_length)


def _write_answer(
    response: pb.ModelInferResponse, options: OutputOptions, accept_encoding: str | None
) -> tuple[bytes, int | None, str | None]:
    """The answer's body, its JSON length (None: all JSON) and its ``Content-Encoding`` (None: as is)."""
    payload, json_length = render_infer_response(response, options)
    payload, encoding = encode_answer(payload, accept_encoding)
    return payload, json_length, encoding
