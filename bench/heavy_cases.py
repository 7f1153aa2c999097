"""The heavy requests of ``bench.heavy``: what each case sends, built once into a payload file, and its client.

``prepare(case, size, folder)`` writes the case's request bytes (the harness calls it before any server starts);
``python -m bench.heavy_cases CASE --payload FILE --size N --http-port P --grpc-port Q --timeout S`` then sends
them as the case's own client process and prints one JSON object: ``status`` (the HTTP status or gRPC code, or
what happened instead), ``seconds`` (how long the heavy request took) and ``detail``. Every request has a
deadline of ``--timeout`` seconds and goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import http.client
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from v2server._proto import grpc_service_pb2 as pb

__all__ = ["CASES", "MODES", "Case", "prepare"]

MODES = ("full", "quick", "smoke")
_INFER = "/inference.GRPCInferenceService/ModelInfer"
_STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
_GRPC_OPTIONS = [("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)]
_MLP_ROW = 784  # FP32 inputs per row of the mlp model
_STREAM_ELEMENTS = 100_000  # FP32: 390.6 KiB per streamed request


@dataclass(frozen=True)
class Case:
    """One heavy request. ``sizes`` gives its size per mode (what the number means is the case's own: inflated
    bytes, rows, elements, requests); ``only`` limits it to those servers, ``why_not`` says why for the others."""

    name: str
    title: str
    models: tuple[str, ...]
    sizes: dict[str, int]
    only: tuple[str, ...] = ()
    why_not: str = ""
    concurrency: int = 1
    grpc: bool = False
    options: dict[str, object] = field(default_factory=dict)

    def applies(self, server: str) -> bool:
        return not self.only or server in self.only


CASES = {
    case.name: case
    for case in (
        Case("gzip-json", "POST /v2/models/mlp/infer, Content-Encoding gzip: V2 JSON of [rows, 784] zeros (full "
             "size: 243 KB that inflate to 250 MB, just under v2server's 256 MiB body limit)",
             ("mlp",), {"full": 250_000_000, "quick": 25_000_000, "smoke": 1_000_000}),
        Case("gzip-json-x3", "gzip-json's body, three requests at once", ("mlp",),
             {"full": 250_000_000, "quick": 25_000_000, "smoke": 1_000_000}, concurrency=3),
        Case("v1-adder", "POST /v1/example_adder/latest, a batch of rows [ID, a, b, c]", ("example_adder",),
             {"full": 100_000, "quick": 10_000, "smoke": 100}, only=("v2server",),
             why_not="no /v1 route (v2server's own simple REST style)"),
        Case("v1-adder-10k", "v1-adder with 10,000 rows", ("example_adder",),
             {"full": 10_000, "quick": 2_000, "smoke": 100}, only=("v2server",),
             why_not="no /v1 route (v2server's own simple REST style)"),
        Case("v1-simple", "POST /v1/simple/latest, a batch of rows [ID, INT32[16], INT32[16]]", ("simple",),
             {"full": 100_000, "quick": 10_000, "smoke": 100}, only=("v2server",),
             why_not="no /v1 route (v2server's own simple REST style)"),
        Case("grpc-empty-bytes", "gRPC ModelInfer, simple_identity, empty BYTES elements (4 bytes each raw)",
             ("simple_identity",), {"full": 4_000_000, "quick": 400_000, "smoke": 1_000}, grpc=True),
        Case("grpc-empty-bytes-badshape", "grpc-empty-bytes with its shape one element too long",
             ("simple_identity",), {"full": 4_000_000, "quick": 400_000, "smoke": 1_000}, grpc=True,
             options={"extra": 1}),
        Case("stream-unread", "one ModelStreamInfer stream pushing 390.6 KiB identity_fp32 requests (FP32 "
             "[100000]) without reading any answer, held 3 s, then cancelled", ("identity_fp32",),
             {"full": 2_000, "quick": 200, "smoke": 10}, grpc=True),
        Case("identity-1mib-http", "tritonclient.http, sequential FP32 [262144] identity requests (1 MiB each "
             "way)", ("identity_fp32",), {"full": 20, "quick": 10, "smoke": 2}, options={"aio": False}),
        Case("identity-1mib-aio", "tritonclient.http.aio (aiohttp: it sends Accept-Encoding gzip, deflate), "
             "sequential FP32 [262144] identity requests (1 MiB each way)", ("identity_fp32",),
             {"full": 20, "quick": 10, "smoke": 2}, options={"aio": True}),
    )
}


# -- payloads: built once, before any server starts ------------------------------------------------------------

def prepare(case: Case, size: int, folder: Path) -> tuple[Path, str]:
    """The case's request bytes in a file under ``folder`` (reused when there), and a few words on its size."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{case.name}-{size}.bin"
    builder = _BUILDERS[case.name.removesuffix("-x3").removesuffix("-10k").removesuffix("-badshape")]
    if not path.exists():
        temporary = path.with_suffix(".tmp")
        builder(case, size, temporary)
        temporary.rename(path)
    return path, _describe(case, size, path)


