"""gRPC load generator: replays one pre-serialised ``ModelInferRequest`` at a fixed concurrency for a fixed time.

Run as its own process (``python -m bench.loadgen_grpc``) so the client competes as little as possible with the
server. Requests and responses stay bytes: no protobuf work on the client side, so every server faces the same,
cheapest possible client. Prints one JSON object: completed requests, errors, rate and latency percentiles.

With ``--handshake`` it connects first, prints ``ready`` and waits for a line on stdin before it sends anything,
so whoever reads the server's CPU time around the run (``bench.measure``) can leave the client's own start-up
(interpreter, imports, connection) out of the window.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import orjson

METHOD = "/inference.GRPCInferenceService/ModelInfer"
_MAX_MESSAGE = 64 << 20


async def _measure(
    target: str, payload: bytes, concurrency: int, seconds: float, warmup: float, handshake: bool = False
) -> dict[str, object]:
    options = [("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.max_send_message_length", _MAX_MESSAGE)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(METHOD)  # no (de)serialisers: bytes in, bytes out
        if handshake:
            await asyncio.wait_for(channel.channel_ready(), 60)
            sys.stdout.write("ready\n")
            sys.stdout.flush()
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        latencies: list[int] = []
        errors: dict[str, int] = {}

        async def worker(deadline: float, record: bool) -> None:
            while (start := time.perf_counter()) < deadline:
                try:
                    await call(payload, timeout=60)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                    if len(errors) and sum(errors.values()) > 1000:
                        return
                    continue
                if record:
                    latencies.append(time.perf_counter_ns() - int(start * 1e9))

        if warmup > 0:
            await asyncio.gather(*(worker(time.perf_counter() + warmup, False) for _ in range(concurrency)))
        errors.clear()
        began = time.perf_counter()
        await asyncio.gather(*(worker(began + seconds, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    values = np.array(latencies or [0], dtype=np.float64) / 1e3
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "rate": len(latencies) / elapsed,
        "p50_us": float(np.percentile(values, 50)),
        "p99_us": float(np.percentile(values, 99)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--payload", type=Path, required=True, help="file holding a serialised ModelInferRequest")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--handshake", action="store_true", help="connect, print 'ready', wait for a stdin line")
    args = parser.parse_args(argv)
    result = asyncio.run(
        _measure(args.target, args.payload.read_bytes(), args.concurrency, args.seconds, args.warmup, args.handshake)
    )
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
