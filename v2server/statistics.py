"""Triton's statistics extension: the counters of one served model version.

Every request and every model execution updates a :class:`VersionStatistics` with plain integer additions:
one asyncio loop thread writes them, so the hot path takes no lock and allocates nothing. Readers (the
statistics endpoints, the Prometheus collector at scrape time) take a :meth:`VersionStatistics.snapshot`,
a frozen copy made in one go, and format that; ``GET /metrics`` therefore costs nothing per request.

Semantics follow Triton's ``ModelStatistics``:

* a successful request counts in ``success`` (its whole duration), ``queue`` and ``compute_*`` (the
  durations of the execution that served it), and adds its batch size to ``inference_count``;
* a failed request counts only in ``fail``;
* each model execution (one batch, perhaps merged from several requests) adds one to ``execution_count``
  and to the ``batch_stats`` row of its batch size.

Two latency histograms (whole request and queue, in microseconds, successful requests) are kept beside the
Triton counters for the Prometheus endpoint; Triton itself only offers summaries.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from v2server._proto import grpc_service_pb2 as pb

__all__ = [
    "DEFAULT_BUCKETS_US",
    "BatchSnapshot",
    "Duration",
    "Histogram",
    "HistogramSnapshot",
    "StatisticsSnapshot",
    "VersionStatistics",
    "parse_buckets",
]

DEFAULT_BUCKETS_US: tuple[float, ...] = (
    100.0, 250.0, 500.0,
    1_000.0, 2_500.0, 5_000.0,
    10_000.0, 25_000.0, 50_000.0,
    100_000.0, 250_000.0, 500_000.0,
    1_000_000.0, 2_500_000.0, 5_000_000.0,
)  # fmt: skip
"""Histogram upper bounds in microseconds: 100 us to 5 s; anything slower lands in ``+Inf``."""


def parse_buckets(text: str) -> tuple[float, ...]:
    """Parse histogram bucket bounds from a flag such as ``histogram_latency_buckets=100,500,1000``.

    Args:
        text: comma-separated positive, finite numbers (microseconds), in any order. ``+Inf`` is always
            implicit and must not be listed.

    Returns:
        The bounds, sorted, each once.

    Raises:
        ValueError: the text is empty or an item is not a positive finite number; the message names the item.
    """
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise ValueError("histogram buckets: expected comma-separated positive numbers, got nothing")
    bounds: set[float] = set()
    for item in items:
        try:
            bound = float(item)
        except ValueError:
            raise ValueError(f"histogram buckets: {item!r} is not a number (in {text!r})") from None
        if not math.isfinite(bound):
            raise ValueError(f"histogram buckets: {item!r} is not finite; the +Inf bucket is always present")
        if bound <= 0:
            raise ValueError(f"histogram buckets: {item!r} is not positive")
        bounds.add(bound)
    return tuple(sorted(bounds))


class Duration:
    """A Triton ``StatisticDuration``: how many times, and how many nanoseconds in all."""

    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


class Histogram:
    """A Prometheus-style histogram: per-bucket counts, cumulated only when read.

    Values are in the unit of its bounds: microseconds for the latency histograms, seconds for the loop lag.
    """

    __slots__ = ("_counts", "bounds", "count", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        bounds = tuple(float(b) for b in bounds)
        if (
            not bounds
            or list(bounds) != sorted(set(bounds))
            or bounds[0] <= 0
            or not math.isfinite(bounds[-1])
        ):
            raise ValueError(f"histogram buckets must be positive, finite, sorted and unique, got {bounds}")
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": the first bound >= value is the one.
        self._counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def snapshot(self) -> HistogramSnapshot:
        cumulative: list[int] = []
        total = 0
        for n in self._counts:
            total += n
            cumulative.append(total)
        return HistogramSnapshot(self.bounds, tuple(cumulative), total, self.sum)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A histogram at one instant: ``cumulative[i]`` counts values <= ``bounds[i]``; the extra last one is +Inf."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int
    sum: float


@dataclass(frozen=True, slots=True)
class BatchSnapshot:
    """Executions of one batch size: how many, and their cumulative compute nanoseconds."""

    batch_size: int
    count: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int


@dataclass(frozen=True, slots=True)
class StatisticsSnapshot:
    """Every counter of a :class:`VersionStatistics` at one instant. Durations are ``(count, ns)`` pairs."""

    name: str
    version: int
    pending: int
    last_inference: int
    inference_count: int
    execution_count: int
    success: tuple[int, int]
    fail: tuple[int, int]
    queue: tuple[int, int]
    compute_input: tuple[int, int]
    compute_infer: tuple[int, int]
    compute_output: tuple[int, int]
    batches: tuple[BatchSnapshot, ...]
    request_latency: HistogramSnapshot
    queue_latency: HistogramSnapshot

    def to_proto(self) -> pb.ModelStatistics:
        """Triton's ``ModelStatistics``; the cache is not implemented, so cache hits and misses stay zero."""

        def duration(pair: tuple[int, int]) -> pb.StatisticDuration:
            return pb.StatisticDuration(count=pair[0], ns=pair[1])

        return pb.ModelStatistics(
            name=self.name,
            version=str(self.version),
            last_inference=self.last_inference,
            inference_count=self.inference_count,
            execution_count=self.execution_count,
            inference_stats=pb.InferStatistics(
                success=duration(self.success),
                fail=duration(self.fail),
                queue=duration(self.queue),
                compute_input=duration(self.compute_input),
                compute_infer=duration(self.compute_infer),
                compute_output=duration(self.compute_output),
                cache_hit=pb.StatisticDuration(),
                cache_miss=pb.StatisticDuration(),
            ),
            batch_stats=[
                pb.InferBatchStatistics(
                    batch_size=b.batch_size,
                    compute_input=pb.StatisticDuration(count=b.count, ns=b.compute_input_ns),
                    compute_infer=pb.StatisticDuration(count=b.count, ns=b.compute_infer_ns),
                    compute_output=pb.StatisticDuration(count=b.count, ns=b.compute_output_ns),
                )
                for b in self.batches
            ],
        )


