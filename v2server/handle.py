"""One served model version as a unit: config, signature, instances, its batcher and statistics.

Loading builds new handles beside the old ones and the registry swaps a reference, so a request that holds a
handle finishes on it; a handle is closed only after its in-flight requests drain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from v2server._proto import model_config_pb2 as mc
from v2server.backends import ModelInstance, StageTimes
from v2server.batching import DynamicBatcher
from v2server.sequences import SequenceBatcher, SequenceControl, SequenceSpec
from v2server.signature import Signature
from v2server.statistics import DEFAULT_BUCKETS_US, VersionStatistics
from v2server.tensors import Tensor

__all__ = ["Execution", "ModelHandle"]


@dataclass(frozen=True, slots=True)
class Execution:
    """One request's outputs and how it ran: the batch it ran in (a dynamic batch may hold others), its time
    queued for that batch and the batch's compute time (what the access log reports)."""

    outputs: list[Tensor]
    batch_size: int
    queue_ns: int
    compute_ns: int
    #: when it began (``time.perf_counter_ns``, Triton's QUEUE_START), and the compute time's input and output
    #: stages (what request traces report)
    started_ns: int = 0
    input_ns: int = 0
    output_ns: int = 0


@dataclass(eq=False)
class ModelHandle:
    """One served model version: config, signature, instances, its batcher (if any) and statistics."""

    name: str
    version: int
    config: mc.ModelConfig
    signature: Signature
    instances: list[ModelInstance] = field(default_factory=list)
    buckets_us: tuple[float, ...] = DEFAULT_BUCKETS_US
    #: classification labels by output name (``label_filename``), read when the model loaded
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    inflight: int = 0
    stats: VersionStatistics = field(init=False)
    batcher: DynamicBatcher | None = field(init=False, default=None)
    sequencer: SequenceBatcher | None = field(init=False, default=None)
    _drained: asyncio.Event | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.stats = VersionStatistics(self.name, self.version, self.buckets_us)
        if self.config.HasField("dynamic_batching"):
            self.batcher = DynamicBatcher(
                self.name, self.config.dynamic_batching, self.config.max_batch_size, self._run_batch,
                concurrency=max(1, len(self.instances)),
            )
        elif self.config.HasField("sequence_batching"):
            spec = SequenceSpec.from_config(self.config)
            self.sequencer = SequenceBatcher(spec, len(self.instances), self._run_on)

    async def execute(
        self,
        inputs: Sequence[Tensor],
        outputs: Sequence[str],
        batch_size: int,
        priority: int = 0,
        timeout_us: int = 0,
        sequence: SequenceControl | None = None,
    ) -> Execution:
        """Run one request (through the dynamic batcher or the sequence batcher when the config has one),
        counted for statistics and so that an unload can wait for it. ``sequence`` (the request's sequence
        parameters) matters only to a sequence-batched model, which needs it; others ignore it, as Triton does."""
        self.inflight += 1
        self.stats.request_started()
        start = time.perf_counter_ns()
        success, queue_ns, times = False, 0, _NO_TIMES
        try:
            ran_in = batch_size
            if self.batcher is not None:
                result = await self.batcher.submit(list(inputs), list(outputs), batch_size, priority, timeout_us)
                tensors, queue_ns, times, ran_in = result.outputs, result.queue_ns, result.info, result.batch_size
            elif self.sequencer is not None:
                result = await self.sequencer.submit(sequence, list(inputs), list(outputs), batch_size)
                tensors, queue_ns, times, ran_in = result.outputs, result.queue_ns, result.info, result.batch_size
            else:
                tensors, times = await self._run_batch(list(inputs), list(outputs), batch_size)
            success = True
            return Execution(
                tensors, ran_in, queue_ns, times.input_ns + times.infer_ns + times.output_ns,
                start, times.input_ns, times.output_ns,
            )
        finally:
            self.stats.request_finished(
                success, batch_size, time.perf_counter_ns() - start, queue_ns,
                times.input_ns, times.infer_ns, times.output_ns,
            )
            self.inflight -= 1
            if self.inflight == 0 and self._drained is not None:
                self._drained.set()

    async def _run_batch(
        self, inputs: list[Tensor], outputs: list[str], batch_size: int
    ) -> tuple[list[Tensor], StageTimes]:
        """One model execution on the least busy instance (also the batcher's runner)."""
        instance = min(self.instances, key=lambda i: i.pending)
        tensors, times = await instance.execute_timed(inputs, outputs, batch_size)
        self.stats.execution(batch_size, times.input_ns, times.infer_ns, times.output_ns)
        return tensors, times

    async def _run_on(
        self, index: int, inputs: list[Tensor], outputs: list[str], batch_size: int
    ) -> tuple[list[Tensor], StageTimes]:
        """One model execution on instance ``index`` (the sequence batcher's runner: a slot is on one instance)."""
        tensors, times = await self.instances[index].execute_timed(inputs, outputs, batch_size)
        self.stats.execution(batch_size, times.input_ns, times.infer_ns, times.output_ns)
        return tensors, times

    async def drain_and_close(self) -> None:
        """Wait for in-flight requests, then release the batcher and the instances."""
        while self.inflight:
            self._drained = asyncio.Event()
            await self._drained.wait()
        if self.batcher is not None:
            await self.batcher.close()
        if self.sequencer is not None:
            await self.sequencer.close()
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        for instance in self.instances:
            instance.close()


_NO_TIMES = StageTimes(0, 0, 0)
