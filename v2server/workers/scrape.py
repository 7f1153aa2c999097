"""The supervisor's ``/metrics``: every running worker's own metrics, summed, and the workers' states.

The workers do not listen on the metrics port: the supervisor does, and at each scrape asks each worker for
its exposition over its private socket (``v2server.worker.Private/Metrics``), then sums them (``merge.py``),
so a scrape sees the whole server however the kernel spread the connections. A worker that does not answer
in time sits the scrape out (its counters return with it; Prometheus' ``rate`` treats the dip as a reset).
Beside the sums: ``v2server_worker_up{worker,pid}`` and ``v2server_worker_restarts{worker}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import tornado.web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from v2server.auth import ApiKeys
from v2server.rest_api import metrics_app
from v2server.workers.merge import sum_expositions
from v2server.workers.peers import CHANNEL_OPTIONS, READ_TIMEOUT, private_method

__all__ = ["WorkerState", "make_metrics_app"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerState:
    """What the supervisor knows of one worker at a scrape."""

    index: int
    pid: int | None
    up: bool
    restarts: int
    socket: Path


async def _worker_metrics(state: WorkerState) -> str | None:
    try:
        async with grpc.aio.insecure_channel(f"unix:{state.socket}", options=CHANNEL_OPTIONS) as channel:
            body: bytes = await channel.unary_unary(private_method("Metrics"))(b"", timeout=READ_TIMEOUT)
            return body.decode()
    except grpc.aio.AioRpcError as exc:
        log.info("worker %d sits this scrape out: %s", state.index, exc.details())
        return None


def _states(states: Sequence[WorkerState]) -> list[Metric]:
    up = GaugeMetricFamily("v2server_worker_up", "Whether each worker process is up (serving), with its pid",
                           labels=["worker", "pid"])
    restarts = Metric("v2server_worker_restarts", "Times the supervisor restarted each worker", "counter")
    for state in states:
        up.add_metric([str(state.index), str(state.pid or "")], 1.0 if state.up else 0.0)
        restarts.add_sample("v2server_worker_restarts", {"worker": str(state.index)}, state.restarts)
    return [up, restarts]


async def render(states: Sequence[WorkerState]) -> bytes:
    """The summed exposition of the workers that are up, and the workers' states."""
    live = [state for state in states if state.up]
    texts = await asyncio.gather(*(_worker_metrics(state) for state in live))
    return sum_expositions([text for text in texts if text is not None], _states(states))


def make_metrics_app(states: Callable[[], Sequence[WorkerState]], keys: ApiKeys | None) -> tornado.web.Application:
    """``GET /metrics`` over the workers ``states()`` names (the single server's handler); ``keys``: scrapes
    need one of them."""

    async def scrape() -> tuple[bytes, str]:
        return await render(states()), CONTENT_TYPE_PLAIN_0_0_4

    return metrics_app.make_metrics_app(scrape, keys)
