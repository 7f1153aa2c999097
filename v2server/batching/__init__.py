"""Dynamic batching: pure ``merge``/``split`` functions and the ``DynamicBatcher`` that schedules batches."""

from v2server.batching.batcher import BatchResult, DynamicBatcher, Runner
from v2server.batching.merge import batch_key, merge, split

__all__ = ["BatchResult", "DynamicBatcher", "Runner", "batch_key", "merge", "split"]
