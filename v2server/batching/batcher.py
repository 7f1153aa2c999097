"""Triton's dynamic batcher: queue requests per priority level, form batches, run them, answer each request.

One scheduler task per model version forms batches; it is woken by an :class:`asyncio.Event` when something
changes (a request arrives or leaves, a batch finishes) and by a timer at the next moment a decision can change
(the queue delay of the batch being formed, or a queued request's timeout). It never polls.

A batch is the requests at the head of the queue that share its :func:`~v2server.batching.merge.batch_key`, in
priority order, up to ``max_batch_size`` rows. Once its oldest request has waited ``max_queue_delay_microseconds``
(at once with a delay of 0) it runs with all of them. Before that it runs only when it reaches a preferred size
(the largest it can), when it holds more than the largest preferred size (cut to what fits that size), or when
it cannot grow (full, or the next compatible request does not fit); otherwise it waits. At most
``concurrency`` batches (one per model instance) run at a time; with ``preserve_ordering`` their requests are
answered in the order the batches were formed, as Triton does.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from v2server._proto import model_config_pb2 as mc
from v2server.batching.merge import batch_key, merge, split
from v2server.batching.queue import BatchResult, PriorityQueue, QueuedRequest, queue_timeout_us
from v2server.errors import DeadlineExceeded, InvalidRequest, ModelNotReady, QueueFull
from v2server.tensors import Tensor

__all__ = ["TIMER_RESOLUTION_NS", "BatchResult", "DynamicBatcher", "Runner"]

log = logging.getLogger(__name__)

#: The event loop's timer resolution: uvloop (libuv) counts timers in whole milliseconds, so a shorter timer
#: fires on the loop's next pass, and waiting out a sub-millisecond queue delay with timers meant spinning: a
#: 100 us ``max_queue_delay_microseconds`` cost ~120 us of CPU per request at low load, 500 us cost 520 us.
#: The last part of a delay shorter than this is one pass of the loop instead: the requests already read join
#: the batch, and it runs (``max_queue_delay_microseconds`` is the most a request waits, as in Triton).
TIMER_RESOLUTION_NS = 1_000_000

Runner = Callable[[list[Tensor], list[str], int], Awaitable[tuple[list[Tensor], Any]]]
"""Executes one merged batch: ``(inputs, requested output names, batch size) -> (outputs, info)``.

``info`` is the runner's own record of the execution (the registry passes stage timings); every request of
the batch receives it in ``BatchResult.info``.
"""


@dataclass(eq=False, slots=True)
class _Batch:
    requests: list[QueuedRequest]
    outcome: list[BatchResult] | BaseException | None = None

    def resolve(self) -> None:
        """Hand every request its result or the batch's error (requests whose submitter left are skipped)."""
        outcome = self.outcome
        for index, request in enumerate(self.requests):
            if request.future.done():
                continue
            if isinstance(outcome, BaseException):
                request.future.set_exception(outcome)
            elif outcome is not None:
                request.future.set_result(outcome[index])


