"""Prometheus metrics with Triton's names, computed at scrape time from the statistics objects.

Requests only bump the integers of :class:`~v2server.statistics.VersionStatistics`; a scrape asks
``sources()`` for the served versions, snapshots each, and formats the snapshots, so metrics cost nothing
on the request path. Everything goes into a fresh ``CollectorRegistry`` (never prometheus-client's global
one), so several servers in one process (the tests) never collide.

Names and labels are Triton's (``model``, ``version``; ``gpu_uuid`` for GPUs), so Triton dashboards work
unchanged. Triton's counters carry no ``_total`` suffix, which prometheus-client insists on for counters;
see :func:`render` for how the exposition keeps Triton's names. Triton offers latency *summaries*; we
export *histograms* instead (aggregatable across replicas), named ``*_latency_us`` so they never clash.

One metric is ours: ``v2server_event_loop_lag_seconds``, how late the event loop ran a timer
(:class:`LoopLagSampler`). Every client shares the loop, so anything that holds it (a model run inline, a
large body parsed in place) delays everyone by that much; the histogram shows it (design rule 13).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import ModuleType
from typing import Any

import prometheus_client
import torch
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from v2server.statistics import Histogram, HistogramSnapshot, StatisticsSnapshot, VersionStatistics

__all__ = ["LOOP_LAG_BUCKETS_S", "LoopLagSampler", "TritonCollector", "make_registry", "render"]

log = logging.getLogger(__name__)

Sources = Callable[[], Iterable[VersionStatistics]]

_LABELS = ("model", "version")
_go_float: Callable[[float], str] = (
    floatToGoString  # how prometheus-client writes `le` (1e+06); untyped there
)

# name, help (Triton's wording), value of one version's snapshot
_COUNTERS: tuple[tuple[str, str, Callable[[StatisticsSnapshot], int]], ...] = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     lambda s: s.success[0]),
    ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
     lambda s: s.fail[0]),
    ("nv_inference_count", "Number of inferences performed (does not include cached requests)",
     lambda s: s.inference_count),
    ("nv_inference_exec_count", "Number of model executions performed (does not include cached requests)",
     lambda s: s.execution_count),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
     lambda s: s.success[1] // 1000),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds",
     lambda s: s.queue[1] // 1000),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds",
     lambda s: s.compute_input[1] // 1000),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     lambda s: s.compute_infer[1] // 1000),
    ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds",
     lambda s: s.compute_output[1] // 1000),
)  # fmt: skip

_HISTOGRAMS: tuple[tuple[str, str, Callable[[StatisticsSnapshot], HistogramSnapshot]], ...] = (
    ("nv_inference_request_latency_us", "Latency of successful inference requests in microseconds",
     lambda s: s.request_latency),
    ("nv_inference_queue_latency_us", "Queuing time of successful inference requests in microseconds",
     lambda s: s.queue_latency),
)  # fmt: skip


class TritonCollector(Collector):
    """Triton's per-model metrics (and GPU gauges) from the statistics of every served version.

    Args:
        sources: called at each scrape; yields the statistics of every served version. A version yielded
            twice (say, an old handle still draining beside its replacement) is reported once, first wins.
        gpu: also export ``nv_gpu_*`` gauges, when CUDA is available; see :class:`_Gpus`.
    """

    def __init__(self, sources: Sources, gpu: bool = True) -> None:
        self._sources = sources
        self._gpus = _Gpus() if gpu else None

    def collect(self) -> Iterator[Metric]:
        snapshots: list[StatisticsSnapshot] = []
        seen: set[tuple[str, int]] = set()
        for stats in self._sources():
            if (stats.name, stats.version) not in seen:
                seen.add((stats.name, stats.version))
                snapshots.append(stats.snapshot())
        rows = [(s, [s.name, str(s.version)]) for s in snapshots]

        for name, doc, value in _COUNTERS:
            # Metric rather than CounterMetricFamily, which would name the samples `<name>_total`.
            counter = Metric(name, doc, "counter")
            for snap, labels in rows:
                counter.add_sample(name, dict(zip(_LABELS, labels, strict=True)), value(snap))
            yield counter

        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.",
            labels=_LABELS,
        )
        for snap, labels in rows:
            pending.add_metric(labels, snap.pending)
        yield pending

        for name, doc, histogram in _HISTOGRAMS:
            family = HistogramMetricFamily(name, doc, labels=_LABELS)
            for snap, labels in rows:
                h = histogram(snap)
                les = [_go_float(b) for b in h.bounds] + ["+Inf"]
                family.add_metric(labels, list(zip(les, h.cumulative, strict=True)), h.sum)
            yield family

        if self._gpus is not None:
            yield from self._gpus.collect()


LOOP_LAG_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Loop-lag bucket bounds in seconds: 1 ms (a timer's resolution in uvloop) to 10 s; slower lands in ``+Inf``."""