def _describe(case: Case, size: int, path: Path) -> str:
    length = path.stat().st_size
    if case.name.startswith("gzip"):
        times = f", x{case.concurrency}" if case.concurrency > 1 else ""
        return f"{_amount(length)} gzip -> {_amount(size)} JSON{times}"
    if case.name.startswith("v1"):
        return f"{size:,} rows, {_amount(length)}"
    if case.name.startswith("grpc"):
        return f"{size:,} elements, {_amount(length)}"
    if case.name.startswith("stream"):
        return f"{size:,} x {_amount(length)}"
    return f"{size:,} requests x 1 MiB"


def _amount(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count} B"


def _gzip_json(case: Case, size: int, path: Path) -> None:
    """V2 JSON for mlp, ``[rows, 784]`` zeros, as big as fits in ``size`` bytes, gzip-compressed in chunks."""
    rows = max(1, (size - 200) // (_MLP_ROW * 4))
    elements = rows * _MLP_ROW
    head = b'{"inputs":[{"name":"INPUT__0","shape":[%d,%d],"datatype":"FP32","data":[' % (rows, _MLP_ROW)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip wrapper
    chunk_elements = 1 << 20
    with path.open("wb") as out:
        out.write(compressor.compress(head))
        left = elements - 1
        while left:
            count = min(left, chunk_elements)
            out.write(compressor.compress(b"0.0," * count))
            left -= count
        out.write(compressor.compress(b'0.0]}]}'))
        out.write(compressor.flush())


def _v1_rows(case: Case, size: int, path: Path) -> None:
    if case.models == ("simple",):
        row = list(range(16))
        data = [[i, row, row] for i in range(size)]
    else:
        data = [[i, 1, 2, 3] for i in range(size)]
    path.write_bytes(orjson.dumps({"data": data}))


def _grpc_bytes(case: Case, size: int, path: Path) -> None:
    request = pb.ModelInferRequest(model_name="simple_identity")
    shape = [1, size + int(case.options.get("extra", 0))]  # type: ignore[call-overload]
    request.inputs.add(name="INPUT0", datatype="BYTES", shape=shape)
    request.raw_input_contents.append(b"\0\0\0\0" * size)  # every element: a 4-byte length 0
    path.write_bytes(request.SerializeToString())


def _stream_request(case: Case, size: int, path: Path) -> None:
    request = pb.ModelInferRequest(model_name="identity_fp32")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[_STREAM_ELEMENTS])
    request.raw_input_contents.append(np.arange(_STREAM_ELEMENTS, dtype=np.float32).tobytes())
    path.write_bytes(request.SerializeToString())


def _identity(case: Case, size: int, path: Path) -> None:
    with path.open("wb") as out:  # np.save would add ".npy" to a path
        np.save(out, np.random.default_rng(0).standard_normal(1 << 18, dtype=np.float32), allow_pickle=False)


_BUILDERS: dict[str, Callable[[Case, int, Path], None]] = {
    "gzip-json": _gzip_json, "v1-adder": _v1_rows, "v1-simple": _v1_rows, "grpc-empty-bytes": _grpc_bytes,
    "stream-unread": _stream_request, "identity-1mib-http": _identity, "identity-1mib-aio": _identity,
}


# -- clients: one per kind of case, run in the case's own process -----------------------------------------------

@dataclass
class Target:
    http_port: int
    grpc_port: int
    timeout: float


def _post(target: Target, path: str, body: bytes, headers: dict[str, str]) -> tuple[str, float, str]:
    start = time.perf_counter()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", target.http_port, timeout=target.timeout)
        try:
            connection.request("POST", path, body, headers)
            response = connection.getresponse()
            answer = response.read()
        finally:
            connection.close()
    except TimeoutError:
        return "timeout", time.perf_counter() - start, f"no answer in {target.timeout:.0f} s"
    except OSError as exc:
        return type(exc).__name__, time.perf_counter() - start, str(exc)[:200]
    seconds = time.perf_counter() - start
    if response.status == 200:
        return "200", seconds, f"answer {_amount(len(answer))}"
    detail = " ".join(answer[:300].decode(errors="replace").split())
    return str(response.status), seconds, f"{_amount(len(answer))}: {detail[:120]}"


