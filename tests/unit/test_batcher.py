"""The dynamic batcher: batch formation, queue policy, priorities, ordering, failures and shutdown.

No test depends on how fast the machine is: a fake model records the batches it is given and can be held at a
gate, and tests assert orders and counts. A preferred batch is shown not to wait by a 10 s queue delay that a
5 s bound would expose; a partial batch is shown to run after a short delay by completing at all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np
import pytest

from v2server._proto import model_config_pb2 as mc
from v2server.batching import BatchResult, DynamicBatcher
from v2server.datatypes import DATATYPES
from v2server.errors import DeadlineExceeded, InferenceFailed, InvalidRequest, ModelNotReady, QueueFull
from v2server.tensors import Tensor

FP32 = DATATYPES["FP32"]
LONG_DELAY_US = 10_000_000  # 10 s: a batch that waited for it would trip the 5 s bound of `_results`
SHORT_DELAY_US = 20_000


def _compute(name: str, array: np.ndarray) -> np.ndarray:
    """What the fake model returns for each output name, row by row."""
    if name == "OUTPUT":
        doubled: np.ndarray = array * 2 + 1
        return doubled
    sums: np.ndarray = array.sum(axis=1, keepdims=True)
    return sums


class FakeModel:
    """A runner that records each batch (the request ids in it) and waits at a gate before answering.

    A request's id is the value its input is filled with. ``gates`` holds a gate per id of a batch's first
    request; other batches wait at ``gate``, which is open unless the model is built ``held``.
    """

    def __init__(self, held: bool = False) -> None:
        self.gate = asyncio.Event()
        if not held:
            self.gate.set()
        self.gates: dict[float, asyncio.Event] = {}
        self.batches: list[list[float]] = []
        self.sizes: list[int] = []
        self.widths: list[int] = []
        self.output_names: list[list[str]] = []
        self.fail_ids: set[float] = set()
        self.active = self.max_active = 0

    async def __call__(self, inputs: list[Tensor], outputs: list[str], batch_size: int) -> tuple[list[Tensor], int]:
        array = inputs[0].array
        ids = list(dict.fromkeys(float(value) for value in array[:, 0]))
        self.batches.append(ids)
        self.sizes.append(batch_size)
        self.widths.append(array.shape[1])
        self.output_names.append(outputs)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.gates.get(ids[0], self.gate).wait()
        finally:
            self.active -= 1
        if self.fail_ids.intersection(ids):
            raise RuntimeError(f"model failed on {ids}")
        return [Tensor(name, FP32, _compute(name, array)) for name in outputs], batch_size

    def release(self) -> None:
        self.gate.set()
        for gate in self.gates.values():
            gate.set()


Make = Callable[..., DynamicBatcher]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Builds batchers over a model; at teardown opens every gate and closes them."""
    made: list[tuple[DynamicBatcher, FakeModel]] = []

    def factory(
        model: FakeModel, max_batch_size: int = 8, concurrency: int = 1, **config: Any
    ) -> DynamicBatcher:
        batcher = DynamicBatcher("m", mc.ModelDynamicBatching(**config), max_batch_size, model, concurrency)
        made.append((batcher, model))
        return batcher

    yield factory
    for batcher, model in made:
        model.release()
        await batcher.close()


def _inputs(ident: float, rows: int = 1, width: int = 2) -> list[Tensor]:
    return [Tensor("INPUT", FP32, np.full((rows, width), ident, dtype=np.float32))]


def _submit(
    batcher: DynamicBatcher,
    ident: float,
    rows: int = 1,
    width: int = 2,
    outputs: Sequence[str] = ("OUTPUT",),
    **options: int,
) -> asyncio.Task[BatchResult]:
    return asyncio.create_task(batcher.submit(_inputs(ident, rows, width), list(outputs), rows, **options))


async def _results(*tasks: asyncio.Task[BatchResult]) -> list[BatchResult]:
    return list(await asyncio.wait_for(asyncio.gather(*tasks), 5))