class LoopLagSampler(Collector):
    """``v2server_event_loop_lag_seconds``: every ``interval`` seconds a timer is due, and how late it runs is
    observed.

    The timer is the loop's own (``call_at`` on ``loop.time()``), so the lag is exactly what any callback due
    then waited for: the callbacks that held the loop meanwhile. At rest it is the timer resolution (under
    1 ms); a callback that blocks the loop for 200 ms shows as one observation of about 200 ms. Ten callbacks
    a second cost nothing measurable. :meth:`start` and :meth:`stop` run on the loop; :meth:`collect` may run
    anywhere (it reads a snapshot).
    """

    name = "v2server_event_loop_lag_seconds"

    def __init__(self, interval: float = 0.1, buckets: Sequence[float] = LOOP_LAG_BUCKETS_S) -> None:
        if interval <= 0:
            raise ValueError(f"loop-lag interval must be positive, got {interval}")
        self.interval = interval
        self.histogram = Histogram(buckets)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        return self._timer is not None

    def start(self) -> None:
        """Start sampling the running loop (again a no-op while running)."""
        if self._timer is None:
            self._loop = asyncio.get_running_loop()
            self._arm()

    def stop(self) -> None:
        """Stop sampling; what was observed stays."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        assert self._loop is not None
        due = self._loop.time() + self.interval
        self._timer = self._loop.call_at(due, self._tick, due)

    def _tick(self, due: float) -> None:
        assert self._loop is not None
        self.histogram.observe(max(0.0, self._loop.time() - due))
        self._arm()

    def collect(self) -> Iterator[Metric]:
        h = self.histogram.snapshot()
        family = HistogramMetricFamily(
            self.name, "How late the event loop ran a timer, in seconds (sampled every "
            f"{self.interval:g} s): how long callbacks held the loop that every request shares",
        )
        les = [_go_float(b) for b in h.bounds] + ["+Inf"]
        family.add_metric([], list(zip(les, h.cumulative, strict=True)), h.sum)
        yield family


class _Gpus:
    """GPU gauges, labelled by ``gpu_uuid`` as Triton labels them, for every GPU visible to torch.

    Utilization and memory come from NVML (the optional ``nvidia-ml-py`` package, module ``pynvml``,
    imported lazily). Used memory is NVML's v2 figure where the driver has it, which leaves out what the
    driver reserves, as ``nvidia-smi`` and Triton (through DCGM) report it; NVML's v1 "used" adds some
    500 MiB on an idle H100. Without NVML, or for a GPU NVML cannot find, the two memory gauges fall back
    to ``torch.cuda.mem_get_info`` (device-wide too, though its total leaves out the reserved memory); but
    only for a GPU this process already uses (torch has reserved memory there), because asking about
    another one would create a CUDA context (hundreds of MiB) on it just for a scrape. Utilization is then
    absent. Nothing is probed until the first scrape (reading a GPU's uuid initialises CUDA in the process
    but creates no context), and a GPU that stops answering drops out of that scrape instead of failing it.
    """

    def __init__(self) -> None:
        self._probed = False
        self._nvml: ModuleType | None = None
        self._devices: list[tuple[int, str, Any]] = []  # torch index, gpu_uuid, NVML handle or None
        self._memory_v2: dict[str, Any] = {}  # nvmlDeviceGetMemoryInfo's version argument, where supported

    def _probe(self) -> None:
        self._probed = True
        if not torch.cuda.is_available():
            return
        self._nvml = _init_nvml()
        for index in range(torch.cuda.device_count()):
            uuid = f"GPU-{torch.cuda.get_device_properties(index).uuid}"
            handle = None
            if self._nvml is not None:
                try:
                    handle = self._nvml.nvmlDeviceGetHandleByUUID(uuid)
                except self._nvml.NVMLError as exc:
                    log.info("NVML does not know GPU %s (cuda:%d): %s", uuid, index, exc)
            self._devices.append((index, uuid, handle))
        handles = [handle for _, _, handle in self._devices if handle is not None]
        if self._nvml is not None and handles and hasattr(self._nvml, "nvmlMemory_v2"):
            try:
                self._nvml.nvmlDeviceGetMemoryInfo(handles[0], version=self._nvml.nvmlMemory_v2)
                self._memory_v2 = {"version": self._nvml.nvmlMemory_v2}
            except self._nvml.NVMLError as exc:  # an older driver
                log.info("NVML memory info v2 unavailable (%s): used memory includes the reserved", exc)

    def collect(self) -> Iterator[Metric]:
        if not self._probed:
            self._probe()
        if not self._devices:
            return
        utilization = GaugeMetricFamily(
            "nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", labels=["gpu_uuid"]
        )
        total = GaugeMetricFamily(
            "nv_gpu_memory_total_bytes", "GPU total memory, in bytes", labels=["gpu_uuid"]
        )
        used = GaugeMetricFamily("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", labels=["gpu_uuid"])
        errors: tuple[type[Exception], ...] = (RuntimeError,)  # torch's CUDA errors
        if self._nvml is not None:
            errors += (self._nvml.NVMLError,)
        for index, uuid, handle in self._devices:
            try:
                if handle is not None and self._nvml is not None:
                    rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                    memory = self._nvml.nvmlDeviceGetMemoryInfo(handle, **self._memory_v2)
                    utilization.add_metric([uuid], rates.gpu / 100.0)
                    total.add_metric([uuid], memory.total)
                    used.add_metric([uuid], memory.used)
                elif torch.cuda.memory_reserved(index) > 0:
                    free, capacity = torch.cuda.mem_get_info(index)
                    total.add_metric([uuid], capacity)
                    used.add_metric([uuid], capacity - free)
            except errors as exc:  # this GPU sits this scrape out
                log.warning("GPU %s (cuda:%d) metrics unavailable: %s", uuid, index, exc)
        yield utilization
        yield total
        yield used


def _init_nvml() -> ModuleType | None:
    try:
        import pynvml  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        log.info("nvidia-ml-py is not installed: no GPU utilization metrics")
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:  # no driver, or no libnvidia-ml to load
        log.info("NVML is unavailable (%s): no GPU utilization metrics", exc)
        return None
    nvml: ModuleType = pynvml
    return nvml


_HEADER = re.compile(rb"^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*)_total ", re.MULTILINE)


class _Collected:
    """The families of one collection, handed to ``generate_latest`` as a collector."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The Prometheus text exposition of ``registry``: ``(body, content type)`` for ``GET /metrics``.

    ``generate_latest`` names every counter family ``<name>_total`` in its ``# HELP``/``# TYPE`` lines,
    whatever its samples are called; for Triton's counters (samples named without ``_total``) that would
    leave the samples without a type. Those two header lines are put back to the samples' name, which is
    exactly what Triton serves. The content type is the text format 0.0.4 that ``generate_latest`` writes
    (prometheus-client's own handler pairs them the same way).
    """
    families = list(registry.collect())
    body = prometheus_client.generate_latest(_Collected(families))
    bare = {
        m.name.encode()
        for m in families
        if m.type == "counter" and not m.name.endswith("_total") and all(s.name == m.name for s in m.samples)
    }
    if bare:
        body = _HEADER.sub(
            lambda m: m.group(0) if m.group(2) not in bare else b"# %s %s " % m.group(1, 2), body
        )
    return body, CONTENT_TYPE_PLAIN_0_0_4


def make_registry(sources: Sources, gpu: bool = True, loop_lag: LoopLagSampler | None = None) -> CollectorRegistry:
    """A fresh registry (never prometheus-client's global one) holding a :class:`TritonCollector`, and the
    ``loop_lag`` sampler's histogram when given (the caller starts and stops it)."""
    registry = CollectorRegistry()
    registry.register(TritonCollector(sources, gpu=gpu))
    if loop_lag is not None:
        registry.register(loop_lag)
    return registry