class DynamicBatcher:
    """Combines concurrent requests of one model version into batches, following ``dynamic_batching``.

    The registry owns one per batching model version; the data plane awaits :meth:`submit` per request.
    """

    def __init__(
        self,
        model_name: str,
        config: mc.ModelDynamicBatching,
        max_batch_size: int,
        run: Runner,
        concurrency: int = 1,
    ) -> None:
        """Prepare the queues; the scheduler task starts with the first request, inside the running loop.

        Args:
            model_name: used in error messages.
            config: the model's ``dynamic_batching`` settings.
            max_batch_size: the model's ``max_batch_size`` (at least 1): no batch has more rows.
            run: executes one merged batch.
            concurrency: how many batches may run at once (the number of model instances).
        """
        if max_batch_size < 1:
            raise ValueError("a dynamic batcher needs max_batch_size >= 1")
        if concurrency < 1:
            raise ValueError("a dynamic batcher needs concurrency >= 1")
        self._name = model_name
        self._max_batch_size = max_batch_size
        self._run = run
        self._concurrency = concurrency
        self._delay_ns = config.max_queue_delay_microseconds * 1000
        self._preferred = sorted({size for size in config.preferred_batch_size if 0 < size <= max_batch_size})
        self._preserve_ordering = config.preserve_ordering
        self._levels = config.priority_levels
        # Priority 0 means the default level; an unset or out-of-range default means the lowest level.
        lowest = max(config.priority_levels, 1)
        default = config.default_priority_level
        self._default_level = default if 1 <= default <= lowest else lowest
        self._queue = PriorityQueue(
            [
                config.priority_queue_policy.get(level, config.default_queue_policy)
                for level in range(1, max(self._levels, 1) + 1)
            ]
        )
        self._seq = itertools.count()
        self._running: set[asyncio.Task[None]] = set()
        self._in_order: deque[_Batch] = deque()  # batches not yet delivered, with preserve_ordering
        self._closed = False
        # Created in the running loop by the first submit.
        self._wake: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._passed_for = -1  # the head request for which the loop had its pass before a short wait ended

    @property
    def queued(self) -> int:
        """Requests waiting to be batched (not those running)."""
        return len(self._queue)

    async def submit(
        self,
        inputs: list[Tensor],
        outputs: list[str],
        batch_size: int,
        priority: int = 0,
        timeout_us: int = 0,
    ) -> BatchResult:
        """Queue one request and wait for its share of the batch it runs in.

        Args:
            inputs: the request's inputs, batch dimension first (already validated against the model).
            outputs: the names of the outputs to compute, in response order.
            batch_size: the request's batch size (its first dimension).
            priority: 0 for the default level, else 1 (highest) to ``priority_levels``.
            timeout_us: the request's queue timeout; used only where the queue policy allows overriding
                and it is shorter than the policy's default timeout (as Triton does).

        Raises:
            InvalidRequest: a priority above ``priority_levels``, or a batch size out of range.
            QueueFull: the priority level's queue holds ``max_queue_size`` requests.
            DeadlineExceeded: the request timed out in the queue with ``timeout_action: REJECT``.
            ModelNotReady: the batcher was closed before the request ran.
            Exception: whatever ``run`` raised for the request's batch.
        """
        if self._closed:
            raise ModelNotReady(f"model '{self._name}' is not accepting requests (unloading)")
        if not 1 <= batch_size <= self._max_batch_size:
            raise InvalidRequest(
                f"model '{self._name}': batch size {batch_size} is outside 1..{self._max_batch_size}"
            )
        level = self._level_of(priority)
        if self._queue.is_full(level):
            raise QueueFull(
                f"model '{self._name}' queue is full "
                f"(max_queue_size {self._queue.policy(level).max_queue_size})"
            )
        wake = self._start()
        request = QueuedRequest(
            inputs=inputs,
            outputs=outputs,
            batch_size=batch_size,
            key=batch_key(inputs, outputs),
            level=level,
            seq=next(self._seq),
            arrived_ns=time.perf_counter_ns(),
            timeout_us=queue_timeout_us(self._queue.policy(level), timeout_us),
            future=asyncio.get_running_loop().create_future(),
        )
        self._queue.push(request)
        wake.set()
        try:
            return await request.future
        except asyncio.CancelledError:
            if self._queue.remove(request):  # still queued: it must never run
                wake.set()
            raise

    async def close(self) -> None:
        """Stop accepting requests, fail those still queued, and wait for running batches to finish."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.wait([self._scheduler])
            self._scheduler = None
        for request in self._queue.drain():
            _fail(request, ModelNotReady(f"model '{self._name}' was unloaded before the request ran"))
        if self._running:
            await asyncio.wait(self._running)

    def _level_of(self, priority: int) -> int:
        if priority == 0:
            return self._default_level - 1
        if self._levels == 0:
            return 0  # one level: Triton accepts and ignores a priority here
        if not 1 <= priority <= self._levels:
            raise InvalidRequest(
                f"model '{self._name}': priority {priority} is outside 1..{self._levels} (priority_levels)"
            )
        return priority - 1

    def _start(self) -> asyncio.Event:
        """The scheduler's wake-up event, creating it and the scheduler task on first use."""
        if self._wake is None:
            self._wake = asyncio.Event()
        if self._scheduler is None:
            self._scheduler = asyncio.get_running_loop().create_task(
                self._schedule(self._wake), name=f"batcher:{self._name}"
            )
        return self._wake

    async def _schedule(self, wake: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                now = time.perf_counter_ns()
                for request in self._queue.expire(now):
                    _fail(
                        request,
                        DeadlineExceeded(
                            f"model '{self._name}': request timed out in the queue after {request.timeout_us} us"
                        ),
                    )
                wake_at = self._queue.next_deadline()
                if len(self._running) < self._concurrency and len(self._queue):
                    requests, batch_due = self._next_batch(now)
                    due: int | None = batch_due
                    if not requests and batch_due - now < TIMER_RESOLUTION_NS:
                        head = next(iter(self._queue)).seq
                        if self._passed_for == head:  # the loop had its pass: the batch goes with who came
                            requests, _ = self._next_batch(batch_due)
                        else:  # one pass of the loop first, for requests already read to join
                            self._passed_for = head
                            loop.call_soon(wake.set)
                            due = None
                    if requests:
                        self._launch(requests, now)
                        continue
                    if due is not None:
                        wake_at = due if wake_at is None else min(wake_at, due)
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                if wake_at is not None:
                    self._timer = loop.call_later(max(wake_at - now, 0) / 1e9, wake.set)
                await wake.wait()
                wake.clear()
        except Exception as exc:  # a bug here must not leave submitters waiting forever
            log.exception("batcher of model '%s' failed", self._name)
            for request in self._queue.drain():
                _fail(request, exc)
            self._scheduler = None

    def _next_batch(self, now_ns: int) -> tuple[list[QueuedRequest], int]:
        """The batch to run now, or ``([], when)``: nothing yet, look again at ``when`` (perf_counter ns).

        Follows Triton's ``DynamicBatchScheduler::GetDynamicBatch``, except that requests of another batch key
        are skipped rather than ending the batch.
        """
        requests: list[QueuedRequest] = []
        total = 0
        can_grow = True
        head = next(iter(self._queue))
        for request in self._queue:
            if request.key != head.key:
                continue
            if total + request.batch_size > self._max_batch_size:
                can_grow = False
                break
            requests.append(request)
            total += request.batch_size
        due = min(request.arrived_ns for request in requests) + self._delay_ns
        if now_ns >= due:
            return requests, due
        if self._preferred:
            sizes = list(itertools.accumulate(request.batch_size for request in requests))
            preferred = [count for count, size in enumerate(sizes, 1) if size in self._preferred]
            if preferred:
                return requests[: preferred[-1]], due
            if total > self._preferred[-1]:
                fitting = sum(1 for size in sizes if size <= self._preferred[-1])
                return requests[: max(fitting, 1)], due
        if not can_grow or total >= self._max_batch_size:
            return requests, due
        return [], due

    def _launch(self, requests: list[QueuedRequest], now_ns: int) -> None:
        for request in requests:
            self._queue.remove(request)
        batch = _Batch(requests)
        if self._preserve_ordering:
            self._in_order.append(batch)
        task = asyncio.get_running_loop().create_task(self._execute(batch, now_ns))
        self._running.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._wake is not None:
            self._wake.set()

    async def _execute(self, batch: _Batch, started_ns: int) -> None:
        sizes = [request.batch_size for request in batch.requests]
        total = sum(sizes)
        try:
            inputs = merge([request.inputs for request in batch.requests])
            outputs, info = await self._run(inputs, list(batch.requests[0].outputs), total)
            batch.outcome = [
                BatchResult(part, started_ns - request.arrived_ns, total, info)
                for request, part in zip(batch.requests, split(outputs, sizes), strict=True)
            ]
        except asyncio.CancelledError:
            batch.outcome = ModelNotReady(f"model '{self._name}': the batch was cancelled")
            raise
        except Exception as exc:  # every request of the batch gets the model's error
            batch.outcome = exc
        finally:
            self._deliver(batch)

    def _deliver(self, batch: _Batch) -> None:
        if not self._preserve_ordering:
            batch.resolve()
            return
        while self._in_order and self._in_order[0].outcome is not None:
            self._in_order.popleft().resolve()


def _fail(request: QueuedRequest, error: BaseException) -> None:
    if not request.future.done():
        request.future.set_exception(error)