async def _until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds (a bounded number of turns, no clock)."""
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def _policy(**fields: Any) -> mc.ModelQueuePolicy:
    return mc.ModelQueuePolicy(**fields)


# Batch formation


async def test_preferred_size_runs_without_waiting_for_the_delay(make: Make) -> None:
    model = FakeModel()
    batcher = make(model, preferred_batch_size=[4], max_queue_delay_microseconds=LONG_DELAY_US)
    results = await _results(*(_submit(batcher, i) for i in range(4)))
    assert model.sizes == [4]
    assert [result.batch_size for result in results] == [4, 4, 4, 4]


async def test_largest_preferred_size_that_fits_runs_first(make: Make) -> None:
    model = FakeModel()
    batcher = make(model, preferred_batch_size=[2, 4], max_queue_delay_microseconds=LONG_DELAY_US)
    await _results(*(_submit(batcher, i) for i in range(6)))
    assert model.sizes == [4, 2]
    assert model.batches == [[0, 1, 2, 3], [4, 5]]


async def test_request_at_least_the_largest_preferred_size_runs_alone_at_once(make: Make) -> None:
    model = FakeModel()
    batcher = make(model, preferred_batch_size=[2, 4], max_queue_delay_microseconds=LONG_DELAY_US)
    (result,) = await _results(_submit(batcher, 1, rows=5))
    assert model.sizes == [5]
    assert result.batch_size == 5


async def test_full_batch_runs_at_once_without_preferred_sizes(make: Make) -> None:
    model = FakeModel()
    batcher = make(model, max_batch_size=4, max_queue_delay_microseconds=LONG_DELAY_US)
    await _results(*(_submit(batcher, i) for i in range(8)))
    assert model.sizes == [4, 4]


async def test_max_batch_size_is_never_exceeded(make: Make) -> None:
    model = FakeModel()
    batcher = make(model, max_batch_size=4, max_queue_delay_microseconds=SHORT_DELAY_US)
    await _results(*(_submit(batcher, i) for i in range(10)))
    assert model.sizes == [4, 4, 2]


async def test_request_that_does_not_fit_goes_to_the_next_batch(make: Make) -> None:
    model = FakeModel()
    batcher = make(model, max_batch_size=4, max_queue_delay_microseconds=LONG_DELAY_US)
    # 3 cannot grow (3 + 2 > 4), so it runs at once; then 2 + 2 fills the next batch.
    await _results(_submit(batcher, 1, rows=3), _submit(batcher, 2, rows=2), _submit(batcher, 3, rows=2))
    assert model.batches == [[1], [2, 3]]
    assert model.sizes == [3, 4]


async def test_partial_batch_waits_for_the_delay_then_runs(make: Make) -> None:
    model = FakeModel()
    batcher = make(model, preferred_batch_size=[4], max_queue_delay_microseconds=SHORT_DELAY_US)
    first = _submit(batcher, 1)
    await _until(lambda: batcher.queued == 1)
    for _ in range(20):  # the scheduler has seen the lone request many times without running it
        await asyncio.sleep(0)
    assert model.sizes == []
    second = _submit(batcher, 2)
    await _results(first, second)
    assert model.sizes == [2]  # neither preferred nor full: it ran when the delay had passed


async def test_delay_zero_runs_whatever_is_queued(make: Make) -> None:
    model = FakeModel()
    batcher = make(model, preferred_batch_size=[4])
    await _results(_submit(batcher, 1))
    await _results(_submit(batcher, 2))
    await _results(_submit(batcher, 3), _submit(batcher, 4))  # both queued before the scheduler looked
    assert model.sizes == [1, 1, 2]


async def test_requests_with_different_shapes_are_not_mixed(make: Make) -> None:
    model = FakeModel()
    batcher = make(model, max_queue_delay_microseconds=SHORT_DELAY_US)
    tasks = [_submit(batcher, i, width=2 if i % 2 else 3) for i in range(4)]
    await _results(*tasks)
    assert sorted(zip(model.widths, model.batches, strict=True)) == [(2, [1, 3]), (3, [0, 2])]


async def test_requests_for_different_outputs_are_not_mixed(make: Make) -> None:
    model = FakeModel()
    batcher = make(model, max_queue_delay_microseconds=SHORT_DELAY_US)
    plain = [_submit(batcher, i) for i in (1, 2)]
    extra = [_submit(batcher, i, outputs=("OUTPUT", "EXTRA")) for i in (3, 4)]
    results = await _results(*plain, *extra)
    assert sorted(zip(model.batches, model.output_names, strict=True)) == [
        ([1, 2], ["OUTPUT"]),
        ([3, 4], ["OUTPUT", "EXTRA"]),
    ]
    assert [[tensor.name for tensor in result.outputs] for result in results] == [
        ["OUTPUT"],
        ["OUTPUT"],
        ["OUTPUT", "EXTRA"],
        ["OUTPUT", "EXTRA"],
    ]


async def test_batched_answers_equal_answers_alone(make: Make) -> None:
    model = FakeModel()
    batcher = make(model, preferred_batch_size=[6], max_queue_delay_microseconds=LONG_DELAY_US)
    rng = np.random.default_rng(0)
    requests = [rng.standard_normal((rows, 3)).astype(np.float32) for rows in (1, 2, 3)]
    tasks = [
        asyncio.create_task(
            batcher.submit([Tensor("INPUT", FP32, array)], ["OUTPUT", "EXTRA"], array.shape[0])
        )
        for array in requests
    ]
    results = await _results(*tasks)
    assert model.sizes == [6]
    for array, result in zip(requests, results, strict=True):
        assert result.batch_size == 6
        assert result.queue_ns >= 0
        for tensor in result.outputs:
            assert tensor.datatype is FP32
            np.testing.assert_array_equal(tensor.array, _compute(tensor.name, array))


async def test_concurrency_runs_batches_in_parallel(make: Make) -> None:
    model = FakeModel(held=True)
    batcher = make(model, max_batch_size=1, concurrency=2)
    tasks = [_submit(batcher, i) for i in range(3)]
    await _until(lambda: model.active == 2)
    for _ in range(20):
        await asyncio.sleep(0)
    assert model.max_active == 2  # never a third
    assert batcher.queued == 1
    model.release()
    await _results(*tasks)
    assert model.batches == [[0], [1], [2]]
    assert model.max_active == 2


async def test_one_batch_at_a_time_by_default(make: Make) -> None:
    model = FakeModel()
    batcher = make(model, max_batch_size=1)
    await _results(*(_submit(batcher, i) for i in range(4)))
    assert model.max_active == 1
    assert model.batches == [[0], [1], [2], [3]]


# Queue policy


async def test_full_queue_rejects(make: Make) -> None:
    model = FakeModel(held=True)
    batcher = make(model, default_queue_policy=_policy(max_queue_size=2))
    running = _submit(batcher, 1)
    await _until(lambda: model.sizes == [1])
    queued = [_submit(batcher, 2), _submit(batcher, 3)]
    await _until(lambda: batcher.queued == 2)
    with pytest.raises(QueueFull, match=r"^model 'm' queue is full \(max_queue_size 2\)$"):
        await batcher.submit(_inputs(4), ["OUTPUT"], 1)
    model.release()
    await _results(running, *queued)
    assert model.batches == [[1], [2, 3]]


async def test_timeout_reject_fails_the_request_in_the_queue(make: Make) -> None:
    model = FakeModel(held=True)
    batcher = make(
        model,
        priority_levels=2,
        default_priority_level=1,
        priority_queue_policy={2: _policy(default_timeout_microseconds=1000)},
    )
    running = _submit(batcher, 1)
    await _until(lambda: model.sizes == [1])
    late = _submit(batcher, 2, priority=2)
    with pytest.raises(DeadlineExceeded, match=r"timed out in the queue after 1000 us"):
        await asyncio.wait_for(late, 5)
    assert not running.done()
    assert batcher.queued == 0
    model.release()
    await _results(running)
    assert model.batches == [[1]]


async def test_timeout_delay_moves_the_request_behind_those_in_time(make: Make) -> None:
    model = FakeModel(held=True)
    policy = _policy(
        timeout_action=mc.ModelQueuePolicy.DELAY,
        default_timeout_microseconds=LONG_DELAY_US,
        allow_timeout_override=True,
    )
    batcher = make(model, max_batch_size=1, default_queue_policy=policy)
    running = _submit(batcher, 1)
    await _until(lambda: model.sizes == [1])
    delayed = _submit(batcher, 2, timeout_us=1000)
    in_time = _submit(batcher, 3)
    await asyncio.sleep(0.05)  # well past the 1 ms timeout of request 2
    assert not delayed.done()  # DELAY keeps it queued
    later = _submit(batcher, 4)  # arrives after the timeout, yet still goes first
    await _until(lambda: batcher.queued == 3)
    model.release()
    await _results(running, delayed, in_time, later)
    assert model.batches == [[1], [3], [4], [2]]


@pytest.mark.parametrize(
    ("allow", "default_us", "request_us", "rejected"),
    [
        pytest.param(False, LONG_DELAY_US, 1000, False, id="override-not-allowed"),
        pytest.param(True, LONG_DELAY_US, 1000, True, id="shorter-override-used"),
        pytest.param(True, 1000, LONG_DELAY_US, True, id="longer-override-ignored"),
        pytest.param(True, 0, 1000, False, id="no-default-timeout-no-override"),
    ],
)
async def test_allow_timeout_override(
    make: Make, allow: bool, default_us: int, request_us: int, rejected: bool
) -> None:
    model = FakeModel(held=True)
    policy = _policy(default_timeout_microseconds=default_us, allow_timeout_override=allow)
    batcher = make(model, priority_levels=2, default_priority_level=1, priority_queue_policy={2: policy})
    running = _submit(batcher, 1)
    await _until(lambda: model.sizes == [1])
    request = _submit(batcher, 2, priority=2, timeout_us=request_us)
    await asyncio.sleep(0.05)  # well past 1 ms
    assert request.done() is rejected
    model.release()
    if rejected:
        with pytest.raises(DeadlineExceeded):
            await request
    else:
        await _results(request)
    await _results(running)


# Priorities


async def test_higher_priority_levels_are_drained_first(make: Make) -> None:
    model = FakeModel(held=True)
    batcher = make(model, max_batch_size=1, priority_levels=3, default_priority_level=2)
    running = _submit(batcher, 0, priority=1)
    await _until(lambda: model.sizes == [1])
    queued = [
        _submit(batcher, 1, priority=3),
        _submit(batcher, 2),  # priority 0: the default level, 2
        _submit(batcher, 3, priority=1),
        _submit(batcher, 4, priority=3),
        _submit(batcher, 5, priority=2),
    ]
    await _until(lambda: batcher.queued == 5)
    model.release()
    await _results(running, *queued)
    assert model.batches == [[0], [3], [2], [5], [1], [4]]


async def test_priority_above_the_levels_is_invalid(make: Make) -> None:
    batcher = make(FakeModel(), priority_levels=2)
    with pytest.raises(InvalidRequest, match=r"priority 3 is outside 1\.\.2"):
        await batcher.submit(_inputs(1), ["OUTPUT"], 1, priority=3)
    assert batcher.queued == 0


async def test_priority_is_ignored_without_priority_levels(make: Make) -> None:
    batcher = make(FakeModel())
    (result,) = await _results(_submit(batcher, 1, priority=7))
    assert result.batch_size == 1


async def test_batch_size_above_max_batch_size_is_invalid(make: Make) -> None:
    batcher = make(FakeModel(), max_batch_size=4)
    with pytest.raises(InvalidRequest, match=r"batch size 5 is outside 1\.\.4"):
        await batcher.submit(_inputs(1, rows=5), ["OUTPUT"], 5)


# Ordering, failures, cancellation, shutdown


@pytest.mark.parametrize("preserve", [True, False])
async def test_preserve_ordering(make: Make, preserve: bool) -> None:
    model = FakeModel()
    model.gates = {1.0: asyncio.Event(), 2.0: asyncio.Event()}
    batcher = make(model, max_batch_size=1, concurrency=2, preserve_ordering=preserve)
    finished: list[int] = []
    first, second = _submit(batcher, 1), _submit(batcher, 2)
    first.add_done_callback(lambda _: finished.append(1))
    second.add_done_callback(lambda _: finished.append(2))
    await _until(lambda: model.active == 2)
    model.gates[2.0].set()  # the later batch finishes first
    await _until(lambda: model.active == 1)
    for _ in range(20):
        await asyncio.sleep(0)
    assert second.done() is not preserve
    model.gates[1.0].set()
    await _results(first, second)
    assert finished == ([1, 2] if preserve else [2, 1])


async def test_failing_run_fails_every_request_of_its_batch_and_the_next_batch_works(make: Make) -> None:
    model = FakeModel()
    model.fail_ids = {1.0}
    batcher = make(model, preferred_batch_size=[2], max_queue_delay_microseconds=LONG_DELAY_US)
    tasks = [_submit(batcher, 1), _submit(batcher, 2)]
    done, _ = await asyncio.wait(tasks, timeout=5)
    assert len(done) == 2
    errors = [task.exception() for task in tasks]
    assert all(isinstance(error, RuntimeError) for error in errors)
    assert errors[0] is errors[1]
    assert "model failed on [1.0, 2.0]" in str(errors[0])
    await _results(_submit(batcher, 3), _submit(batcher, 4))
    assert model.batches == [[1, 2], [3, 4]]


async def test_output_with_the_wrong_rows_fails_the_batch(make: Make) -> None:
    async def short(inputs: list[Tensor], outputs: list[str], batch_size: int) -> tuple[list[Tensor], None]:
        return [Tensor("OUTPUT", FP32, np.zeros((batch_size - 1, 2), dtype=np.float32))], None

    batcher = DynamicBatcher("m", mc.ModelDynamicBatching(preferred_batch_size=[2]), 8, short)
    try:
        tasks = [_submit(batcher, 1), _submit(batcher, 2)]
        for task in tasks:
            with pytest.raises(InferenceFailed, match=r"model output 'OUTPUT' has 1 rows for a batch of 2"):
                await asyncio.wait_for(task, 5)
    finally:
        await batcher.close()


async def test_cancelled_submitter_is_removed_from_the_queue(make: Make) -> None:
    model = FakeModel(held=True)
    batcher = make(model)
    running = _submit(batcher, 1)
    await _until(lambda: model.sizes == [1])
    cancelled, kept = _submit(batcher, 2), _submit(batcher, 3)
    await _until(lambda: batcher.queued == 2)
    cancelled.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cancelled
    assert batcher.queued == 1
    model.release()
    await _results(running, kept)
    assert model.batches == [[1], [3]]


async def test_close_fails_queued_requests_and_lets_running_batches_finish(make: Make) -> None:
    model = FakeModel(held=True)
    batcher = make(model)
    running = _submit(batcher, 1)
    await _until(lambda: model.sizes == [1])
    queued = _submit(batcher, 2)
    await _until(lambda: batcher.queued == 1)
    closing = asyncio.create_task(batcher.close())
    with pytest.raises(ModelNotReady, match="unloaded before the request ran"):
        await asyncio.wait_for(queued, 5)
    assert not closing.done()  # waits for the running batch
    model.release()
    await asyncio.wait_for(closing, 5)
    (result,) = await _results(running)
    assert result.batch_size == 1
    with pytest.raises(ModelNotReady, match="not accepting requests"):
        await batcher.submit(_inputs(3), ["OUTPUT"], 1)
    assert model.batches == [[1]]


def test_built_outside_a_running_loop() -> None:
    """The registry may build a batcher before its loop runs: asyncio objects come with the first request."""

    async def echo(inputs: list[Tensor], outputs: list[str], batch_size: int) -> tuple[list[Tensor], None]:
        return [Tensor(name, FP32, inputs[0].array) for name in outputs], None

    batcher = DynamicBatcher("m", mc.ModelDynamicBatching(), 4, echo)

    async def use() -> BatchResult:
        try:
            return await batcher.submit(_inputs(1), ["OUTPUT"], 1)
        finally:
            await batcher.close()

    result = asyncio.run(use())
    assert result.outputs[0].array.tolist() == [[1.0, 1.0]]


# Queue delays shorter than the loop's timer resolution


async def test_a_sub_millisecond_delay_is_one_pass_of_the_loop_not_a_spin(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvloop counts timers in whole milliseconds: a 500 us wait made of timers re-armed itself on every pass
    (a spinning core). The batch now waits one pass for requests already read, then runs: no timer at all."""
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    arm = loop.call_later

    def counted(delay: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        if delay < 1:  # not the tests' own 5 s bound
            timers.append(delay)
        return arm(delay, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_later", counted)
    model = FakeModel()
    batcher = make(model, preferred_batch_size=[4], max_queue_delay_microseconds=500)
    await _results(_submit(batcher, 1))
    assert model.sizes == [1] and timers == []
    # requests that arrive in the same pass still make one batch
    await _results(*(_submit(batcher, i) for i in (2, 3)))
    assert model.sizes[1:] == [2] and timers == []


async def test_a_delay_of_milliseconds_still_waits_for_company(make: Make) -> None:
    model = FakeModel()
    batcher = make(model, preferred_batch_size=[4], max_queue_delay_microseconds=LONG_DELAY_US)
    first = _submit(batcher, 1)
    await asyncio.sleep(0.05)  # well inside the delay: the first request must still be queued
    assert model.sizes == [] and batcher.queued == 1
    rest = [_submit(batcher, i) for i in (2, 3, 4)]
    await _results(first, *rest)
    assert model.sizes == [4]
