"""Triton's statistics semantics: what a request and an execution count, and how it reads back."""

from __future__ import annotations

import dataclasses
import re
import time

import pytest

from v2server._proto import grpc_service_pb2 as pb
from v2server.statistics import DEFAULT_BUCKETS_US, VersionStatistics, parse_buckets

MS = 1_000_000  # ns


def served(
    stats: VersionStatistics, batch_size: int = 1, request_ns: int = 4 * MS, queue_ns: int = MS
) -> None:
    """One successful request that ran alone in its own execution."""
    stats.request_started()
    stats.execution(batch_size, 10_000, 2 * MS, 20_000)
    stats.request_finished(True, batch_size, request_ns, queue_ns, 10_000, 2 * MS, 20_000)


def test_fresh_statistics_are_zero() -> None:
    proto = VersionStatistics("m", 3).to_proto()
    assert proto.name == "m"
    assert proto.version == "3"
    assert (proto.last_inference, proto.inference_count, proto.execution_count) == (0, 0, 0)
    for field in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
                  "cache_hit", "cache_miss"):  # fmt: skip
        assert getattr(proto.inference_stats, field) == pb.StatisticDuration(count=0, ns=0)
    assert list(proto.batch_stats) == []
    assert list(proto.memory_usage) == []


def test_success_counts_request_queue_and_compute() -> None:
    stats = VersionStatistics("m", 1)
    stats.request_started()
    stats.request_finished(True, 4, request_ns=5 * MS, queue_ns=MS, compute_input_ns=100,
                           compute_infer_ns=3 * MS, compute_output_ns=200)  # fmt: skip
    s = stats.to_proto().inference_stats
    assert (s.success.count, s.success.ns) == (1, 5 * MS)
    assert (s.queue.count, s.queue.ns) == (1, MS)
    assert (s.compute_input.count, s.compute_input.ns) == (1, 100)
    assert (s.compute_infer.count, s.compute_infer.ns) == (1, 3 * MS)
    assert (s.compute_output.count, s.compute_output.ns) == (1, 200)
    assert (s.fail.count, s.fail.ns) == (0, 0)
    assert stats.inference_count == 4


def test_failure_counts_only_fail() -> None:
    stats = VersionStatistics("m", 1)
    stats.request_started()
    stats.request_finished(False, 4, request_ns=7 * MS, queue_ns=MS, compute_input_ns=1,
                           compute_infer_ns=1, compute_output_ns=1)  # fmt: skip
    proto = stats.to_proto()
    assert (proto.inference_stats.fail.count, proto.inference_stats.fail.ns) == (1, 7 * MS)
    for field in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert getattr(proto.inference_stats, field).count == 0
    assert (proto.inference_count, proto.last_inference) == (0, 0)
    assert stats.request_latency.count == 0
    assert stats.pending == 0


def test_inference_count_adds_batch_sizes_and_counts_unbatched_requests_once() -> None:
    stats = VersionStatistics("m", 1)
    for batch_size in (8, 3, 0):  # 0: a model that does not batch
        served(stats, batch_size)
    assert stats.inference_count == 8 + 3 + 1
    assert stats.to_proto().inference_stats.success.count == 3


def test_pending_counts_requests_in_flight() -> None:
    stats = VersionStatistics("m", 1)
    stats.request_started()
    stats.request_started()
    assert stats.pending == 2
    assert stats.snapshot().pending == 2
    stats.request_finished(False, 1, MS, 0, 0, 0, 0)
    assert stats.pending == 1
    stats.request_finished(True, 1, MS, 0, 0, 0, 0)
    assert stats.pending == 0


def test_last_inference_is_the_finish_time_in_epoch_ms() -> None:
    stats = VersionStatistics("m", 1)
    before = time.time_ns() // MS
    served(stats)
    after = time.time_ns() // MS
    assert before <= stats.to_proto().last_inference <= after


def test_executions_group_by_batch_size_sorted() -> None:
    stats = VersionStatistics("m", 1)
    stats.execution(4, 10, 100, 1000)
    stats.execution(1, 1, 2, 3)
    stats.execution(4, 20, 200, 2000)
    stats.execution(0, 1, 2, 3)  # a model that does not batch: Triton's row 1
    proto = stats.to_proto()
    assert proto.execution_count == 4
    assert proto.inference_count == 0  # executions count executions, requests count inferences
    assert [b.batch_size for b in proto.batch_stats] == [1, 4]
    one, four = proto.batch_stats
    assert (one.compute_input.count, one.compute_input.ns) == (2, 2)
    assert (one.compute_infer.count, one.compute_infer.ns) == (2, 4)
    assert (one.compute_output.count, one.compute_output.ns) == (2, 6)
    assert (four.compute_input.count, four.compute_input.ns) == (2, 30)
    assert (four.compute_infer.count, four.compute_infer.ns) == (2, 300)
    assert (four.compute_output.count, four.compute_output.ns) == (2, 3000)


