"""Where v2server's CPU per request goes: a ladder of servers on the same stacks, measured side by side.

``python -m bench.breakdown --out DIR`` measures, for each scenario (``simple`` and ``identity-1mib`` by
default) and protocol, the server's CPU microseconds per inference (``bench.measure``) on three rungs, the
timed runs taking turns between them as ``bench.run`` does (medians over ``--repeats``):

- gRPC: ``grpc-echo`` (the request's bytes sent back: the transport alone, ``bench.limits``), ``grpc-proto``
  (a grpc.aio handler that parses the ``ModelInferRequest`` with protobuf and answers a ``ModelInferResponse``
  with the same tensors as outputs: what any V2 server must do at least), ``v2server``;
- REST: ``tornado-echo``, ``tornado-v2`` (a Tornado handler that parses the V2 JSON, binary tensors included,
  and answers a V2 JSON or binary response with the same tensors), ``v2server``.

The differences between consecutive rungs are labelled: the transport, the codec any V2 server pays, and what
v2server's core and handler add on top. Two figures measured without any transport put the last one in
proportion: the core's own CPU per call in-process (``V2Server`` started in a subprocess pinned to the server
CPU, ``core.ModelInfer`` awaited in a loop on the request as the gRPC server decodes it, answer serialised
included, ``time.process_time``) and the model's bare forward (``bench.limits forward``).

Writes ``DIR/breakdown.json`` (date, machine, settings, every run) and ``DIR/breakdown.md`` (the tables), and
prints the tables. The rung servers live here: ``python -m bench.breakdown serve grpc-proto --port P`` (or
``tornado-v2``); they run as ``bench.limits``'s echoes do (default asyncio loop, the same allocator settings).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import tornado.web

from bench.loadgen_grpc import METHOD
from bench.measure import Point, check
from bench.processes import Pinning, free_port, pinning, started, wait_tcp
from bench.scenarios import PROTOCOLS, SCENARIOS, Scenario
from v2server._proto import grpc_service_pb2 as pb
from v2server.memory import keep_freed_memory

__all__ = ["LABELS", "RUNGS", "Step", "ladder", "main", "markdown", "proto_answer", "v2_answer"]

ROOT = Path(__file__).resolve().parents[1]

#: each protocol's rungs, cheapest first
RUNGS = {
    "grpc": ("grpc-echo", "grpc-proto", "v2server"),
    "rest-binary": ("tornado-echo", "tornado-v2", "v2server"),
    "rest-json": ("tornado-echo", "tornado-v2", "v2server"),
}
#: what each rung adds to the one below it (the first: to nothing)
LABELS = (
    "transport (echo)",
    "protobuf/JSON codec (what any V2 server pays)",
    "v2server's core and handler",
)
RUNG_SERVERS = ("grpc-proto", "tornado-v2")  # started from here; the others by bench.servers
ECHOES = ("grpc-echo", "tornado-echo")
_LIMIT = 64 << 20  # the echoes' message and body limits


# -- the ladder's arithmetic ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    rung: str
    #: the rung's CPU microseconds per inference; None: not measured (its note says why)
    cpu_us: float | None
    #: what it adds to the rung below (the first rung: all of it); None where either is missing
    delta_us: float | None
    label: str


def _us(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"


def ladder(
    rungs: Sequence[tuple[str, float | None]], core_us: float | None, forward_us: float | None
) -> list[Step]:
    """The rungs with their differences, labelled; the last label carries the in-process core and forward."""
    if len(rungs) != len(LABELS):
        raise ValueError(f"expected {len(LABELS)} rungs, got {len(rungs)}")
    steps: list[Step] = []
    below: float | None = 0.0
    for index, (rung, cpu) in enumerate(rungs):
        label = LABELS[index]
        if index == len(LABELS) - 1:
            label += f" (of which in-process core: {_us(core_us)} us, model forward: {_us(forward_us)} us)"
        delta = None if cpu is None or below is None else cpu - below
        steps.append(Step(rung, cpu, delta, label))
        below = cpu
    return steps


def _cpu(point: Point | None) -> float | None:
    """A point's CPU per inference, None when it was not measured."""
    if point is None or point.cpu_us <= 0 or (point.note and not point.runs):
        return None
    return point.cpu_us