class VersionStatistics:
    """Counters of one served model version, as Triton's ModelStatistics reports them.

    Written from the event loop thread only (plain additions, no lock). Read through :meth:`snapshot` or
    :meth:`to_proto`, which copy everything at once, so a reader on the loop sees one consistent instant and
    a reader on another thread sees no half-grown container.

    Args:
        name: the model's name.
        version: the model version.
        buckets_us: upper bounds of the latency histograms, in microseconds (see :func:`parse_buckets`).
    """

    __slots__ = (
        "_batches",
        "compute_infer",
        "compute_input",
        "compute_output",
        "execution_count",
        "fail",
        "inference_count",
        "last_inference",
        "name",
        "pending",
        "queue",
        "queue_latency",
        "request_latency",
        "success",
        "version",
    )

    def __init__(self, name: str, version: int, buckets_us: Sequence[float] = DEFAULT_BUCKETS_US) -> None:
        self.name = name
        self.version = version
        self.pending = 0  # requests received and not yet answered (a gauge)
        self.last_inference = 0  # ms since the epoch when the last successful request finished; 0 before any
        self.inference_count = 0
        self.execution_count = 0
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.request_latency = Histogram(buckets_us)
        self.queue_latency = Histogram(buckets_us)
        # batch size -> [executions, compute_input ns, compute_infer ns, compute_output ns]
        self._batches: dict[int, list[int]] = {}

    def request_started(self) -> None:
        """A request for this version arrived; pair it with exactly one :meth:`request_finished`."""
        self.pending += 1

    def request_finished(
        self,
        success: bool,
        batch_size: int,
        request_ns: int,
        queue_ns: int,
        compute_input_ns: int,
        compute_infer_ns: int,
        compute_output_ns: int,
    ) -> None:
        """A request was answered.

        Args:
            success: whether it produced a response; a failure counts only ``fail`` and its duration.
            batch_size: the request's batch dimension; 0 for a model that does not batch (counts as 1).
            request_ns: from arrival to response.
            queue_ns: time spent waiting for an instance (in the batcher's queue).
            compute_input_ns: copying inputs to the device (the execution that served it).
            compute_infer_ns: running the model.
            compute_output_ns: copying outputs back.
        """
        self.pending -= 1
        if not success:
            self.fail.add(request_ns)
            return
        self.success.add(request_ns)
        self.queue.add(queue_ns)
        self.compute_input.add(compute_input_ns)
        self.compute_infer.add(compute_infer_ns)
        self.compute_output.add(compute_output_ns)
        self.inference_count += batch_size if batch_size > 0 else 1
        self.last_inference = time.time_ns() // 1_000_000
        self.request_latency.observe(request_ns / 1000)
        self.queue_latency.observe(queue_ns / 1000)

    def execution(
        self, batch_size: int, compute_input_ns: int, compute_infer_ns: int, compute_output_ns: int
    ) -> None:
        """The model ran once on a batch of ``batch_size`` (0 for a model that does not batch: row 1)."""
        self.execution_count += 1
        size = batch_size if batch_size > 0 else 1
        row = self._batches.get(size)
        if row is None:
            row = self._batches[size] = [0, 0, 0, 0]
        row[0] += 1
        row[1] += compute_input_ns
        row[2] += compute_infer_ns
        row[3] += compute_output_ns

    def snapshot(self) -> StatisticsSnapshot:
        """Every counter, copied now; batches sorted by batch size."""
        batches = sorted(self._batches.items())  # copied in one step, under the GIL
        return StatisticsSnapshot(
            name=self.name,
            version=self.version,
            pending=self.pending,
            last_inference=self.last_inference,
            inference_count=self.inference_count,
            execution_count=self.execution_count,
            success=(self.success.count, self.success.ns),
            fail=(self.fail.count, self.fail.ns),
            queue=(self.queue.count, self.queue.ns),
            compute_input=(self.compute_input.count, self.compute_input.ns),
            compute_infer=(self.compute_infer.count, self.compute_infer.ns),
            compute_output=(self.compute_output.count, self.compute_output.ns),
            batches=tuple(BatchSnapshot(size, *row) for size, row in batches),
            request_latency=self.request_latency.snapshot(),
            queue_latency=self.queue_latency.snapshot(),
        )

    def to_proto(self) -> pb.ModelStatistics:
        """Triton's ``ModelStatistics`` for this version (``version`` as a string, ``memory_usage`` empty)."""
        return self.snapshot().to_proto()
