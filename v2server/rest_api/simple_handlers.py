"""Handlers of the simple REST styles: ``/v1/{model}/{latest|version|alias}``, aliases, ``/predict``.

They translate only: ``simple_codec`` turns the body into the core's ``ModelInferRequest`` messages (in a
worker thread when the body is large; a batch over ``--max-batch-rows`` is a 413 before any row is read), the
handler awaits ``core.ModelInfer`` (a batch's requests ``CONCURRENT_REQUESTS`` at a time, under the
``timeout`` query parameter; an expired or abandoned request cancels the awaited calls, which drops their
queued work), and renders the answers (in a worker thread when they are large). Alias resolution and
storage live in the core (the in-process data plane; a gateway forwarding to a remote core has none: its core
raises ``Unsupported``, 501). ``/predict`` renders errors as ``{"detail": ...}``: the route table gives it
that error style.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson

from v2server._proto import grpc_service_pb2 as pb
from v2server.errors import DeadlineExceeded, ModelNotFound, Unsupported
from v2server.offload import run_sized
from v2server.rest_api import chunked_json
from v2server.rest_api.base import Dependencies, V2Handler
from v2server.rest_api.simple_codec import (
    Plan,
    SimpleModel,
    parse_alias_version,
    parse_batch_flag,
    parse_timeout,
    predict_answer,
    predict_plan,
    selector_version,
    v1_answer,
    v1_plan,
)

__all__ = ["CONCURRENT_REQUESTS", "ROW_WORK", "AliasesHandler", "PredictHandler", "V1Handler"]

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
        response = await self.core.ModelConfig(pb.ModelConfigRequest(name=name, version=version))
        return SimpleModel.from_config(response.config)

    async def plan(self, build: Callable[..., Plan], *args: Any) -> Plan:
        """``build(*args, body, max_rows=...)``, off the loop for a large body (see ``ROW_WORK``)."""
        return await run_sized(
            self.body_size * ROW_WORK, _with_body, build, self.body_parts, args, self.max_batch_rows
        )

    async def infer(self, plan: Plan) -> Sequence[pb.ModelInferResponse] | None:
        """Every request of ``plan``, at most ``CONCURRENT_REQUESTS`` at a time, under the ``timeout`` query
        parameter; None when the client left (its work was cancelled)."""
        timeout = parse_timeout(self.get_query_argument("timeout", None))
        work: Awaitable[list[pb.ModelInferResponse]] = _bounded(
            [functools.partial(self.model_infer, request) for request in plan.requests], CONCURRENT_REQUESTS
        )
        if timeout is not None:
            work = asyncio.wait_for(work, timeout)
        try:
            return await self.run_core(work)
        except TimeoutError:
            raise DeadlineExceeded(
                f"the request did not finish within its timeout of {timeout:g} s; its queued work was dropped"
            ) from None

    async def answer(
        self, render: Callable[[Plan, Sequence[pb.ModelInferResponse]], Any], plan: Plan,
        responses: Sequence[pb.ModelInferResponse],
    ) -> None:
        """Render the answer, off the loop when it is large (see ``ROW_WORK``), and send it. Its work follows
        the rows, which the body's size measures, and the outputs' size."""
        size = max(self.body_size, sum(len(raw) for response in responses for raw in response.raw_output_contents))
        self.write_json_text(await run_sized(size * ROW_WORK, _render, render, plan, responses))


class V1Handler(_SimpleHandler):
    """``POST /v1/{model}/{latest|version|alias}`` with ``{"data": ...}`` (single or batch)."""

    async def post(self, name: str, selector: str) -> None:
        version = selector_version(selector)
        if version is None:
            version = await self.core.resolve_alias(name, selector)  # once: moving the alias cannot split us
        batch = parse_batch_flag(self.get_query_argument("batch", None))
        model = await self.model(name, version)
        plan = await self.plan(v1_plan, model, version, batch)
        responses = await self.infer(plan)
        if responses is not None:
            await self.answer(v1_answer, plan, responses)


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
            raise Unsupported("PUT needs an alias: /v1/{model}/aliases/{alias}")
        version = parse_alias_version(self.body)
        self.write_json(await self.core.set_model_alias(name, alias, version))

    async def delete(self, name: str, alias: str | None = None) -> None:
        if alias is None:
            raise Unsupported("DELETE needs an alias: /v1/{model}/aliases/{alias}")
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
