"""What Python itself allows: bare echo servers on the same stacks, and a model's own forward time.

``python -m bench.limits grpc-echo --port P`` answers ``ModelInfer`` with the request's own bytes on a bare
grpc.aio server; ``tornado-echo`` answers any POST with its body on a bare Tornado server; ``forward`` times the model alone. A server can't beat
the echo of its own stack with the same client, so the ratio to it shows how much the server itself costs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import grpc
import orjson
import tornado.web

from bench.loadgen_grpc import METHOD
from v2server.memory import keep_freed_memory


async def _grpc_echo(port: int) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    class Echo(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            if details.method == METHOD:
                return grpc.unary_unary_rpc_method_handler(echo)
            return None

    limit = 64 << 20
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    )
    server.add_generic_rpc_handlers((Echo(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


@tornado.web.stream_request_body
class _EchoHandler(tornado.web.RequestHandler):
    """Reads the body as v2server's handler does (chunks as they arrive), answers it back."""

    def prepare(self) -> None:
        self._chunks: list[bytes] = []

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def post(self) -> None:
        self.set_header("Content-Type", self.request.headers.get("Content-Type", "application/octet-stream"))
        self.finish(self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks))


async def _tornado_echo(port: int) -> None:
    app = tornado.web.Application([(r"/.*", _EchoHandler)])
    app.listen(port, address="127.0.0.1", max_body_size=64 << 20)
    await asyncio.Event().wait()


def _forward_seconds(model_file: Path, inputs_file: Path, seconds: float) -> float:
    """Median time of one forward pass, in-process, after warm-up (torch imported only here)."""
    import numpy as np
    import torch

    module = torch.jit.load(str(model_file), map_location="cpu").eval()
    with np.load(inputs_file) as arrays:
        tensors = [torch.from_numpy(arrays[f"arg{i}"].copy()) for i in range(len(arrays.files))]
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(20):
            module(*tensors)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline and len(times) < 100_000:
            start = time.perf_counter()
            module(*tensors)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["grpc-echo", "tornado-echo", "forward"])
    parser.add_argument("--port", type=int, help="echo servers: port to listen on (127.0.0.1)")
    parser.add_argument("--model", type=Path, help="forward: the TorchScript file")
    parser.add_argument("--inputs", type=Path, help="forward: .npz of the positional inputs arg0, arg1, ...")
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    keep_freed_memory()  # what v2server does at start: the same allocator settings for the same stack
    if args.kind == "forward":
        print(orjson.dumps({"forward_s": _forward_seconds(args.model, args.inputs, args.seconds)}).decode())
        return 0
    asyncio.run(_grpc_echo(args.port) if args.kind == "grpc-echo" else _tornado_echo(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
