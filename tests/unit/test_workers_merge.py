"""Sums over workers (v2server/workers/merge.py): statistics protobufs and Prometheus expositions."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from v2server._proto import grpc_service_pb2 as pb
from v2server.metrics import make_registry, render
from v2server.statistics import VersionStatistics
from v2server.workers.merge import sum_expositions, sum_statistics


def _stats(name: str, version: int, requests: int, batch: int = 0) -> pb.ModelStatistics:
    stats = VersionStatistics(name, version, (100.0, 1000.0))
    for _ in range(requests):
        stats.request_started()
        stats.request_finished(True, batch, 500_000, 1_000, 2_000, 3_000, 4_000)
        stats.execution(batch, 2_000, 3_000, 4_000)
    return stats.to_proto()


def test_statistics_of_the_same_version_are_added_field_by_field() -> None:
    one = pb.ModelStatisticsResponse(model_stats=[_stats("a", 1, 2), _stats("b", 1, 1)])
    two = pb.ModelStatisticsResponse(model_stats=[_stats("a", 1, 3), _stats("a", 2, 4)])
    one.model_stats[0].last_inference, two.model_stats[0].last_inference = 50, 70
    total = sum_statistics([one, two])
    by_key = {(s.name, s.version): s for s in total.model_stats}
    assert list(by_key) == [("a", "1"), ("b", "1"), ("a", "2")]  # first seen order
    a1 = by_key[("a", "1")]
    assert a1.inference_stats.success.count == 5
    assert a1.inference_stats.success.ns == 5 * 500_000
    assert a1.inference_stats.compute_infer.ns == 5 * 3_000
    assert a1.inference_count == 5 and a1.execution_count == 5
    assert a1.last_inference == 70  # the latest, not a sum
    assert [(b.batch_size, b.compute_infer.count) for b in a1.batch_stats] == [(1, 5)]
    assert by_key[("a", "2")].inference_stats.success.count == 4
    assert by_key[("b", "1")].inference_stats.success.count == 1


def test_batch_sizes_memory_usage_and_response_statistics_are_matched_by_key() -> None:
    one = pb.ModelStatistics(name="m", version="1")
    one.batch_stats.add(batch_size=1).compute_infer.count = 2
    one.memory_usage.add(type="GPU", id=0, byte_size=100)
    one.response_stats["0"].success.count = 3
    two = pb.ModelStatistics(name="m", version="1")
    two.batch_stats.add(batch_size=1).compute_infer.count = 1
    two.batch_stats.add(batch_size=8).compute_infer.count = 4
    two.memory_usage.add(type="GPU", id=0, byte_size=100)
    two.memory_usage.add(type="GPU", id=1, byte_size=7)
    two.response_stats["0"].success.count = 1
    two.response_stats["1"].fail.count = 5
    total = sum_statistics([pb.ModelStatisticsResponse(model_stats=[m]) for m in (one, two)]).model_stats[0]
    assert [(b.batch_size, b.compute_infer.count) for b in total.batch_stats] == [(1, 3), (8, 4)]
    assert [(m.id, m.byte_size) for m in total.memory_usage] == [(0, 200), (1, 7)]
    assert total.response_stats["0"].success.count == 4
    assert total.response_stats["1"].fail.count == 5


def test_one_response_is_returned_unchanged() -> None:
    only = pb.ModelStatisticsResponse(model_stats=[_stats("a", 1, 2)])
    assert sum_statistics([only]) == only
    assert sum_statistics([]) == pb.ModelStatisticsResponse()


def _exposition(requests: dict[tuple[str, int], int]) -> str:
    stats = []
    for (name, version), count in requests.items():
        version_stats = VersionStatistics(name, version, (100.0, 1000.0))
        for _ in range(count):
            version_stats.request_started()
            version_stats.request_finished(True, 0, 500_000, 1_000, 2_000, 3_000, 4_000)
        stats.append(version_stats)
    body, _ = render(make_registry(lambda: stats, gpu=False))
    return body.decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_of_two_workers_are_summed_and_keep_tritons_names() -> None:
    one = _exposition({("simple", 1): 3})
    two = _exposition({("simple", 1): 4, ("mlp", 1): 2})
    text = sum_expositions([one, two]).decode()
    # Triton's counters are named without _total, in the samples and the headers alike
    assert "# TYPE nv_inference_request_success counter\n" in text
    assert '\nnv_inference_request_success{model="simple",version="1"} 7.0\n' in text
    assert '\nnv_inference_request_success{model="mlp",version="1"} 2.0\n' in text
    assert "_total" not in text
    samples = _samples(text)
    simple = (("model", "simple"), ("version", "1"))
    assert samples[("nv_inference_request_latency_us_count", simple)] == 7
    assert samples[("nv_inference_request_latency_us_bucket", (("le", "1000.0"), *simple))] == 7
    assert samples[("nv_inference_request_latency_us_sum", simple)] == 7 * 500
    assert samples[("nv_inference_request_duration_us_total", simple)] == 7 * 500  # the parser adds _total


def test_device_wide_gpu_gauges_take_the_largest_reading_and_extra_families_follow() -> None:
    gauge = "# HELP nv_gpu_memory_used_bytes GPU used memory\n# TYPE nv_gpu_memory_used_bytes gauge\n"
    one = gauge + 'nv_gpu_memory_used_bytes{gpu_uuid="GPU-1"} 100.0\n'
    two = gauge + 'nv_gpu_memory_used_bytes{gpu_uuid="GPU-1"} 300.0\n'
    pending = ("# HELP nv_inference_pending_request_count pending\n# TYPE nv_inference_pending_request_count gauge\n"
               'nv_inference_pending_request_count{model="m",version="1"} 2.0\n')
    from prometheus_client.metrics_core import Metric

    restarts = Metric("v2server_worker_restarts", "restarts", "counter")
    restarts.add_sample("v2server_worker_restarts", {"worker": "0"}, 1)
    text = sum_expositions([one + pending, two + pending], [restarts]).decode()
    samples = _samples(text)
    assert samples[("nv_gpu_memory_used_bytes", (("gpu_uuid", "GPU-1"),))] == 300
    assert samples[("nv_inference_pending_request_count", (("model", "m"), ("version", "1")))] == 4
    assert "# TYPE v2server_worker_restarts counter\n" in text
    assert 'v2server_worker_restarts{worker="0"} 1.0' in text


def test_no_worker_answered() -> None:
    assert sum_expositions([]) == b""