def _run_http(case: Case, payload: Path, size: int, target: Target) -> dict[str, object]:
    body = payload.read_bytes()
    if case.name.startswith("gzip"):
        path, headers = "/v2/models/mlp/infer", {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    else:
        path, headers = f"/v1/{case.models[0]}/latest", {"Content-Type": "application/json"}
    with concurrent.futures.ThreadPoolExecutor(case.concurrency) as pool:
        answers = list(pool.map(lambda _: _post(target, path, body, headers), range(case.concurrency)))
    statuses = sorted({status for status, _, _ in answers})
    return {
        "status": ",".join(statuses), "seconds": round(max(seconds for _, seconds, _ in answers), 3),
        "each_s": [round(seconds, 3) for _, seconds, _ in answers], "detail": answers[0][2],
    }


def _run_grpc_unary(case: Case, payload: Path, size: int, target: Target) -> dict[str, object]:
    import grpc

    body = payload.read_bytes()
    start = time.perf_counter()
    with grpc.insecure_channel(f"127.0.0.1:{target.grpc_port}", options=_GRPC_OPTIONS) as channel:
        try:
            answer = channel.unary_unary(_INFER)(body, timeout=target.timeout)
            status, detail = "OK", f"answer {len(answer):,} B"
        except grpc.RpcError as exc:
            status = exc.code().name  # type: ignore[attr-defined]
            detail = " ".join(str(exc.details()).split())[:200]  # type: ignore[attr-defined]
    return {"status": status, "seconds": round(time.perf_counter() - start, 3), "detail": detail}


def _run_stream(case: Case, payload: Path, size: int, target: Target) -> dict[str, object]:
    return asyncio.run(_stream(payload.read_bytes(), size, target, stall=min(10.0, target.timeout), hold=3.0))


async def _stream(body: bytes, count: int, target: Target, stall: float, hold: float) -> dict[str, object]:
    """Write ``count`` requests, reading nothing; a write that waits ``stall`` s means the server stopped reading."""
    import grpc

    start = time.perf_counter()
    deadline = start + target.timeout
    pushed, status, detail = 0, "", ""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{target.grpc_port}", options=_GRPC_OPTIONS) as channel:
        call = channel.stream_stream(_STREAM)(timeout=target.timeout + hold + 10)
        try:
            while pushed < count:
                left = deadline - time.perf_counter()
                if left <= 0:
                    status, detail = "timeout", f"pushed {pushed:,}/{count:,} in {target.timeout:.0f} s"
                    break
                # shielded: cancelling a write would cancel the stream, and the hold below would measure nothing
                await asyncio.wait_for(asyncio.shield(call.write(body)), min(stall, left))
                pushed += 1
                if pushed == 1:  # a server without the RPC refuses it at once: let its status arrive first
                    await asyncio.sleep(0.3)
                    if call.done():
                        raise asyncio.InvalidStateError
            else:
                status, detail = "pushed", f"pushed {pushed:,}/{count:,}, none read"
        except asyncio.TimeoutError:
            status = "stalled"
            detail = f"pushed {pushed:,}/{count:,}; the next write waited {stall:.0f} s (server stopped reading)"
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            # the server ended the stream: what it answered and its status (a failed write reads as INTERNAL)
            seconds = time.perf_counter() - start
            answers = await _drain(call, 5.0)
            code = await call.code() if call.done() else None
            status = code.name if code is not None else "ended"
            details = " ".join(str(await call.details() if call.done() else "").split())[:120]
            detail = f"the server ended the stream after {pushed:,} of {count:,} writes, {answers} answer(s)" + (
                f": {details}" if details else "")
            return {"status": status, "seconds": round(seconds, 3), "detail": detail, "pushed": pushed,
                    "details": details}
        seconds = time.perf_counter() - start
        if status in ("pushed", "stalled", "timeout"):
            await asyncio.sleep(hold)  # what the server holds for this stream shows in its RSS now
            if call.done():
                code = await call.code()
                detail += f"; the stream then ended: {code.name}"
        call.cancel()
    return {"status": status, "seconds": round(seconds, 3), "detail": detail, "pushed": pushed}


async def _drain(call: Any, seconds: float) -> int:
    """Answers left on an ended stream (read only to report them), for at most ``seconds``."""
    import grpc

    count = 0

    async def read() -> None:
        nonlocal count
        async for _ in call:
            count += 1

    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError, asyncio.InvalidStateError):
        await asyncio.wait_for(read(), seconds)
    return count


