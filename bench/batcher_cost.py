"""The dynamic batcher's own CPU per request, in process: no transport, no model, one request at a time.

``python -m bench.batcher_cost [--out docs/bench/batcher.json] [--label NAME]`` submits requests one after
another through a ``DynamicBatcher`` whose runner answers at once, on uvloop (the server's loop), for several
``max_queue_delay_microseconds``, and reports the process's CPU per request beside calling the runner directly.
At one request at a time every batch holds one request, so the difference is what the batcher costs. With
``--out`` the run is added to that file under ``--label`` (the same script run on an older checkout, through
``PYTHONPATH``, gives the "before").
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import uvloop

from v2server._proto import model_config_pb2 as mc
from v2server.batching.batcher import DynamicBatcher
from v2server.datatypes import DATATYPES
from v2server.tensors import Tensor

__all__ = ["main", "measure"]

DELAYS_US = (0, 100, 500, 1000)
_FP32 = DATATYPES["FP32"]


async def _runner(inputs: list[Tensor], outputs: list[str], batch_size: int) -> tuple[list[Tensor], None]:
    return [Tensor("OUTPUT__0", _FP32, np.zeros((batch_size, 10), np.float32))], None


async def _one(delay_us: int, requests: int) -> dict[str, float]:
    config = mc.ModelDynamicBatching(preferred_batch_size=[16, 32], max_queue_delay_microseconds=delay_us)
    batcher = DynamicBatcher("mlp", config, 64, _runner)
    inputs = [Tensor("INPUT__0", _FP32, np.zeros((1, 784), np.float32))]
    try:
        for _ in range(200):  # warm-up
            await batcher.submit(inputs, ["OUTPUT__0"], 1)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(requests):
            await batcher.submit(inputs, ["OUTPUT__0"], 1)
        batched_cpu, batched_wall = time.process_time() - cpu, time.perf_counter() - wall
        cpu = time.process_time()
        for _ in range(requests):
            await _runner(inputs, ["OUTPUT__0"], 1)
        direct_cpu = time.process_time() - cpu
    finally:
        await batcher.close()
    return {
        "delay_us": delay_us,
        "batcher_cpu_us": batched_cpu / requests * 1e6,
        "direct_cpu_us": direct_cpu / requests * 1e6,
        "cost_us": (batched_cpu - direct_cpu) / requests * 1e6,
        "wall_us": batched_wall / requests * 1e6,
    }


def measure(requests: int = 2000, repeats: int = 3) -> list[dict[str, float]]:
    """Per delay, the median (by cost) of ``repeats`` runs of ``requests`` requests."""
    rows = []
    for delay in DELAYS_US:
        runs = sorted((uvloop.run(_one(delay, requests)) for _ in range(repeats)), key=lambda run: run["cost_us"])
        rows.append(runs[len(runs) // 2])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--label", default="now")
    parser.add_argument("--out", type=Path, help="add this run to a JSON file (created if absent)")
    args = parser.parse_args(argv)
    rows = measure(args.requests, args.repeats)
    for row in rows:
        print(f"max_queue_delay {row['delay_us']:>5.0f} us: batcher {row['batcher_cpu_us']:6.1f} us CPU per request, "
              f"direct {row['direct_cpu_us']:4.1f} us, cost {row['cost_us']:6.1f} us, wall {row['wall_us']:6.0f} us")
    if args.out is not None:
        data = orjson.loads(args.out.read_bytes()) if args.out.exists() else {"runs": {}}
        data["runs"][args.label] = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.platform(), "python": platform.python_version(), "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
