"""Triton's sequence batcher: requests of one correlation id run in order in one slot of one model instance.

Each instance has ``slots_per_instance`` candidate slots (``max_batch_size``, at least 1, for ``direct``;
``max_candidate_sequences`` for ``oldest``). A sequence takes a free slot at its START request and keeps it
until its END request has run or it stays idle (no request queued or running) for
``max_sequence_idle_microseconds``; then the slot goes to the oldest sequence of the backlog, where new
sequences wait while every slot is taken. After an END, or once idle, the id is forgotten: a later request
without START gets Triton's "must specify the START flag" error.

Each instance runs one batch at a time, formed when the instance is free:

- ``direct``: row *i* of the batch is slot *i*, up to the highest slot with a request waiting; a slot with
  nothing to run gets a "null" row (zero inputs, READY false) so that every sequence keeps its row, which a
  model that keeps per-slot state relies on. With ``max_queue_delay_microseconds`` and
  ``minimum_slot_utilization`` set, the batch waits for that share of the slots, at most that long.
- ``oldest``: the oldest next requests of the instance's sequences, up to ``max_batch_size``, at once when they
  reach a preferred batch size (or the largest) or after ``max_queue_delay_microseconds``.

Before a batch runs the scheduler adds the control inputs (START, END, READY, CORRID) and each implicit state
input: the sequence's stored state, or its initial value at START. After it runs, each state output is
stored as the sequence's next state and left out of the answer.

Bounds (design rule 13): at most ``max_backlog`` sequences wait for a slot and ``max_queued`` requests wait
to run, across the model; past them a request is refused with ``QueueFull`` (503/UNAVAILABLE). Timers (the
batch delay, idle expiry) come from a :class:`Clock`, so tests can drive time; the scheduler never polls.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from v2server._proto import model_config_pb2 as mc
from v2server.batching import BatchResult, batch_key
from v2server.errors import InvalidRequest, ModelNotReady, QueueFull
from v2server.sequences._config import SequenceSpec
from v2server.sequences._request import SequenceControl, SequenceId
from v2server.tensors import Tensor

__all__ = ["DEFAULT_MAX_BACKLOG", "DEFAULT_MAX_QUEUED", "Clock", "LoopClock", "SequenceBatcher", "SlotRunner"]

log = logging.getLogger(__name__)

#: Sequences that may wait for a slot, and requests that may wait to run, per model version.
DEFAULT_MAX_BACKLOG = 1024
DEFAULT_MAX_QUEUED = 16384

_START = mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START
_END = mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_END

SlotRunner = Callable[[int, list[Tensor], list[str], int], Awaitable[tuple[list[Tensor], Any]]]
"""Runs one batch on one instance: ``(instance index, inputs, output names, batch size) -> (outputs, info)``."""


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Where the scheduler reads the time and sets its timers."""

    def now_ns(self) -> int: ...

    def call_later(self, delay_s: float, callback: Callable[[], object]) -> Timer: ...


class LoopClock:
    """The monotonic clock and the running event loop's timers."""

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def call_later(self, delay_s: float, callback: Callable[[], object]) -> Timer:
        return asyncio.get_running_loop().call_later(delay_s, callback)


@dataclass(eq=False, slots=True)
class _Request:
    inputs: list[Tensor]
    outputs: list[str]
    start: bool
    end: bool
    arrived_ns: int
    key: Hashable
    future: asyncio.Future[BatchResult]


@dataclass(eq=False, slots=True)
class _Sequence:
    id: SequenceId
    last_ns: int
    requests: deque[_Request] = field(default_factory=deque)
    slot: tuple[int, int] | None = None  # (instance, slot)
    states: dict[str, np.ndarray] | None = None  # state input name -> one row's value
    running: bool = False
    live: bool = True  # its id still reaches it (no END arrived, not expired)


@dataclass(eq=False, slots=True)
class _Row:
    sequence: _Sequence
    request: _Request