def _run_identity(case: Case, payload: Path, size: int, target: Target) -> dict[str, object]:
    """``size`` timed sequential requests (after one warm-up), with binary tensors or, where the server has no
    binary-tensor extension, JSON ones; checks the first answer. ``seconds`` is the mean time per request."""
    import re

    import tritonclient.http as httpclient

    array = np.load(payload)
    aio = bool(case.options["aio"])
    start = time.perf_counter()
    deadline = start + target.timeout
    note = ""
    for binary in (True, False):
        inputs = [httpclient.InferInput("INPUT0", list(array.shape), "FP32")]
        inputs[0].set_data_from_numpy(array, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
        headers = None if binary else {"Content-Type": "application/json"}  # KServe needs it for JSON
        try:
            runner = _aio_requests if aio else _sync_requests
            times, first = runner(target, inputs, outputs, headers, size + 1, deadline)
        except Exception as exc:  # noqa: BLE001 (what the server answered is the finding)
            text = " ".join(str(exc).split())
            if binary:
                status = re.search(r"\[(\d{3})\]", text)
                note = f"binary tensors refused ({'HTTP ' + status.group(1) if status else text[:60]}): "
                continue
            return {"status": "error", "seconds": round(time.perf_counter() - start, 3), "detail": note + text[:160]}
        if first is None or not np.array_equal(first.reshape(array.shape), array):
            return {"status": "wrong answer", "seconds": round(time.perf_counter() - start, 3), "detail": note}
        timed = times[1:] or times
        encoding = _response_encoding(target, httpclient, inputs, outputs, headers)
        mean = statistics.fmean(timed)
        short = f", only {len(timed)} in {target.timeout:.0f} s" if len(timed) < size else ""
        return {
            "status": "200", "seconds": round(mean, 4), "requests": len(timed),
            "per_request_ms": {"mean": round(mean * 1e3, 2), "p50": round(statistics.median(timed) * 1e3, 2),
                               "max": round(max(timed) * 1e3, 2)},
            "detail": f"{note}{'binary' if binary else 'JSON'} tensors; {mean * 1e3:.1f} ms per request (mean of "
                      f"{len(timed)}{short}); Accept-Encoding gzip gets {encoding}",
        }
    raise AssertionError("unreachable")


_Timed = tuple[list[float], "np.ndarray | None"]


def _sync_requests(
    target: Target, inputs: list[Any], outputs: list[Any], headers: dict[str, str] | None, count: int,
    deadline: float,
) -> _Timed:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(
        f"127.0.0.1:{target.http_port}", connection_timeout=target.timeout, network_timeout=target.timeout
    )
    times: list[float] = []
    first = None
    try:
        for _ in range(count):
            start = time.perf_counter()
            if start > deadline:
                break
            result = client.infer("identity_fp32", inputs, outputs=outputs, headers=headers)
            times.append(time.perf_counter() - start)
            first = result.as_numpy("OUTPUT0") if first is None else first
    finally:
        client.close()
    return times, first


def _aio_requests(
    target: Target, inputs: list[Any], outputs: list[Any], headers: dict[str, str] | None, count: int,
    deadline: float,
) -> _Timed:
    import tritonclient.http.aio as aioclient

    async def run() -> _Timed:
        times: list[float] = []
        first = None
        url = f"127.0.0.1:{target.http_port}"
        async with aioclient.InferenceServerClient(url, conn_timeout=target.timeout) as client:
            for _ in range(count):
                start = time.perf_counter()
                if start > deadline:
                    break
                result = await client.infer("identity_fp32", inputs, outputs=outputs, headers=headers)
                times.append(time.perf_counter() - start)
                first = result.as_numpy("OUTPUT0") if first is None else first
        return times, first

    return asyncio.run(run())


def _response_encoding(
    target: Target, httpclient: Any, inputs: list[Any], outputs: list[Any], headers: dict[str, str] | None
) -> str:
    """The Content-Encoding the server answers an aiohttp-like request with (tritonclient.http sends none)."""
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs)
    sent = {**(headers or {}), "Accept-Encoding": "gzip, deflate"}
    if json_size is not None:
        sent["Inference-Header-Content-Length"] = str(json_size)
    connection = http.client.HTTPConnection("127.0.0.1", target.http_port, timeout=target.timeout)
    try:
        connection.request("POST", "/v2/models/identity_fp32/infer", body, sent)
        response = connection.getresponse()
        length = len(response.read())
        return f"{response.getheader('Content-Encoding') or 'no encoding'} ({_amount(length)})"
    except OSError as exc:
        return type(exc).__name__
    finally:
        connection.close()


_RUNNERS: dict[str, Callable[[Case, Path, int, Target], dict[str, object]]] = {
    "gzip-json": _run_http, "gzip-json-x3": _run_http, "v1-adder": _run_http, "v1-adder-10k": _run_http,
    "v1-simple": _run_http, "grpc-empty-bytes": _run_grpc_unary, "grpc-empty-bytes-badshape": _run_grpc_unary,
    "stream-unread": _run_stream, "identity-1mib-http": _run_identity, "identity-1mib-aio": _run_identity,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--payload", type=Path, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    case = CASES[args.case]
    result = _RUNNERS[case.name](case, args.payload, args.size, Target(args.http_port, args.grpc_port, args.timeout))
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