def markdown(
    scenario: str, protocol: str, concurrency: int, steps: Sequence[Step], points: dict[str, Point],
    core: dict[str, Any], forward_us: float | None,
) -> str:
    """One scenario and protocol: a row per rung, its CPU per inference and what it adds to the one below."""
    lines = [
        f"### {scenario}, {protocol} (concurrency {concurrency})",
        "",
        "| rung | server | CPU us/inf | infer/s | adds (CPU us/inf) | what the step is |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for index, step in enumerate(steps, 1):
        point = points.get(step.rung)
        rate = f"{point.rate:,.0f}" if point is not None and point.rate else "n/a"
        sign = "+" if index > 1 and step.delta_us is not None and step.delta_us >= 0 else ""
        adds = f"{sign}{_us(step.delta_us)}"
        lines.append(f"| {index} | {step.rung} | {_us(step.cpu_us)} | {rate} | {adds} | {step.label} |")
    notes = [f"{p.server}: {p.note}" for p in points.values() if p.note]
    lines.append("")
    core_line = f"In-process (no transport): core {_us(core.get('core_us'))} us per call"
    if core.get("core_min_us") is not None:
        core_line += f" (fastest repeat {_us(core.get('core_min_us'))})"
    if core.get("protobuf_us") is not None:
        core_line += f"; protobuf alone, as grpc-proto does it: {_us(core.get('protobuf_us'))} us"
    lines.append(core_line + f"; model forward {_us(forward_us)} us.")
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines)


# -- the rung servers ----------------------------------------------------------------------------------------


