"""Handlers of the simple REST styles: ``/v1/{model}/{latest|version|alias}``, aliases, ``/predict``.

They translate only: ``simple_codec`` turns the body into the core's ``ModelInferRequest`` messages, the
handler awaits ``core.ModelInfer`` (all of a batch's requests at once, under the ``timeout`` query parameter;
an expired or abandoned request cancels the awaited calls, which drops their queued work), and renders the
answers. Alias resolution and storage live in the core (the in-process data plane; a gateway forwarding to a
remote core has none: its core raises ``Unsupported``, 501). ``/predict`` renders errors as ``{"detail": ...}``:
the route table gives it that error style.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

from v2server._proto import grpc_service_pb2 as pb
from v2server.errors import DeadlineExceeded, ModelNotFound, Unsupported
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

__all__ = ["AliasesHandler", "PredictHandler", "V1Handler"]


class _SimpleHandler(V2Handler):
    async def model(self, name: str, version: str) -> SimpleModel:
        response = await self.core.ModelConfig(pb.ModelConfigRequest(name=name, version=version))
        return SimpleModel.from_config(response.config)

    async def infer(self, plan: Plan) -> Sequence[pb.ModelInferResponse] | None:
        """Every request of ``plan`` at once; None when the client left (its work was cancelled)."""
        timeout = parse_timeout(self.get_query_argument("timeout", None))
        work: Awaitable[list[pb.ModelInferResponse]] = asyncio.gather(
            *(self.model_infer(request) for request in plan.requests)
        )
        if timeout is not None:
            work = asyncio.wait_for(work, timeout)
        try:
            return await self.run_core(work)
        except TimeoutError:
            raise DeadlineExceeded(
                f"the request did not finish within its timeout of {timeout:g} s; its queued work was dropped"
            ) from None


class V1Handler(_SimpleHandler):
    """``POST /v1/{model}/{latest|version|alias}`` with ``{"data": ...}`` (single or batch)."""

    async def post(self, name: str, selector: str) -> None:
        version = selector_version(selector)
        if version is None:
            version = await self.core.resolve_alias(name, selector)  # once: moving the alias cannot split us
        batch = parse_batch_flag(self.get_query_argument("batch", None))
        model = await self.model(name, version)
        plan = v1_plan(model, version, self.body, batch)
        responses = await self.infer(plan)
        if responses is not None:
            self.write_json(v1_answer(plan, responses))


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
        plan = predict_plan(model, "", self.body)
        responses = await self.infer(plan)
        if responses is not None:
            self.write_json(predict_answer(plan, responses))

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
