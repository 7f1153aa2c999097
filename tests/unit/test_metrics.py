"""The Prometheus exposition: Triton's names and labels, histograms, GPU gauges, computed at scrape time."""

from __future__ import annotations

import asyncio
import sys
import time
import types
from collections.abc import Iterator
from typing import Any

import prometheus_client
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from v2server.metrics import LoopLagSampler, TritonCollector, make_registry, render
from v2server.statistics import VersionStatistics

MS = 1_000_000  # ns
TRITON_COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)
GPU_METRICS = ("nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes")


def scrape(stats: list[VersionStatistics], gpu: bool = False) -> str:
    body, _ = render(make_registry(lambda: stats, gpu=gpu))
    return body.decode()


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for f in families(text).values() for s in f.samples
            if s.name == name}  # fmt: skip


@pytest.fixture
def two_versions() -> list[VersionStatistics]:
    """Model m version 1: two successes (batch 8 in one execution, then batch 0), one failure; n v2: idle."""
    m = VersionStatistics("m", 1)
    for _ in range(3):
        m.request_started()
    m.execution(8, 1000, 3 * MS, 2000)
    m.request_finished(True, 8, 5 * MS, MS, 1000, 3 * MS, 2000)
    m.request_finished(False, 1, 2 * MS, 0, 0, 0, 0)
    n = VersionStatistics("n", 2)
    n.request_started()
    return [m, n]


def test_counters_keep_triton_names_without_total(two_versions: list[VersionStatistics]) -> None:
    text = scrape(two_versions)
    lines = text.splitlines()
    assert "_total" not in text
    for line in (
        'nv_inference_request_success{model="m",version="1"} 1.0',
        'nv_inference_request_failure{model="m",version="1"} 1.0',
        'nv_inference_count{model="m",version="1"} 8.0',
        'nv_inference_exec_count{model="m",version="1"} 1.0',
        'nv_inference_request_duration_us{model="m",version="1"} 5000.0',
        'nv_inference_queue_duration_us{model="m",version="1"} 1000.0',
        'nv_inference_compute_input_duration_us{model="m",version="1"} 1.0',
        'nv_inference_compute_infer_duration_us{model="m",version="1"} 3000.0',
        'nv_inference_compute_output_duration_us{model="m",version="1"} 2.0',
        'nv_inference_count{model="n",version="2"} 0.0',
        'nv_inference_pending_request_count{model="m",version="1"} 1.0',
        'nv_inference_pending_request_count{model="n",version="2"} 1.0',
    ):
        assert line in lines
    for name in TRITON_COUNTERS:
        assert f"# TYPE {name} counter" in lines
        assert any(line.startswith(f"# HELP {name} ") for line in lines)
    assert "# TYPE nv_inference_pending_request_count gauge" in lines


def test_text_parses_with_types_and_labels(two_versions: list[VersionStatistics]) -> None:
    parsed = families(scrape(two_versions))
    for name in TRITON_COUNTERS:
        assert parsed[name].type == "counter", name  # the samples belong to their typed family
        assert {tuple(sorted(s.labels)) for s in parsed[name].samples} == {("model", "version")}
    assert parsed["nv_inference_pending_request_count"].type == "gauge"
    assert parsed["nv_inference_request_latency_us"].type == "histogram"
    assert parsed["nv_inference_queue_latency_us"].type == "histogram"
    # the parser normalises counter samples to `_total`; what matters is the values under their family
    counts = {s.labels["model"]: s.value for s in parsed["nv_inference_count"].samples}
    assert counts == {"m": 8.0, "n": 0.0}
    assert not any(name.startswith("nv_gpu_") for name in parsed)


def test_histograms_have_cumulative_buckets_sum_and_count() -> None:
    stats = VersionStatistics("m", 1, buckets_us=(100, 1000))
    for request_us in (50, 500, 5000):
        stats.request_started()
        stats.request_finished(True, 1, request_us * 1000, 10_000, 0, 0, 0)
    text = scrape([stats])
    assert samples(text, "nv_inference_request_latency_us_bucket") == {
        (("le", "100.0"), ("model", "m"), ("version", "1")): 1.0,
        (("le", "1000.0"), ("model", "m"), ("version", "1")): 2.0,
        (("le", "+Inf"), ("model", "m"), ("version", "1")): 3.0,
    }
    assert samples(text, "nv_inference_request_latency_us_sum") == {
        (("model", "m"), ("version", "1")): 5550.0
    }
    assert samples(text, "nv_inference_request_latency_us_count") == {(("model", "m"), ("version", "1")): 3.0}
    assert 'nv_inference_queue_latency_us_bucket{le="100.0",model="m",version="1"} 3.0' in text.splitlines()


