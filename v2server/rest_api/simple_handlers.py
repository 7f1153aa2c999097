"""Handlers of the simple REST styles: ``/v1/{model}/{latest|version|alias}``, aliases, ``/predict``.

They translate only: ``simple_codec`` turns the body into the core's ``ModelInferRequest`` messages (in a
worker thread when the body is large; a batch over ``--max-batch-rows`` is a 413 before any row is read), the
handler awaits ``core.ModelInfer`` (a batch's requests ``CONCURRENT_REQUESTS`` at a time, under the
``timeout`` query parameter, ``/v1``'s ``response_timeout`` and ``--max-response-timeout-secs``, whichever is
shortest; an expired or abandoned request cancels the awaited calls, which drops their queued work), and
renders the answers (in a worker thread when they are large). A ``/v1`` body with ``response_webhook`` is
checked the same way, then handed to the job service (``v2server.jobs``: 202 with the job's id), which runs it
later through :func:`run_v1`, the same steps as the handler. Alias resolution and
storage live in the core (the in-process data plane; a gateway forwarding to a remote core has none: its core
raises ``Unsupported``, 501). ``/predict`` renders errors as ``{"detail": ...}``: the route table gives it
that error style.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import tornado.web

from v2server._proto import grpc_service_pb2 as pb
from v2server.core import InferenceCore
from v2server.errors import DeadlineExceeded, ModelNotFound, Unsupported
from v2server.offload import run_sized
from v2server.rest_api import chunked_json
from v2server.rest_api.base import Dependencies, V2Handler
from v2server.rest_api.results_handlers import store_answer
from v2server.rest_api.simple_codec import (
    Plan,
    SimpleModel,
    V1Options,
    parse_alias_version,
    parse_batch_flag,
    parse_timeout,
    predict_answer,
    predict_plan,
    selector_version,
    v1_answer,
    v1_plan,
)

if TYPE_CHECKING:
    from v2server.jobs import JobService

__all__ = [
    "CONCURRENT_REQUESTS", "ROW_WORK", "AliasesHandler", "PredictHandler", "V1Handler", "infer_plan", "run_v1",
    "shortest",
]

_T = TypeVar("_T")

#: A batch's requests in flight at once (rows of a model without batching, or ``max_batch_size`` stacks of
#: rows of one that batches): enough to keep the model's instances and dynamic batcher fed, few enough that
#: one batch neither fills the batcher's queue (503 for everyone) nor takes every turn of the event loop.
CONCURRENT_REQUESTS = 16

#: Per body byte, the simple styles do about 8 times the work of a JSON parse (a request built per row of a
#: model without batching, a value per row of the answer): their bodies and answers leave the loop from
#: ``offload.INLINE_BYTES / ROW_WORK`` bytes (8 KiB, a few milliseconds of work).
ROW_WORK = 8


class _SimpleHandler(V2Handler):
    async def model(self, name: str, version: str) -> SimpleModel:
        return await _simple_model(self.core, name, version)

    async def plan(self, build: Callable[..., Plan], *args: Any) -> Plan:
        """``build(*args, body, max_rows=...)``, off the loop for a large body (see ``ROW_WORK``)."""
        return await _build_plan(build, self.body_parts, self.body_size, args, self.max_batch_rows)

    def query_timeout(self) -> float | None:
        """The ``timeout`` query parameter (seconds), if any."""
        return parse_timeout(self.get_query_argument("timeout", None))

    async def infer(self, plan: Plan, *limits: float | None) -> Sequence[pb.ModelInferResponse] | None:
        """Every request of ``plan``, at most ``CONCURRENT_REQUESTS`` at a time, under the ``timeout`` query
        parameter or a shorter one of ``limits``; None when the client left (its work was cancelled)."""
        return await self.run_core(infer_plan(self.model_infer, plan, shortest(self.query_timeout(), *limits)))

    async def answer(
        self, render: Callable[[Plan, Sequence[pb.ModelInferResponse]], Any], plan: Plan,
        responses: Sequence[pb.ModelInferResponse],
    ) -> None:
        """Render the answer, off the loop when it is large (see ``ROW_WORK``), and send it."""
        self.write_json_text(await _render_sized(render, plan, responses, self.body_size))


class V1Handler(_SimpleHandler):
    """``POST /v1/{model}/{latest|version|alias}`` with ``{"data": ...}`` (single or batch).

    Request body: ``{"data": ..., "response_timeout": SECONDS?, "response_webhook": URL?,
    "response_webhook_ignore_timeout": BOOL?}`` (other fields are ignored). Answers 200 ``{"data": ...}``; with
    ``response_webhook``, 202 ``{"job": ID, "status_url": "/v1/jobs/ID"}`` (and a ``Location`` header) once
    the job is stored; its result is POSTed to the URL as ``{"job": ID, "data": ...}`` or
    ``{"job": ID, "error": ...}`` (docs/jobs.md). Errors ``{"error": ...}``: 400, 404, 413, 500, 501 (no job
    service: gateway mode), 503 (``--max-pending-jobs``), 504 (timeout).
    """

    def initialize(self, deps: Dependencies, jobs: JobService | None = None, max_timeout: float = 0.0) -> None:
        super().initialize(deps)
        self._jobs = jobs
        self._max_timeout = max_timeout or None  # --max-response-timeout-secs (0: none)

    async def post(self, name: str, selector: str) -> None:
        version = selector_version(selector)
        if version is None:
            version = await self.core.resolve_alias(name, selector)  # once: moving the alias cannot split us
        batch = parse_batch_flag(self.get_query_argument("batch", None))
        model = await self.model(name, version)
        plan = await self.plan(v1_plan, model, version, batch)
        if plan.options.response_webhook is not None:
            await self._submit(name, version, batch, plan.options)
            return
        responses = await self.infer(plan, plan.options.response_timeout, self._max_timeout)
        if responses is not None and plan.options.response_format == "links":
            document = await _render_sized(v1_answer, plan, responses, self.body_size)
            self.write_json({"data": await store_answer(self, document)})  # docs/results.md
        elif responses is not None:
            await self.answer(v1_answer, plan, responses)

    async def _submit(self, name: str, version: str, batch: bool | None, options: V1Options) -> None:
        """Hand a checked asynchronous request to the job service; 202 once it is stored."""
        if self._jobs is None:
            raise Unsupported("asynchronous requests (response_webhook) need the in-process server: gateway mode "
                              "keeps no jobs")
        limits = (self.query_timeout(), options.response_timeout)
        timeout = shortest(*limits) if options.response_webhook_ignore_timeout else shortest(*limits, self._max_timeout)
        body = await run_sized(self.body_size, b"".join, self.body_parts)
        assert options.response_webhook is not None
        job = await self._jobs.submit(
            model=name, version=version, batch=batch, body=body, webhook=options.response_webhook, timeout=timeout,
            owner=self.caller(),
        )
        self.set_status(202)
        self.set_header("Location", f"/v1/jobs/{job}")
        self.write_json({"job": job, "status_url": f"/v1/jobs/{job}"})


class AliasesHandler(_SimpleHandler):
    """``GET /v1/{model}/aliases``; ``GET|PUT|DELETE /v1/{model}/aliases/{alias}`` (PUT body ``{"version": 3}``)."""

    async def get(self, name: str, alias: str | None = None) -> None:
        aliases = await self.core.model_aliases(name)
        if alias is None:
            self.write_json(aliases)
        elif alias in aliases:
            self.write_json({alias: aliases[alias]})
        else:
            raise ModelNotFound(f"model '{name}' has no alias '{alias}'")

    async def put(self, name: str, alias: str | None = None) -> None:
        if alias is None:
            raise tornado.web.HTTPError(405, "PUT needs an alias: /v1/{model}/aliases/{alias}")
        version = parse_alias_version(self.body)
        self.write_json(await self.core.set_model_alias(name, alias, version))

    async def delete(self, name: str, alias: str | None = None) -> None:
        if alias is None:
            raise tornado.web.HTTPError(405, "DELETE needs an alias: /v1/{model}/aliases/{alias}")
        self.write_json(await self.core.delete_model_alias(name, alias))


class PredictHandler(_SimpleHandler):
    """``POST /predict`` (the default model) and ``POST /models/{model}/predict``; errors as ``{"detail": ...}``."""

    def initialize(self, deps: Dependencies, default_model: str = "") -> None:
        super().initialize(deps)
        self._default_model = default_model

    async def post(self, name: str | None = None) -> None:
        name = name or await self._default()
        model = await self.model(name, "")
        plan = await self.plan(predict_plan, model, "")
        responses = await self.infer(plan)
        if responses is not None:
            await self.answer(predict_answer, plan, responses)

    async def _default(self) -> str:
        if self._default_model:
            return self._default_model
        index = await self.core.RepositoryIndex(pb.RepositoryIndexRequest())
        names = sorted({model.name for model in index.models})
        if len(names) != 1:
            raise ModelNotFound(
                f"POST /predict serves the default model: start the server with --default-model NAME "
                f"(the repository has {len(names)} models; POST /models/{{model}}/predict names one)"
            )
        return str(names[0])


def shortest(*limits: float | None) -> float | None:
    """The shortest of the time limits given (None: no limit)."""
    given = [limit for limit in limits if limit is not None]
    return min(given) if given else None


async def run_v1(
    core: InferenceCore, name: str, version: str, body: bytes, batch: bool | None, max_rows: int,
    timeout: float | None,
) -> bytes:
    """A ``/v1`` request served as ``V1Handler`` serves it, for a caller with no connection (an asynchronous
    job): the answer's JSON text (``{"data": ...}``). Errors raise as they do for the handler."""
    model = await _simple_model(core, name, version)
    plan = await _build_plan(v1_plan, [body], len(body), (model, version, batch), max_rows)
    responses = await infer_plan(core.ModelInfer, plan, timeout)
    return await _render_sized(v1_answer, plan, responses, len(body))


