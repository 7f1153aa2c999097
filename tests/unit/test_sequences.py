"""The sequence batcher: slots, strategies, control inputs, implicit state, idle expiry, bounds and errors.

Time is a fake clock the test advances (its timers fire when it does), so nothing depends on how fast the
machine is; a fake model records every batch it is given and answers like Triton's sequence models, with a
gate a test can hold to see what queues meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format

from v2server._proto import model_config_pb2 as mc
from v2server.batching import BatchResult
from v2server.datatypes import DATATYPES
from v2server.errors import InferenceFailed, InvalidRequest, ModelNotReady, QueueFull
from v2server.sequences import SequenceBatcher, SequenceControl, SequenceSpec, complete_sequence_batching
from v2server.tensors import Tensor

INT32 = DATATYPES["INT32"]
IDLE_US = 5_000_000


def _config(scheduling: str, max_batch_size: int = 4, extra: str = "") -> mc.ModelConfig:
    text = f"""
        name: "seq" max_batch_size: {max_batch_size}
        input [ {{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
        output [ {{ name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
        sequence_batching {{
          max_sequence_idle_microseconds: {IDLE_US}
          {scheduling}
          control_input [
            {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }},
            {{ name: "END" control [ {{ kind: CONTROL_SEQUENCE_END fp32_false_true: [ 0, 1 ] }} ] }},
            {{ name: "READY" control [ {{ kind: CONTROL_SEQUENCE_READY bool_false_true: [ false, true ] }} ] }}
          ]
          {extra}
        }}
    """
    config = text_format.Parse(text, mc.ModelConfig())
    complete_sequence_batching(config)
    return config


_CORRID = 'control_input [ { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE } ] } ]'
CORRID_INT = _CORRID.replace("TYPE", "TYPE_UINT64")
CORRID_STR = _CORRID.replace("TYPE", "TYPE_STRING")
STATE = (
    'state [ { input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_INT32 dims: [ 1 ] '
    'initial_state: { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true name: "zero" } } ]'
)


class FakeClock:
    """Time that moves only when the test says; timers fire, in order, as it passes them."""

    @dataclass(eq=False)
    class _Timer:
        at: int
        callback: Callable[[], object]
        cancelled: bool = False

        def cancel(self) -> None:
            self.cancelled = True

    def __init__(self) -> None:
        self.now = 0
        self.timers: list[FakeClock._Timer] = []

    def now_ns(self) -> int:
        return self.now

    def call_later(self, delay_s: float, callback: Callable[[], object]) -> FakeClock._Timer:
        timer = self._Timer(self.now + round(delay_s * 1e9), callback)
        self.timers.append(timer)
        return timer

    @property
    def pending(self) -> list[FakeClock._Timer]:
        return [t for t in self.timers if not t.cancelled and t.at > self.now]

    def advance(self, ns: int) -> None:
        target = self.now + ns
        while True:
            due = sorted((t for t in self.timers if not t.cancelled and t.at <= target), key=lambda t: t.at)
            if not due:
                break
            timer = due[0]
            self.timers.remove(timer)
            self.now = max(self.now, timer.at)
            timer.callback()
        self.now = target


@dataclass
class FakeModel:
    """Answers ``OUTPUT = READY * (INPUT + START + STATE_IN)``, ``STATE_OUT = OUTPUT``; records each batch."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    batches: list[dict[str, Any]] = field(default_factory=list)
    fail: bool = False

    def __post_init__(self) -> None:
        self.gate.set()

    async def __call__(
        self, index: int, inputs: list[Tensor], outputs: list[str], batch_size: int
    ) -> tuple[list[Tensor], str]:
        by_name = {t.name: t.array for t in inputs}
        self.batches.append({"instance": index, "size": batch_size, "outputs": outputs, **by_name})
        await self.gate.wait()
        if self.fail:
            raise InferenceFailed("the model failed")
        ready = by_name["READY"].astype(np.int32)
        value = ready * (by_name["INPUT"] + by_name["START"] + by_name.get("STATE_IN", 0))
        if "CORRID" in by_name and by_name["CORRID"].dtype != object:
            value = value + by_name["END"].astype(np.int32) * by_name["CORRID"].astype(np.int32)
        answers = {"OUTPUT": value.astype(np.int32), "STATE_OUT": value.astype(np.int32)}
        return [Tensor(name, INT32, answers[name]) for name in outputs], "info"


def _input(value: int, batched: bool = True) -> list[Tensor]:
    return [Tensor("INPUT", INT32, np.array([[value]] if batched else [value], dtype=np.int32))]


def _batcher(
    config: mc.ModelConfig, model: FakeModel, clock: FakeClock, instances: int = 1, **bounds: int
) -> SequenceBatcher:
    return SequenceBatcher(SequenceSpec.from_config(config), instances, model, clock=clock, **bounds)


async def _send(
    batcher: SequenceBatcher, sequence_id: int | str, value: int, *, start: bool = False, end: bool = False,
) -> BatchResult:
    return await batcher.submit(SequenceControl(sequence_id, start, end), _input(value), ["OUTPUT"], 1)


def _task(batcher: SequenceBatcher, sequence_id: int | str, value: int, **flags: bool) -> asyncio.Task[BatchResult]:
    return asyncio.ensure_future(_send(batcher, sequence_id, value, **flags))


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def _out(result: BatchResult) -> int:
    return int(result.outputs[0].array[0, 0])


# -- direct ------------------------------------------------------------------------------------------------------


async def test_direct_gives_each_sequence_a_row_and_null_rows_are_not_ready() -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = _batcher(_config(""), model, clock)
    model.gate.clear()
    first = _task(batcher, 1, 10, start=True)  # slot 0
    await _settle()
    second = _task(batcher, 2, 20, start=True)  # slot 1, queued while slot 0 runs
    third = _task(batcher, 1, 11)
    await _settle()
    model.gate.set()
    assert [_out(await t) for t in (first, second, third)] == [11, 21, 11]
    [one, two] = model.batches
    assert one["INPUT"].tolist() == [[10]] and one["READY"].tolist() == [[True]]
    assert two["INPUT"].tolist() == [[11], [20]]  # row i is slot i
    assert two["START"].tolist() == [[0], [1]] and two["START"].dtype == np.int32
    assert two["END"].tolist() == [[0.0], [0.0]] and two["END"].dtype == np.float32
    assert two["READY"].dtype == np.bool_
    fourth = _task(batcher, 2, 5, end=True)  # slot 1 alone: slot 0 runs a null row
    await _settle()
    assert _out(await fourth) == 5
    null = model.batches[-1]
    assert null["INPUT"].tolist() == [[0], [5]]
    assert null["READY"].tolist() == [[False], [True]] and null["END"].tolist() == [[0.0], [1.0]]
    assert null["size"] == 2


async def test_direct_runs_one_sequences_requests_in_order_one_per_batch() -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = _batcher(_config(""), model, clock)
    model.gate.clear()
    tasks = [_task(batcher, 7, value, start=value == 0, end=value == 3) for value in range(4)]
    await _settle()
    model.gate.set()
    assert [_out(await t) for t in tasks] == [1, 1, 2, 3]
    assert [b["INPUT"].tolist() for b in model.batches] == [[[0]], [[1]], [[2]], [[3]]]


async def test_direct_minimum_slot_utilization_waits_at_most_the_queue_delay() -> None:
    model, clock = FakeModel(), FakeClock()
    config = _config("direct { max_queue_delay_microseconds: 1000 minimum_slot_utilization: 0.5 }")
    batcher = _batcher(config, model, clock)
    first = _task(batcher, 1, 1, start=True)
    await _settle()
    assert model.batches == []  # 1 of 4 slots: below the utilization, within the delay
    second = _task(batcher, 2, 2, start=True)  # 2 of 4: enough
    await _settle()
    assert [await first, await second] and model.batches[0]["INPUT"].tolist() == [[1], [2]]
    alone = _task(batcher, 1, 3)
    await _settle()
    assert len(model.batches) == 1
    clock.advance(1_000_001)
    await _settle()
    assert _out(await alone) == 3 and len(model.batches) == 2


# -- oldest ------------------------------------------------------------------------------------------------------


OLDEST = "oldest { max_candidate_sequences: 4 preferred_batch_size: [ 2 ] max_queue_delay_microseconds: 1000 }"


async def test_oldest_batches_the_oldest_requests_of_several_sequences() -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = _batcher(_config(OLDEST), model, clock)
    first = _task(batcher, 1, 10, start=True)
    await _settle()
    assert model.batches == []  # one request, preferred is 2: it waits for the delay
    second = _task(batcher, 2, 20, start=True)
    await _settle()
    assert [_out(await first), _out(await second)] == [11, 21]
    assert model.batches[0]["INPUT"].tolist() == [[10], [20]] and model.batches[0]["READY"].all()
    late = _task(batcher, 1, 5)
    await _settle()
    clock.advance(999_000)
    await _settle()
    assert len(model.batches) == 1
    clock.advance(1_000)
    await _settle()
    assert _out(await late) == 5 and model.batches[1]["INPUT"].tolist() == [[5]]


async def test_oldest_takes_at_most_the_largest_preferred_size_in_arrival_order() -> None:
    model, clock = FakeModel(), FakeClock()
    config = _config(OLDEST.replace("max_candidate_sequences: 4", "max_candidate_sequences: 8"))
    batcher = _batcher(config, model, clock)
    started = [_task(batcher, sequence, 0, start=True) for sequence in (1, 2, 3)]  # slots 0, 1, 2
    await _settle()
    clock.advance(1_000_000)
    await _settle()
    await asyncio.gather(*started)
    model.gate.clear()
    blocker = [_task(batcher, 9, 0, start=True), _task(batcher, 8, 0, start=True)]
    await _settle()
    tasks = []
    for sequence in (3, 1, 2):  # arrival order differs from slot order
        clock.advance(10)
        tasks.append(_task(batcher, sequence, sequence))
        await _settle()
    model.gate.set()
    await asyncio.gather(*blocker, *tasks[:2])
    assert model.batches[-1]["INPUT"].tolist() == [[3], [1]]  # the two oldest of three
    assert not tasks[2].done()
    clock.advance(1_000_000)
    await _settle()
    assert _out(await tasks[2]) == 2


async def test_oldest_runs_one_request_of_a_sequence_at_a_time() -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = _batcher(_config(OLDEST), model, clock)
    tasks = [_task(batcher, 5, value, start=value == 1) for value in (1, 2)]
    await _settle()
    clock.advance(1_000_000)
    await _settle()
    clock.advance(1_000_000)
    await _settle()
    assert [_out(await t) for t in tasks] == [2, 2]
    assert [b["INPUT"].tolist() for b in model.batches] == [[[1]], [[2]]]


# -- controls, state, correlation ids ---------------------------------------------------------------------------


async def test_corrid_integer_is_filled_in_the_configured_type() -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = _batcher(_config("", extra=CORRID_INT), model, clock)
    assert _out(await _send(batcher, 1000, 1, start=True)) == 2
    assert _out(await _send(batcher, 1000, 1, end=True)) == 1001
    assert model.batches[-1]["CORRID"].tolist() == [[1000]] and model.batches[-1]["CORRID"].dtype == np.uint64
    with pytest.raises(InvalidRequest, match=r"^sequence batching control 'CORRID' data-type is 'BYTES', but model "
                       r"'seq' expects 'UINT64'$"):
        await _send(batcher, "abc", 1, start=True)


async def test_corrid_string_is_a_bytes_control() -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = _batcher(_config("", extra=CORRID_STR), model, clock)
    await _send(batcher, "req-1", 1, start=True, end=True)
    assert model.batches[-1]["CORRID"].tolist() == [[b"req-1"]]
    with pytest.raises(InvalidRequest, match="data-type is 'UINT64', but model 'seq' expects 'BYTES'"):
        await _send(batcher, 5, 1, start=True)


async def test_implicit_state_is_carried_per_sequence_and_reset_at_start() -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = _batcher(_config("", extra=STATE), model, clock)
    outputs = [_out(await _send(batcher, "a", value, start=value == 1)) for value in (1, 2, 3)]
    assert outputs == [2, 4, 7]  # START adds 1, then the state accumulates
    other = _out(await _send(batcher, "b", 10, start=True))
    assert other == 11  # its own state
    assert _out(await _send(batcher, "a", 1)) == 8
    assert _out(await _send(batcher, "a", 1, start=True)) == 2  # START again: back to the initial state
    assert model.batches[0]["STATE_IN"].tolist() == [[0]]
    assert all(b["outputs"] == ["OUTPUT", "STATE_OUT"] for b in model.batches)
    result = await _send(batcher, "a", 0)
    assert [t.name for t in result.outputs] == ["OUTPUT"]  # the state stays with the server


async def test_implicit_state_of_a_null_row_is_zeros() -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = _batcher(_config("", extra=STATE), model, clock)
    await _send(batcher, 1, 5, start=True)  # slot 0
    await _send(batcher, 2, 5, start=True)  # slot 1
    await _send(batcher, 2, 1)  # slot 0 is a null row
    assert model.batches[-1]["STATE_IN"].tolist() == [[0], [6]]


async def test_an_unbatched_model_gets_controls_without_a_batch_dimension() -> None:
    model, clock = FakeModel(), FakeClock()
    config = _config("", max_batch_size=0)
    batcher = SequenceBatcher(SequenceSpec.from_config(config), 1, model, clock=clock)
    result = await batcher.submit(SequenceControl(3, True, False), _input(4, batched=False), ["OUTPUT"], 0)
    assert result.outputs[0].array.tolist() == [5]
    assert model.batches[0]["START"].shape == (1,) and model.batches[0]["size"] == 0


# -- slots, backlog, expiry, bounds ----------------------------------------------------------------------------


async def test_each_instance_has_its_own_slots() -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = _batcher(_config("", max_batch_size=1), model, clock, instances=2)
    model.gate.clear()
    tasks = [_task(batcher, sequence, 1, start=True) for sequence in (1, 2)]
    await _settle()
    assert sorted(b["instance"] for b in model.batches) == [0, 1]  # both run at once, one per instance
    model.gate.set()
    await asyncio.gather(*tasks)


async def test_a_sequence_without_a_free_slot_waits_in_the_backlog_until_one_ends() -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = _batcher(_config("", max_batch_size=1), model, clock)
    await _send(batcher, 1, 1, start=True)
    waiting = _task(batcher, 2, 2, start=True)
    await _settle()
    assert not waiting.done() and len(model.batches) == 1
    await _send(batcher, 1, 1, end=True)
    assert _out(await waiting) == 3


async def test_an_idle_sequence_expires_and_frees_its_slot() -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = _batcher(_config("", max_batch_size=1), model, clock)
    await _send(batcher, 1, 1, start=True)
    waiting = _task(batcher, 2, 2, start=True)
    await _settle()
    clock.advance(IDLE_US * 1000 - 1)
    await _settle()
    assert not waiting.done() and batcher.sequences == 2
    clock.advance(1)
    await _settle()
    assert _out(await waiting) == 3  # sequence 1 expired: its slot went to the backlog
    with pytest.raises(InvalidRequest, match="for sequence 1 to model 'seq' must specify the START flag"):
        await _send(batcher, 1, 1)
    assert len(clock.pending) == 1  # one reaper timer, not one per request


async def test_a_request_resets_the_idle_time() -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = _batcher(_config(""), model, clock)
    await _send(batcher, 1, 1, start=True)
    clock.advance(IDLE_US * 1000 - 10)
    await _send(batcher, 1, 1)
    clock.advance(IDLE_US * 1000 - 10)
    await _send(batcher, 1, 1)
    assert batcher.sequences == 1
    clock.advance(IDLE_US * 1000)
    assert batcher.sequences == 0


async def test_the_backlog_and_the_queue_are_bounded() -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = _batcher(_config("", max_batch_size=1), model, clock, max_backlog=1, max_queued=3)
    await _send(batcher, 1, 1, start=True)
    waiting = _task(batcher, 2, 1, start=True)
    await _settle()
    with pytest.raises(QueueFull, match="every sequence slot is taken and 1 sequences wait"):
        await _send(batcher, 3, 1, start=True)
    more = [_task(batcher, 2, 1), _task(batcher, 2, 1)]
    await _settle()
    with pytest.raises(QueueFull, match="3 sequence requests are waiting"):
        await _send(batcher, 2, 1)
    clock.advance(IDLE_US * 1000)  # sequence 1 expires: sequence 2 takes its slot and runs
    await asyncio.gather(waiting, *more)


# -- wrong use and failures -------------------------------------------------------------------------------------


async def test_wrong_use_gets_tritons_errors() -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = _batcher(_config(""), model, clock)
    for control in (None, SequenceControl(0, True, False), SequenceControl("", True, False)):
        with pytest.raises(InvalidRequest, match=r"^inference request to model 'seq' must specify a non-zero or "
                           r"non-empty correlation ID$"):
            await batcher.submit(control, _input(1), ["OUTPUT"], 1)
    with pytest.raises(InvalidRequest, match=r"^inference request for sequence 5 to model 'seq' must specify the "
                       r"START flag on the first request of the sequence$"):
        await _send(batcher, 5, 1)
    await _send(batcher, 5, 1, start=True, end=True)
    with pytest.raises(InvalidRequest, match="for sequence 5 to model 'seq' must specify the START flag"):
        await _send(batcher, 5, 1)  # after END the id is unknown
    with pytest.raises(InvalidRequest, match="must specify batch-size 1 due to requirements of sequence batcher"):
        await batcher.submit(SequenceControl(6, True, False), _input(1), ["OUTPUT"], 2)


async def test_a_failed_batch_fails_its_requests_and_the_sequence_goes_on() -> None:
    model, clock = FakeModel(fail=True), FakeClock()
    batcher = _batcher(_config(""), model, clock)
    with pytest.raises(InferenceFailed):
        await _send(batcher, 1, 1, start=True)
    model.fail = False
    assert _out(await _send(batcher, 1, 2, end=True)) == 2


async def test_close_fails_queued_requests_and_refuses_new_ones() -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = _batcher(_config(""), model, clock)
    model.gate.clear()
    running = _task(batcher, 1, 1, start=True)
    await _settle()
    queued = _task(batcher, 1, 2)
    await _settle()
    closing = asyncio.ensure_future(batcher.close())
    await _settle()
    with pytest.raises(ModelNotReady):
        await queued
    model.gate.set()
    await closing
    assert _out(await running) == 2
    with pytest.raises(ModelNotReady):
        await _send(batcher, 2, 1, start=True)


async def test_a_cancelled_request_never_runs_and_an_abandoned_sequence_frees_its_slot() -> None:
    model, clock = FakeModel(), FakeClock()
    batcher = _batcher(_config("", max_batch_size=1), model, clock)
    model.gate.clear()
    first = _task(batcher, 1, 1, start=True)
    await _settle()
    last = _task(batcher, 1, 2, end=True)
    await _settle()
    last.cancel()
    await _settle()
    model.gate.set()
    await first
    assert len(model.batches) == 1 and batcher.queued == 0
    assert _out(await _send(batcher, 2, 1, start=True)) == 2  # the slot of sequence 1 was released