def test_one_execution_serving_several_requests() -> None:
    """A dynamic batch of three requests: one execution, three successes, their batch sizes summed."""
    stats = VersionStatistics("m", 1)
    for _ in range(3):
        stats.request_started()
    stats.execution(6, 10, 100, 1000)
    for batch_size in (1, 2, 3):
        stats.request_finished(True, batch_size, 5 * MS, MS, 10, 100, 1000)
    proto = stats.to_proto()
    assert (proto.execution_count, proto.inference_count) == (1, 6)
    assert proto.inference_stats.success.count == 3
    assert proto.inference_stats.compute_infer.ns == 300  # each request is charged its batch's time
    assert [(b.batch_size, b.compute_infer.count) for b in proto.batch_stats] == [(6, 1)]


def test_histograms_are_cumulative_in_microseconds() -> None:
    stats = VersionStatistics("m", 1, buckets_us=(100, 1000, 10_000))
    for request_us, queue_us in ((50, 10), (100, 10), (999, 200), (5000, 2000), (20_000, 20_000)):
        stats.request_started()
        stats.request_finished(True, 1, request_us * 1000, queue_us * 1000, 0, 0, 0)
    request = stats.snapshot().request_latency
    assert request.bounds == (100.0, 1000.0, 10_000.0)
    assert request.cumulative == (2, 3, 4, 5)  # <=100 (the bound itself included), <=1000, <=10000, +Inf
    assert request.count == 5
    assert request.sum == pytest.approx(50 + 100 + 999 + 5000 + 20_000)
    queue = stats.snapshot().queue_latency
    assert queue.cumulative == (2, 3, 4, 5)
    assert queue.sum == pytest.approx(22_220)


def test_default_buckets_are_sorted_microseconds() -> None:
    assert list(DEFAULT_BUCKETS_US) == sorted(set(DEFAULT_BUCKETS_US))
    assert DEFAULT_BUCKETS_US[0] == 100 and DEFAULT_BUCKETS_US[-1] == 5_000_000
    assert VersionStatistics("m", 1).snapshot().request_latency.bounds == DEFAULT_BUCKETS_US


def test_snapshot_is_a_frozen_copy() -> None:
    stats = VersionStatistics("m", 1)
    served(stats, 2)
    snap = stats.snapshot()
    served(stats, 2)
    assert (snap.inference_count, snap.success[0], snap.batches[0].count) == (2, 1, 1)
    assert snap.request_latency.count == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.inference_count = 0  # type: ignore[misc]
    assert snap.to_proto().inference_count == 2


def test_to_proto_serialises_with_triton_field_types() -> None:
    stats = VersionStatistics("resnet", 12)
    served(stats, 2)
    proto = stats.to_proto()
    assert isinstance(proto, pb.ModelStatistics)
    assert isinstance(proto.version, str) and proto.version == "12"
    assert isinstance(proto.last_inference, int) and proto.last_inference > 0
    assert pb.ModelStatistics.FromString(proto.SerializeToString()) == proto
    response = pb.ModelStatisticsResponse(model_stats=[proto])
    assert response.model_stats[0].batch_stats[0].batch_size == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100,500,1000", (100.0, 500.0, 1000.0)),
        (" 1000 , 100,500 ", (100.0, 500.0, 1000.0)),
        ("250,250,2.5e3", (250.0, 2500.0)),
        ("0.5", (0.5,)),
    ],
)
def test_parse_buckets(text: str, expected: tuple[float, ...]) -> None:
    assert parse_buckets(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "got nothing"),
        (" , ", "got nothing"),
        ("100,fast", "'fast' is not a number"),
        ("100,,1000", "'' is not a number"),
        ("0,100", "'0' is not positive"),
        ("-5", "'-5' is not positive"),
        ("100,+Inf", "'+Inf' is not finite"),
        ("nan", "'nan' is not finite"),
    ],
)
def test_parse_buckets_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_buckets(text)


@pytest.mark.parametrize("buckets", [(), (1000, 100), (100, 100), (0, 100), (100, float("inf"))])
def test_bad_histogram_buckets_are_rejected(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="histogram buckets"):
        VersionStatistics("m", 1, buckets_us=buckets)