def test_default_bucket_labels_read_like_prometheus() -> None:
    text = scrape([VersionStatistics("m", 1)])
    les = [
        s.labels["le"] for s in families(text)["nv_inference_request_latency_us"].samples if "le" in s.labels
    ]
    assert les[0] == "100.0" and "1e+06" in les and les[-1] == "+Inf"


def test_values_are_read_at_each_scrape() -> None:
    served: list[VersionStatistics] = []
    registry = make_registry(lambda: served, gpu=False)
    assert "nv_inference_count{" not in render(registry)[0].decode()
    stats = VersionStatistics("m", 1)
    served.append(stats)
    stats.request_started()
    stats.request_finished(True, 3, MS, 0, 0, 0, 0)
    assert 'nv_inference_count{model="m",version="1"} 3.0' in render(registry)[0].decode().splitlines()


def test_a_version_yielded_twice_is_reported_once() -> None:
    first, second = VersionStatistics("m", 1), VersionStatistics("m", 1)
    second.request_started()
    text = scrape([first, second])
    assert samples(text, "nv_inference_pending_request_count") == {(("model", "m"), ("version", "1")): 0.0}


def test_render_content_type_and_fresh_registries() -> None:
    registry = make_registry(list, gpu=False)
    assert registry is not prometheus_client.REGISTRY
    assert make_registry(list, gpu=False) is not registry
    body, content_type = render(registry)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b"# TYPE nv_inference_count counter" in body


def test_render_leaves_other_counters_alone() -> None:
    registry = make_registry(list, gpu=False)
    prometheus_client.Counter("v2server_test_things", "Things", registry=registry).inc(2)
    lines = render(registry)[0].decode().splitlines()
    assert "# TYPE v2server_test_things_total counter" in lines
    assert "v2server_test_things_total 2.0" in lines
    assert "# TYPE nv_inference_count counter" in lines


def test_no_gpu_metrics_when_disabled() -> None:
    collector = TritonCollector(list, gpu=False)
    assert not any(m.name.startswith("nv_gpu_") for m in collector.collect())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_no_gpu_metrics_without_cuda() -> None:
    text = scrape([], gpu=True)
    assert "nv_gpu_" not in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_metrics_on_a_gpu() -> None:
    on_gpu = torch.ones(1024, device="cuda:0")  # torch now holds memory there, so the fallback may report it
    parsed = families(scrape([], gpu=True))
    uuid = f"GPU-{torch.cuda.get_device_properties(0).uuid}"
    total = {s.labels["gpu_uuid"]: s.value for s in parsed["nv_gpu_memory_total_bytes"].samples}
    used = {s.labels["gpu_uuid"]: s.value for s in parsed["nv_gpu_memory_used_bytes"].samples}
    # NVML counts the memory the driver reserves, CUDA (the fallback) does not
    cuda_total = torch.cuda.get_device_properties(0).total_memory
    assert cuda_total <= total[uuid] <= cuda_total * 1.05
    assert 0 < used[uuid] <= total[uuid]
    utilization = parsed["nv_gpu_utilization"].samples
    if utilization:  # NVML installed and working
        assert all(0.0 <= s.value <= 1.0 for s in utilization)
    del on_gpu


# --- the GPU logic on a machine without one: torch and NVML stand-ins -----------------------------------


class FakeNVMLError(Exception):
    pass