def proto_answer(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    """The least a V2 gRPC server answers: an output per input (``OUTPUTn``, same datatype and shape), its raw
    bytes the input's."""
    response = pb.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    for index, tensor in enumerate(request.inputs):
        response.outputs.add(name=f"OUTPUT{index}", datatype=tensor.datatype, shape=tensor.shape)
    response.raw_output_contents.extend(request.raw_input_contents)
    return response


async def _grpc_proto(port: int) -> None:
    async def infer(
        request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        return proto_answer(request)

    class Handler(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            if details.method == METHOD:
                return grpc.unary_unary_rpc_method_handler(
                    infer, request_deserializer=pb.ModelInferRequest.FromString,
                    response_serializer=pb.ModelInferResponse.SerializeToString,
                )
            return None

    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", _LIMIT), ("grpc.max_send_message_length", _LIMIT)]
    )
    server.add_generic_rpc_handlers((Handler(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


_NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}


def v2_answer(model: str, body: bytes, header_length: str | None) -> tuple[bytes, int | None]:
    """The least a V2 REST server does: parse the request (JSON, binary tensors after ``header_length``
    bytes of it), make each input an array, answer an output per input (``OUTPUTn``) with the same tensor, in
    binary where asked (``outputs[].parameters.binary_data``, or ``parameters.binary_data_output``), in JSON
    otherwise.

    Returns the response body and its JSON part's length when it has binary tensors (None: all JSON).
    """
    split = int(header_length) if header_length is not None else len(body)
    request = orjson.loads(memoryview(body)[:split])
    blobs = memoryview(body)[split:]
    asked = request.get("outputs") or []
    binary = {o["name"] for o in asked if (o.get("parameters") or {}).get("binary_data")}
    all_binary = not asked and bool((request.get("parameters") or {}).get("binary_data_output"))
    outputs: list[dict[str, Any]] = []
    appended: list[memoryview] = []
    offset = 0
    for index, tensor in enumerate(request["inputs"]):
        dtype = _NUMPY[tensor["datatype"]]
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            array = np.frombuffer(blobs[offset:offset + size], dtype=dtype).reshape(tensor["shape"])
            offset += size
        else:
            array = np.asarray(tensor["data"], dtype=dtype).reshape(tensor["shape"])
        name = f"OUTPUT{index}"
        output: dict[str, Any] = {"name": name, "datatype": tensor["datatype"], "shape": tensor["shape"]}
        if all_binary or name in binary:
            output["parameters"] = {"binary_data_size": array.nbytes}
            appended.append(array.data)
        else:
            output["data"] = array.ravel()
        outputs.append(output)
    answer: dict[str, Any] = {"model_name": model, "outputs": outputs}
    if "id" in request:
        answer["id"] = request["id"]
    head = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    if not appended:
        return head, None
    return b"".join([head, *appended]), len(head)


@tornado.web.stream_request_body
class _V2Handler(tornado.web.RequestHandler):
    """Reads the body as v2server's handler and tornado-echo do (chunks as they arrive); ``v2_answer``."""

    def prepare(self) -> None:
        self._chunks: list[bytes] = []

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def post(self, model: str) -> None:
        body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        try:
            header_length = self.request.headers.get("Inference-Header-Content-Length")
            answer, json_length = v2_answer(model, body, header_length)
        except (ValueError, KeyError, TypeError) as exc:
            self.set_status(400)
            self.finish(orjson.dumps({"error": f"{type(exc).__name__}: {exc}"}))
            return
        if json_length is None:
            self.set_header("Content-Type", "application/json")
        else:
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Inference-Header-Content-Length", str(json_length))
        self.finish(answer)


async def _tornado_v2(port: int) -> None:
    app = tornado.web.Application([(r"/v2/models/([^/]+)(?:/versions/[^/]+)?/infer", _V2Handler)])
    app.listen(port, address="127.0.0.1", max_body_size=_LIMIT)
    await asyncio.Event().wait()


@contextlib.contextmanager
def _run_rung(name: str, pin: Pinning, workdir: Path) -> Iterator[Any]:
    """A rung server of this module pinned to the server CPU, stopped on exit (a ``Running``)."""
    from bench.servers import Running

    port = free_port()
    argv = [sys.executable, "-m", "bench.breakdown", "serve", name, "--port", str(port)]
    with started(pin.server(argv), workdir / "logs" / f"{name}.log", cwd=ROOT) as process:
        wait_tcp(port, process, 60)
        yield Running(name, process.pid, port, port)


# -- in-process: the core alone ------------------------------------------------------------------------------


def default_calls(scenario: Scenario) -> int:
    """In-process calls per timed repeat: 20,000 for small requests, 1,000 for large ones (1 MiB)."""
    return 1000 if len(scenario.body("grpc")) > 64 * 1024 else 20000


async def _core_loop(repository: Path, scenario: Scenario, calls: int, repeats: int) -> dict[str, Any]:
    from v2server.cli import parse_settings
    from v2server.server import V2Server
    from v2server.wire import SplitRequest, serialize_answer, split_infer_request

    settings = parse_settings([
        "--model-repository", str(repository), "--model-control-mode", "explicit",
        f"--load-model={scenario.model}",
        "--http-address", "127.0.0.1", "--http-port", "0", "--grpc-address", "127.0.0.1", "--grpc-port", "0",
        "--metrics-address", "127.0.0.1", "--metrics-port", "0",
    ])
    server = V2Server(settings)
    await server.start()
    try:
        gc.freeze()  # as v2server.server.serve does once started
        core, body = server.core, scenario.body("grpc")

        async def one() -> None:
            # the gRPC server's decode (wire.split_infer_request: FromString, large raw inputs left as views)
            request = split_infer_request(body)
            if isinstance(request, SplitRequest):
                answer = await core.ModelInfer(request.message, request.raw)
            else:
                answer = await core.ModelInfer(request)
            serialize_answer(answer)

        def protobuf_only() -> None:
            proto_answer(pb.ModelInferRequest.FromString(body)).SerializeToString()

        for _ in range(max(100, calls // 10)):
            await one()
            protobuf_only()
        core_us: list[float] = []
        core_loop_us: list[float] = []  # the event loop's thread alone
        protobuf_us: list[float] = []
        for _ in range(repeats):
            start, loop_start = time.process_time(), time.thread_time()
            for _ in range(calls):
                await one()
            core_us.append((time.process_time() - start) * 1e6 / calls)
            core_loop_us.append((time.thread_time() - loop_start) * 1e6 / calls)
            start = time.process_time()
            for _ in range(calls):
                protobuf_only()
            protobuf_us.append((time.process_time() - start) * 1e6 / calls)
    finally:
        await server.stop(grace=0)
    return {
        "calls": calls, "repeats": repeats, "core_us": statistics.median(core_us), "core_runs_us": core_us,
        "core_min_us": min(core_us), "core_loop_thread_runs_us": core_loop_us,
        "protobuf_us": statistics.median(protobuf_us), "protobuf_runs_us": protobuf_us,
    }


def _core_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.breakdown core")
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    parser.add_argument("--calls", type=int, default=0, help="0: default_calls(scenario)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from v2server.server import _loop_factory  # the loop v2server runs on (uvloop when installed)

    keep_freed_memory()
    scenario = SCENARIOS[args.scenario]
    calls = args.calls or default_calls(scenario)
    with asyncio.Runner(loop_factory=_loop_factory("auto")) as runner:
        result = runner.run(_core_loop(args.repository, scenario, calls, args.repeats))
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    return 0


def _in_process(
    scenario: Scenario, repository: Path, pin: Pinning, calls: int, repeats: int
) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.breakdown", "core", "--repository", str(repository),
            "--scenario", scenario.name, "--calls", str(calls), "--repeats", str(repeats)]
    result = subprocess.run(pin.server(argv), capture_output=True, timeout=900, check=False, cwd=ROOT)
    lines = [line for line in result.stdout.decode().splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"in-process core failed ({result.returncode}): {result.stderr.decode()[-800:]}")
    return orjson.loads(lines[-1])  # type: ignore[no-any-return]


# -- the measurement -----------------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"[breakdown {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _measure_rungs(
    scenario: Scenario, protocols: Sequence[str], args: argparse.Namespace, pin: Pinning, repository: Path,
    work: Path,
) -> list[Point]:
    """Every rung of every protocol on one start of each server (side by side), runs in turns per protocol."""
    from bench.run import _measure_point  # warm-up, interleaved timed runs, medians: as make bench does
    from bench.servers import run_server

    servers = list(dict.fromkeys(rung for protocol in protocols for rung in RUNGS[protocol]))
    points: list[Point] = []
    with contextlib.ExitStack() as stack:
        running: dict[str, Any] = {}
        failed: dict[str, str] = {}
        for server in servers:
            try:
                if server in RUNG_SERVERS:
                    running[server] = stack.enter_context(_run_rung(server, pin, work))
                else:
                    running[server] = stack.enter_context(
                        run_server(server, repository, [scenario.model], pin, work, args.cache)
                    )
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                _say(f"{server}: {exc}")
                failed[server] = f"server failed: {exc}"
        for protocol in protocols:
            pairs = []
            for rung in RUNGS[protocol]:
                if rung in failed:
                    points.append(Point(rung, protocol, scenario.name, args.concurrency, note=failed[rung]))
                    continue
                live = running[rung]
                problem = "" if rung in ECHOES else check(scenario, protocol, live.http_port, live.grpc_port)
                if problem:
                    _say(f"{rung} {protocol} {scenario.name}: not measured: {problem}")
                    points.append(Point(rung, protocol, scenario.name, args.concurrency, note=problem))
                else:
                    pairs.append((rung, scenario))
            points += _measure_point(
                pairs, protocol, args.concurrency, running, {}, args, pin, work / "payloads"
            )
    return points


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.breakdown", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for breakdown.json and breakdown.md")
    parser.add_argument("--scenarios", default="simple,identity-1mib")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one timed run")
    parser.add_argument("--warmup", type=float, default=1.0, help="discarded run before each rung's runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per rung (the median is reported)")
    parser.add_argument("--core-calls", type=int, default=0,
                        help="in-process calls per repeat (0: 20,000 for simple, 1,000 for 1 MiB requests)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".bench",
                        help="work files go to CACHE/breakdown")
    return parser


def _measure_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from bench.models import build_repository
    from bench.run import _cpu_model, _forward

    protocols = [p for p in args.protocols.split(",") if p]
    unknown = [p for p in protocols if p not in RUNGS]
    unknown += [s for s in args.scenarios.split(",") if s not in SCENARIOS]
    if unknown:
        _say(f"unknown protocol or scenario: {unknown}")
        return 2
    if any(p != "grpc" for p in protocols) and shutil.which("wrk") is None:
        _say("wrk is not installed (Debian package 'wrk'; 'make bench' installs it)")
        return 2
    pin = pinning()
    _say(f"server CPU {pin.server_cpus or 'any'}, client CPU {pin.client_cpus or 'any'}")
    work = args.cache / "breakdown"
    shutil.rmtree(work / "payloads", ignore_errors=True)
    repository = build_repository(work / "repo")
    results: dict[str, Any] = {}
    tables: list[str] = []
    for name in args.scenarios.split(","):
        scenario = SCENARIOS[name]
        forward_us = _forward(scenario, repository, pin, work) * 1e6
        _say(f"{name}: model forward {forward_us:.1f} us")
        try:
            core = _in_process(scenario, repository, pin, args.core_calls, args.repeats)
        except (RuntimeError, subprocess.SubprocessError) as exc:
            _say(f"{name}: {exc}")
            core = {"note": str(exc)}
        _say(f"{name}: in-process core {_us(core.get('core_us'))} us/call, protobuf alone "
             f"{_us(core.get('protobuf_us'))} us")
        points = _measure_rungs(scenario, protocols, args, pin, repository, work)
        ladders = {}
        for protocol in protocols:
            by_rung = {p.server: p for p in points if p.protocol == protocol}
            steps = ladder([(rung, _cpu(by_rung.get(rung))) for rung in RUNGS[protocol]],
                           core.get("core_us"), forward_us)
            ladders[protocol] = [dataclasses.asdict(step) for step in steps]
            tables.append(markdown(name, protocol, args.concurrency, steps, by_rung, core, forward_us))
        results[name] = {
            "forward_us": forward_us, "in_process": core, "ladders": ladders,
            "points": [dataclasses.asdict(point) for point in points],
        }
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": len(os.sched_getaffinity(0)),
                    "cpu": _cpu_model(), "python": platform.python_version()},
        "pinning": {"server_cpus": pin.server_cpus, "client_cpus": pin.client_cpus},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    text = _document(meta, tables)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "breakdown.json").write_bytes(
        orjson.dumps(
            {**meta, "rungs": RUNGS, "labels": LABELS, "scenarios": results}, option=orjson.OPT_INDENT_2
        )
    )
    (args.out / "breakdown.md").write_text(text + "\n")
    _say(f"wrote {args.out}/breakdown.json and breakdown.md")
    return 0


def _document(meta: dict[str, Any], tables: Sequence[str]) -> str:
    settings, machine, pin = meta["settings"], meta["machine"], meta["pinning"]
    head = [
        "## Where v2server's CPU per request goes",
        "",
        (
            f"{meta['date']}, {machine['cpu']}, Python {machine['python']}; server pinned to CPU "
            f"{pin['server_cpus'] or 'any'}, client to CPU {pin['client_cpus'] or 'any'}; median of "
            f"{settings['repeats']} runs of {settings['seconds']:g} s at concurrency "
            f"{settings['concurrency']} (`python -m bench.breakdown`). CPU us/inf: the server's user + "
            "system CPU time over a run divided by the requests it completed. The echoes and the codec rungs "
            "run on Python's default asyncio loop, v2server on uvloop. In-process: `core.ModelInfer` awaited "
            "in a loop on the gRPC server's decode of the request, answer serialised, no transport; "
            "protobuf alone: parse + the codec rung's answer + serialise."
        ),
    ]
    return "\n".join(head) + "\n\n" + "\n\n".join(tables)


def _serve_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.breakdown serve")
    parser.add_argument("kind", choices=RUNG_SERVERS)
    parser.add_argument("--port", type=int, required=True, help="port to listen on (127.0.0.1)")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as bench.limits's echoes: the allocator settings v2server starts with
    asyncio.run(_grpc_proto(args.port) if args.kind == "grpc-proto" else _tornado_v2(args.port))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return _serve_main(argv[1:])
    if argv[:1] == ["core"]:
        return _core_main(argv[1:])
    return _measure_main(argv)


if __name__ == "__main__":
    sys.exit(main())