@dataclass(eq=False, slots=True)
class _Instance:
    index: int
    slots: list[_Sequence | None]
    running: bool = False
    timer: Timer | None = None


class SequenceBatcher:
    """Schedules the requests of one sequence-batched model version (the handle owns one)."""

    def __init__(
        self,
        spec: SequenceSpec,
        instances: int,
        run: SlotRunner,
        *,
        clock: Clock | None = None,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        """Args:
            spec: the model's parsed ``sequence_batching``.
            instances: how many model instances run batches (each has its own slots).
            run: executes one batch on one instance.
            clock: time and timers (the event loop's by default).
            max_backlog: sequences that may wait for a slot.
            max_queued: requests that may wait to run.
        """
        self._spec = spec
        self._name = spec.model
        self._run = run
        self._clock = clock or LoopClock()
        self._batched = spec.max_batch_size > 0
        self._limit = max(1, spec.max_batch_size)
        self._max_backlog = max_backlog
        self._max_queued = max_queued
        count = max(1, instances)
        self._instances = [_Instance(i, [None] * spec.slots_per_instance) for i in range(count)]
        # lowest slot first, spread over the instances: direct batches stay small
        self._free = [(slot, i) for slot in range(spec.slots_per_instance) for i in range(count)]
        heapq.heapify(self._free)
        self._live: dict[SequenceId, _Sequence] = {}
        self._backlog: deque[_Sequence] = deque()
        self._queued = 0
        self._reaper: Timer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def queued(self) -> int:
        """Requests waiting to run."""
        return self._queued

    @property
    def sequences(self) -> int:
        """Sequences whose id is known (started, not ended, not expired)."""
        return len(self._live)

    async def submit(
        self, control: SequenceControl | None, inputs: list[Tensor], outputs: list[str], batch_size: int
    ) -> BatchResult:
        """Queue one request of a sequence and wait for its answer.

        Raises:
            InvalidRequest: no correlation id, a batch of more than one, a correlation id of the wrong type for
                the CORRID control, or a request of an unknown sequence without START (Triton's messages).
            QueueFull: the backlog of sequences or the queue of requests is full.
            ModelNotReady: the batcher was closed before the request ran.
            Exception: whatever the model raised for the request's batch.
        """
        if self._closed:
            raise ModelNotReady(f"model '{self._name}' is not accepting requests (unloading)")
        if batch_size > 1:
            raise InvalidRequest(
                f"inference request to model '{self._name}' must specify batch-size 1 due to requirements "
                "of sequence batcher"
            )
        if control is None or not control.in_sequence:
            raise InvalidRequest(
                f"inference request to model '{self._name}' must specify a non-zero or non-empty correlation ID"
            )
        self._check_corrid(control.id)
        now = self._clock.now_ns()
        sequence = self._live.get(control.id)
        if sequence is None and not control.start:
            raise InvalidRequest(
                f"inference request for sequence {control.id} to model '{self._name}' must specify the START "
                "flag on the first request of the sequence"
            )
        if self._queued >= self._max_queued:
            raise QueueFull(
                f"model '{self._name}': {self._queued} sequence requests are waiting to run "
                f"(the most this server queues per model); retry later"
            )
        if sequence is None:
            sequence = self._open(control.id, now)
        elif control.start:
            log.warning(
                "sequence %s for model '%s' has a conflict. The previous sequence did not end before this "
                "sequence start. Previous sequence will be terminated early.", control.id, self._name,
            )
        request = _Request(
            inputs, outputs, control.start, control.end, now, batch_key(inputs, ()),
            asyncio.get_running_loop().create_future(),
        )
        sequence.requests.append(request)
        sequence.last_ns = now
        self._queued += 1
        if control.end:
            self._forget(sequence)
        if sequence.slot is not None:
            self._kick(self._instances[sequence.slot[0]])
        self._arm_reaper()
        try:
            return await request.future
        except asyncio.CancelledError:
            self._withdraw(sequence, request)
            raise

    async def close(self) -> None:
        """Refuse new requests, fail the queued ones, and wait for running batches."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        sequences = {id(s): s for s in [*self._live.values(), *self._backlog]}
        for instance in self._instances:
            if instance.timer is not None:
                instance.timer.cancel()
            sequences.update((id(s), s) for s in instance.slots if s is not None)
        error = ModelNotReady(f"model '{self._name}' was unloaded before the request ran")
        for sequence in sequences.values():
            while sequence.requests:
                _fail(sequence.requests.popleft(), error)
        self._queued = 0
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    # -- sequences and slots --------------------------------------------------------------------------------

    def _check_corrid(self, sequence_id: SequenceId) -> None:
        corrid = self._spec.corrid
        if corrid is None:
            return
        expects = corrid.datatype.name
        given = "BYTES" if isinstance(sequence_id, str) else "UINT64"
        if (given == "BYTES") != (expects == "BYTES"):
            raise InvalidRequest(
                f"sequence batching control '{corrid.name}' data-type is '{given}', but model '{self._name}' "
                f"expects '{expects}'"
            )

    def _open(self, sequence_id: SequenceId, now: int) -> _Sequence:
        """A new sequence, in a free slot or else at the end of the backlog."""
        if not self._free and len(self._backlog) >= self._max_backlog:
            raise QueueFull(
                f"model '{self._name}': every sequence slot is taken and {len(self._backlog)} sequences wait "
                "for one (the most this server queues per model); retry later"
            )
        sequence = _Sequence(sequence_id, now)
        if self._free:
            slot, index = heapq.heappop(self._free)
            self._assign(sequence, index, slot)
        else:
            self._backlog.append(sequence)
        self._live[sequence_id] = sequence
        return sequence

    def _assign(self, sequence: _Sequence, index: int, slot: int) -> None:
        sequence.slot = (index, slot)
        self._instances[index].slots[slot] = sequence

    def _forget(self, sequence: _Sequence) -> None:
        """The id no longer reaches ``sequence`` (END arrived, or it expired)."""
        sequence.live = False
        if self._live.get(sequence.id) is sequence:
            del self._live[sequence.id]

    def _release(self, sequence: _Sequence) -> None:
        """Free ``sequence``'s slot for the oldest sequence of the backlog (or for any new one)."""
        if sequence.slot is None:
            return
        index, slot = sequence.slot
        sequence.slot = None
        instance = self._instances[index]
        instance.slots[slot] = None
        while self._backlog:
            waiting = self._backlog.popleft()
            if waiting.live or waiting.requests:
                self._assign(waiting, index, slot)
                break
        else:
            heapq.heappush(self._free, (slot, index))
        self._kick(instance)

    def _withdraw(self, sequence: _Sequence, request: _Request) -> None:
        """A caller stopped waiting: drop its request if it has not run; release what nobody can reach."""
        try:
            sequence.requests.remove(request)
        except ValueError:
            return  # it is running or ran
        self._queued -= 1
        if not sequence.live and not sequence.requests and not sequence.running:
            if sequence.slot is not None:
                self._release(sequence)
            elif sequence in self._backlog:
                self._backlog.remove(sequence)

    # -- idle expiry ------------------------------------------------------------------------------------------

    def _arm_reaper(self) -> None:
        if self._reaper is None and self._live and not self._closed:
            self._reaper = self._clock.call_later(self._spec.idle_us / 1e6, self._reap)

    def _reap(self) -> None:
        """Expire the sequences idle for ``max_sequence_idle_microseconds``; look again when the next may be."""
        self._reaper = None
        now = self._clock.now_ns()
        idle_ns = self._spec.idle_us * 1000
        next_due: int | None = None
        for sequence in list(self._live.values()):
            if sequence.requests or sequence.running:
                continue
            due = sequence.last_ns + idle_ns
            if now >= due:
                log.info("sequence %s of model '%s' expired after %d us idle", sequence.id, self._name,
                         self._spec.idle_us)
                self._forget(sequence)
                if sequence.slot is not None:
                    self._release(sequence)
                elif sequence in self._backlog:
                    self._backlog.remove(sequence)
            else:
                next_due = due if next_due is None else min(next_due, due)
        if next_due is not None and not self._closed:
            self._reaper = self._clock.call_later((next_due - now) / 1e9, self._reap)
        else:
            self._arm_reaper()  # busy sequences: look again a full idle period from now

    # -- forming and running batches --------------------------------------------------------------------------

    def _kick(self, instance: _Instance) -> None:
        """Start the instance's next batch if it is free and one is due; else set a timer for when it will be."""
        if instance.running or self._closed:
            return
        if instance.timer is not None:
            instance.timer.cancel()
            instance.timer = None
        now = self._clock.now_ns()
        if self._spec.strategy == "direct":
            rows, due = self._direct_batch(instance, now)
        else:
            rows, due = self._oldest_batch(instance, now)
        if rows:
            self._launch(instance, rows, now)
        elif due is not None:
            instance.timer = self._clock.call_later(max(due - now, 0) / 1e9, functools.partial(self._kick, instance))

    def _row_key(self, sequence: _Sequence) -> Hashable:
        """What the next request of ``sequence`` must share with the others of a batch: its inputs' names,
        datatypes and row shapes, and the shapes of the states it will read."""
        request = sequence.requests[0]
        if not self._spec.states:
            return request.key
        states = self._states_for(sequence, request)
        return request.key, tuple(states[s.input_name].shape for s in self._spec.states)

    def _states_for(self, sequence: _Sequence, request: _Request) -> dict[str, np.ndarray]:
        if request.start or sequence.states is None:
            return {state.input_name: state.initial for state in self._spec.states}
        return sequence.states

    def _direct_batch(self, instance: _Instance, now: int) -> tuple[list[_Row | None], int | None]:
        ready = [(slot, s) for slot, s in enumerate(instance.slots) if s is not None and s.requests]
        if not ready:
            return [], None
        spec = self._spec
        delay_ns = spec.max_queue_delay_us * 1000
        if delay_ns and spec.minimum_slot_utilization > 0:
            oldest = min(s.requests[0].arrived_ns for _, s in ready)
            if now - oldest <= delay_ns and len(ready) / self._limit < spec.minimum_slot_utilization:
                return [], oldest + delay_ns + 1
        key = self._row_key(ready[0][1])
        rows: list[_Row | None] = [None] * (ready[-1][0] + 1)
        for slot, sequence in ready:
            if self._row_key(sequence) == key:  # else a null row: it runs in a later batch
                rows[slot] = _Row(sequence, sequence.requests.popleft())
        return rows, None

    def _oldest_batch(self, instance: _Instance, now: int) -> tuple[list[_Row | None], int | None]:
        ready = [s for s in instance.slots if s is not None and s.requests]
        if not ready:
            return [], None
        ready.sort(key=lambda s: s.requests[0].arrived_ns)
        key = self._row_key(ready[0])
        chosen = [s for s in ready if self._row_key(s) == key][: self._limit]
        count = len(chosen)
        due = ready[0].requests[0].arrived_ns + self._spec.max_queue_delay_us * 1000
        preferred = self._spec.preferred_batch_sizes
        if preferred and count > preferred[-1]:
            count = preferred[-1]
        elif not (now >= due or count >= self._limit or count in preferred):
            return [], due
        rows: list[_Row | None] = [_Row(s, s.requests.popleft()) for s in chosen[:count]]
        return rows, None

    def _launch(self, instance: _Instance, rows: list[_Row | None], now: int) -> None:
        instance.running = True
        for row in rows:
            if row is not None:
                row.sequence.running = True
                self._queued -= 1
        task = asyncio.get_running_loop().create_task(self._execute(instance, rows, now))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, instance: _Instance, rows: list[_Row | None], started_ns: int) -> None:
        real = [(position, row) for position, row in enumerate(rows) if row is not None]
        batch_size = len(rows) if self._batched else 0
        try:
            inputs = self._inputs(rows)
            wanted = list(dict.fromkeys(name for _, row in real for name in row.request.outputs))
            wanted += [state.output_name for state in self._spec.states if state.output_name not in wanted]
            tensors, info = await self._run(instance.index, inputs, wanted, batch_size)
            by_name = {tensor.name: tensor for tensor in tensors}
            for position, row in real:
                if self._spec.states:
                    row.sequence.states = {  # copies: a view would keep the whole batch's array alive
                        state.input_name: np.array(
                            by_name[state.output_name].array[position] if self._batched
                            else by_name[state.output_name].array
                        )
                        for state in self._spec.states
                    }
                answer = [self._row_of(by_name[name], position) for name in row.request.outputs]
                if not row.request.future.done():
                    row.request.future.set_result(
                        BatchResult(answer, started_ns - row.request.arrived_ns, batch_size, info)
                    )
        except asyncio.CancelledError:
            error = ModelNotReady(f"model '{self._name}': the batch was cancelled")
            for _, row in real:
                _fail(row.request, error)
            raise
        except Exception as exc:  # every request of the batch gets the model's error
            for _, row in real:
                _fail(row.request, exc)
        finally:
            now = self._clock.now_ns()
            instance.running = False
            for _, row in real:
                row.sequence.running = False
                row.sequence.last_ns = now
                if row.request.end or not (row.sequence.live or row.sequence.requests):
                    self._release(row.sequence)  # ended, or its END was withdrawn: nobody can reach it
            self._kick(instance)
            self._arm_reaper()

    def _row_of(self, tensor: Tensor, position: int) -> Tensor:
        if not self._batched:
            return tensor
        return Tensor(tensor.name, tensor.datatype, tensor.array[position : position + 1])

    def _inputs(self, rows: list[_Row | None]) -> list[Tensor]:
        """The batch's inputs: the requests' rows (zeros for null rows), the controls and the states."""
        spec = self._spec
        real = [row for row in rows if row is not None]
        first = real[0]
        if not self._batched:  # one slot, one request
            tensors = list(first.request.inputs)
        else:
            by_name = [None if row is None else {t.name: t for t in row.request.inputs} for row in rows]
            tensors = []
            for template in first.request.inputs:
                parts = [
                    _zeros_like(template.array) if named is None else named[template.name].array for named in by_name
                ]
                tensors.append(Tensor(template.name, template.datatype, np.concatenate(parts, axis=0)))
        for control in spec.controls:
            if control.kind == _START:
                values = [row is not None and row.request.start for row in rows]
            elif control.kind == _END:
                values = [row is not None and row.request.end for row in rows]
            else:
                values = [row is not None for row in rows]
            tensors.append(Tensor(control.name, control.datatype, control.array(values, self._batched)))
        if spec.corrid is not None:
            null: SequenceId = "" if spec.corrid.datatype.name == "BYTES" else 0
            ids = [null if row is None else row.sequence.id for row in rows]
            tensors.append(Tensor(spec.corrid.name, spec.corrid.datatype, spec.corrid.array(ids, self._batched)))
        if spec.states:
            first_states = self._states_for(first.sequence, first.request)
            for state in spec.states:
                arrays = [
                    _zeros_like(first_states[state.input_name]) if row is None
                    else self._states_for(row.sequence, row.request)[state.input_name]
                    for row in rows
                ]
                array = np.stack(arrays) if self._batched else arrays[0]
                tensors.append(Tensor(state.input_name, state.datatype, array))
        return tensors


def _zeros_like(array: np.ndarray) -> np.ndarray:
    if array.dtype == object:
        return np.full(array.shape, b"", dtype=object)
    return np.zeros_like(array)


def _fail(request: _Request, error: BaseException) -> None:
    if not request.future.done():
        request.future.set_exception(error)