def fake_pynvml(
    init_fails: bool = False, known: tuple[str, ...] = ("GPU-aaaa",), memory_v2: bool = True
) -> types.ModuleType:
    """NVML with the GPUs ``known``; memory info v1 counts 1 GiB the driver reserves, v2 does not."""
    nvml = types.ModuleType("pynvml")

    def init() -> None:
        if init_fails:
            raise FakeNVMLError("Driver Not Loaded")

    def handle(uuid: str) -> str:
        if uuid not in known:
            raise FakeNVMLError("Not Found")
        return uuid

    def utilization(handle: str) -> Any:
        if handle == "GPU-lost":
            raise FakeNVMLError("GPU is lost")
        return types.SimpleNamespace(gpu=37, memory=5)

    nvml.NVMLError = FakeNVMLError  # type: ignore[attr-defined]
    nvml.nvmlInit = init  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByUUID = handle  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetUtilizationRates = utilization  # type: ignore[attr-defined]

    def memory(handle: str, version: int = 1) -> Any:
        if version == 1:
            return types.SimpleNamespace(total=80 << 30, used=4 << 30, free=76 << 30)
        if not memory_v2:
            raise FakeNVMLError("Function Not Found")
        return types.SimpleNamespace(total=80 << 30, reserved=1 << 30, used=3 << 30, free=76 << 30)

    nvml.nvmlMemory_v2 = 2  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMemoryInfo = memory  # type: ignore[attr-defined]
    return nvml


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Two visible GPUs with uuids ``aaaa`` and ``bbbb``; torch holds memory on the first only."""
    uuids = ["aaaa", "bbbb"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(uuids))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid=uuids[i]))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i: 1 << 20 if i == 0 else 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (60 << 30, 64 << 30))
    yield uuids


def gpu_samples(collector: TritonCollector) -> list[Sample]:
    return [s for m in collector.collect() if m.name.startswith("nv_gpu_") for s in m.samples]


def test_gpu_gauges_from_nvml(fake_cuda: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    got = {(s.name, s.labels["gpu_uuid"]): s.value for s in gpu_samples(TritonCollector(list))}
    assert got == {
        ("nv_gpu_utilization", "GPU-aaaa"): 0.37,
        ("nv_gpu_memory_total_bytes", "GPU-aaaa"): 80 << 30,
        ("nv_gpu_memory_used_bytes", "GPU-aaaa"): 3 << 30,
        # NVML does not know bbbb, and torch holds no memory there: nothing, rather than a new CUDA context
    }


def test_gpu_used_memory_from_nvml_v1_on_older_drivers(
    fake_cuda: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(memory_v2=False))
    got = {s.name: s.value for s in gpu_samples(TritonCollector(list))}
    assert got["nv_gpu_memory_used_bytes"] == 4 << 30


def test_gpu_memory_falls_back_to_torch_without_nvml(
    fake_cuda: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    got = {(s.name, s.labels["gpu_uuid"]): s.value for s in gpu_samples(TritonCollector(list))}
    assert got == {
        ("nv_gpu_memory_total_bytes", "GPU-aaaa"): 64 << 30,
        ("nv_gpu_memory_used_bytes", "GPU-aaaa"): 4 << 30,
    }


def test_gpu_memory_falls_back_when_nvml_init_fails(
    fake_cuda: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(init_fails=True))
    names = {s.name for s in gpu_samples(TritonCollector(list))}
    assert names == {"nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes"}


def test_a_gpu_that_fails_sits_the_scrape_out(fake_cuda: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda[:] = ["lost", "aaaa"]
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(known=("GPU-lost", "GPU-aaaa")))
    collector = TritonCollector(list)
    assert {s.labels["gpu_uuid"] for s in gpu_samples(collector)} == {"GPU-aaaa"}


def test_gpu_is_probed_at_the_first_scrape_only(
    fake_cuda: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    nvml = fake_pynvml()
    inits: list[int] = []
    nvml.nvmlInit = lambda: inits.append(1)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    collector = TritonCollector(list)
    assert inits == []
    gpu_samples(collector)
    gpu_samples(collector)
    assert inits == [1]


# -- event loop lag ---------------------------------------------------------------------------------------------


def _lag(registry: Any) -> dict[str, float]:
    """The loop-lag histogram's samples: ``le`` -> cumulative count, plus ``count`` and ``sum``."""
    family = families(render(registry)[0].decode())["v2server_event_loop_lag_seconds"]
    values = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    values.update({s.name.rsplit("_", 1)[1]: s.value for s in family.samples if not s.name.endswith("_bucket")})
    return values


async def _until(condition: Any) -> None:
    for _ in range(2000):  # bounded: the sampler's ticks come from the loop's timers
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the loop-lag sampler did not observe in time")


async def test_loop_lag_is_exposed_and_sampled_over_time() -> None:
    sampler = LoopLagSampler(interval=0.01)
    registry = make_registry(list, gpu=False, loop_lag=sampler)
    text = render(registry)[0].decode()
    assert "# TYPE v2server_event_loop_lag_seconds histogram" in text.splitlines()
    assert "# HELP v2server_event_loop_lag_seconds How late the event loop ran a timer" in text
    assert _lag(registry)["count"] == 0
    sampler.start()
    sampler.start()  # once
    try:
        await _until(lambda: _lag(registry)["count"] >= 3)
    finally:
        sampler.stop()
    les = [le for le in _lag(registry) if le not in ("count", "sum")]
    assert les[0] == "0.001" and les[-2] == "10.0" and les[-1] == "+Inf"
    stopped = _lag(registry)["count"]
    await asyncio.sleep(0.05)
    assert _lag(registry)["count"] == stopped and not sampler.running


async def test_a_blocked_loop_is_recorded_in_a_bucket_above_100ms() -> None:
    sampler = LoopLagSampler(interval=0.01)
    registry = make_registry(list, gpu=False, loop_lag=sampler)
    sampler.start()
    try:
        asyncio.get_running_loop().call_soon(time.sleep, 0.2)  # holds the loop while a tick is due
        await _until(lambda: _lag(registry)["+Inf"] > _lag(registry)["0.1"])
    finally:
        sampler.stop()
    assert _lag(registry)["sum"] >= 0.1


def test_loop_lag_sampler_needs_a_positive_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        LoopLagSampler(interval=0)