async def infer_plan(
    infer: Callable[[pb.ModelInferRequest], Awaitable[pb.ModelInferResponse]], plan: Plan, timeout: float | None
) -> list[pb.ModelInferResponse]:
    """``infer`` on every request of ``plan``, at most ``CONCURRENT_REQUESTS`` at a time, within ``timeout``
    seconds (None: no limit); past it ``DeadlineExceeded`` and the calls are cancelled (queued work dropped)."""
    work: Awaitable[list[pb.ModelInferResponse]] = _bounded(
        [functools.partial(infer, request) for request in plan.requests], CONCURRENT_REQUESTS
    )
    if timeout is not None:
        work = asyncio.wait_for(work, timeout)
    try:
        return await work
    except TimeoutError:
        raise DeadlineExceeded(
            f"the request did not finish within its timeout of {timeout:g} s; its queued work was dropped"
        ) from None


async def _simple_model(core: InferenceCore, name: str, version: str) -> SimpleModel:
    response = await core.ModelConfig(pb.ModelConfigRequest(name=name, version=version))
    return SimpleModel.from_config(response.config)


async def _build_plan(
    build: Callable[..., Plan], parts: list[bytes], size: int, args: tuple[Any, ...], max_rows: int
) -> Plan:
    """``build(*args, body, max_rows=...)``, off the loop for a large body (see ``ROW_WORK``)."""
    return await run_sized(size * ROW_WORK, _with_body, build, parts, args, max_rows)


