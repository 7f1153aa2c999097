"""The dynamic batcher's queue: Triton's ``PriorityQueue`` (a queue per priority level, each with its queue
policy: size limit, timeout and timeout action) and what it holds."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

from v2server._proto import model_config_pb2 as mc
from v2server.tensors import Tensor

__all__ = ["BatchResult", "PriorityQueue", "QueuedRequest", "queue_timeout_us"]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One request's answer from the batch it ran in."""

    outputs: list[Tensor]
    queue_ns: int  # time this request waited in the queue
    batch_size: int  # the size of the batch it ran in (sum of merged request batch sizes)
    info: Any = None  # what the runner reported about the execution


@dataclass(eq=False, slots=True)
class QueuedRequest:
    inputs: list[Tensor]
    outputs: list[str]
    batch_size: int
    key: Hashable
    level: int  # index into the priority levels, 0 the highest
    seq: int  # arrival order
    arrived_ns: int
    timeout_us: int  # 0: no timeout
    future: asyncio.Future[BatchResult]

    @property
    def deadline_ns(self) -> int:
        return self.arrived_ns + self.timeout_us * 1000


@dataclass(slots=True)
class _Level:
    """One priority level: requests in arrival order, then those whose timeout expired under DELAY."""

    policy: mc.ModelQueuePolicy
    waiting: dict[int, QueuedRequest] = field(default_factory=dict)  # seq -> request; dicts keep insertion order
    delayed: dict[int, QueuedRequest] = field(default_factory=dict)
    deadlines: list[tuple[int, int]] = field(default_factory=list)  # heap of (deadline_ns, seq) of `waiting`

    def __len__(self) -> int:
        return len(self.waiting) + len(self.delayed)


class PriorityQueue:
    """Triton's ``PriorityQueue``: a queue per priority level, each with its queue policy.

    Iteration yields requests in scheduling order: level by level from the highest, and within a level the
    requests still in time before those delayed by an expired timeout (``timeout_action: DELAY``).
    """

    def __init__(self, policies: list[mc.ModelQueuePolicy]) -> None:
        self._levels = [_Level(policy) for policy in policies]

    def __len__(self) -> int:
        return sum(len(level) for level in self._levels)

    def __iter__(self) -> Iterator[QueuedRequest]:
        for level in self._levels:
            yield from level.waiting.values()
            yield from level.delayed.values()

    def policy(self, level: int) -> mc.ModelQueuePolicy:
        return self._levels[level].policy

    def is_full(self, level: int) -> bool:
        limit = self._levels[level].policy.max_queue_size
        return limit != 0 and len(self._levels[level]) >= limit

    def push(self, request: QueuedRequest) -> None:
        level = self._levels[request.level]
        level.waiting[request.seq] = request
        if request.timeout_us:
            heapq.heappush(level.deadlines, (request.deadline_ns, request.seq))

    def remove(self, request: QueuedRequest) -> bool:
        """Take ``request`` out of the queue; False if it was no longer queued."""
        level = self._levels[request.level]
        return (
            level.waiting.pop(request.seq, None) is not None
            or level.delayed.pop(request.seq, None) is not None
        )

    def expire(self, now_ns: int) -> list[QueuedRequest]:
        """Apply every level's timeout action to requests past their deadline; return those to reject."""
        rejected: list[QueuedRequest] = []
        for level in self._levels:
            while level.deadlines and level.deadlines[0][0] <= now_ns:
                _, seq = heapq.heappop(level.deadlines)
                request = level.waiting.pop(seq, None)
                if request is None:  # already batched or cancelled
                    continue
                if level.policy.timeout_action == mc.ModelQueuePolicy.DELAY:
                    level.delayed[seq] = request
                else:
                    rejected.append(request)
        return rejected

    def next_deadline(self) -> int | None:
        """The earliest timeout among requests still waiting, if any."""
        earliest: int | None = None
        for level in self._levels:
            while level.deadlines and level.deadlines[0][1] not in level.waiting:
                heapq.heappop(level.deadlines)  # drop entries of requests that left
            if level.deadlines and (earliest is None or level.deadlines[0][0] < earliest):
                earliest = level.deadlines[0][0]
        return earliest

    def drain(self) -> list[QueuedRequest]:
        """Empty every level and return what was queued."""
        requests = list(self)
        for level in self._levels:
            level.waiting.clear()
            level.delayed.clear()
            level.deadlines.clear()
        return requests


def queue_timeout_us(policy: mc.ModelQueuePolicy, requested_us: int) -> int:
    """Triton's rule: the policy's default, or the request's own timeout if allowed and shorter."""
    timeout = policy.default_timeout_microseconds
    if policy.allow_timeout_override and 0 < requested_us < timeout:
        return requested_us
    return timeout