async def _render_sized(
    render: Callable[[Plan, Sequence[pb.ModelInferResponse]], Any], plan: Plan,
    responses: Sequence[pb.ModelInferResponse], body_size: int,
) -> bytes:
    """The answer's JSON text, off the loop when it is large: its work follows the rows, which the body's size
    measures, and the outputs' size."""
    size = max(body_size, sum(len(raw) for response in responses for raw in response.raw_output_contents))
    return await run_sized(size * ROW_WORK, _render, render, plan, responses)


def _with_body(build: Callable[..., Plan], parts: list[bytes], args: tuple[Any, ...], max_rows: int) -> Plan:
    """``build`` for ``v1_plan`` (model, version, batch) and ``predict_plan`` (model, version): the body goes
    after the model and version."""
    model, version, *rest = args
    return build(model, version, b"".join(parts), *rest, max_rows=max_rows)


def _render(
    render: Callable[[Plan, Sequence[pb.ModelInferResponse]], Any], plan: Plan,
    responses: Sequence[pb.ModelInferResponse],
) -> bytes:
    return chunked_json.dumps(render(plan, responses), orjson.OPT_SERIALIZE_NUMPY)


async def _bounded(calls: Sequence[Callable[[], Awaitable[_T]]], limit: int) -> list[_T]:
    """Await every call, at most ``limit`` at once, and their results in order. The first failure (or this
    coroutine's cancellation) cancels the calls still running, which drops their queued work, and the rest
    never start."""
    results: list[_T | None] = [None] * len(calls)
    pending = iter(enumerate(calls))

    async def worker() -> None:
        for index, call in pending:
            results[index] = await call()

    workers = [asyncio.ensure_future(worker()) for _ in range(min(limit, len(calls)))]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
    return results  # type: ignore[return-value]
