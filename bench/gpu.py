"""The GPU benchmark (``make bench-gpu``): v2server serving TorchScript models on a CUDA device, in one run.

``python -m bench.gpu --out DIR [--budget-seconds 480] [--dry-run]`` writes ``DIR/gpu.json`` (dated, with the
machine) and ``DIR/gpu.md`` (tables). It is meant for a GPU machine borrowed for minutes: it installs nothing,
builds its model repository at run time, keeps within ``--budget-seconds`` (each step checks what is left
before it starts and is skipped, with the reason recorded, when too little is), records a failing step in the
JSON and carries on with the next, rewrites both files after every step (a run cut short still leaves what it
measured) and always stops the servers it started.

What it measures:

a. **Server time over the bare forward**, concurrency 1, for ``mlp`` (the bundled 784-128-10 MLP),
   ``heavy_mlp`` (a wide MLP) and ``resnet50`` (ResNet-50 from random weights, ``bench/resnet.py``): the gRPC
   client's median latency minus the bare forward (the same TorchScript file run in this process on the
   device, synchronised, median of many). Target: at most 100 us. The server's own statistics
   (``/v2/models/M/stats``) and the client-and-transport floor (``simple`` on the CPU) are recorded beside it,
   to tell where the time went.
b. **Dynamic batching gain** at 64 concurrent batch-1 clients: infer/s with a ``dynamic_batching`` config over
   infer/s without, for ``heavy_mlp`` and ``resnet50``.
c. **Pinned vs pageable host-to-device copies** of the ResNet input (batch 1 and 32). v2server always stages
   GPU inputs through one pinned buffer per instance (``PinnedStaging`` in
   ``v2server/backends/torchscript/_execution.py``) and has no setting to turn that off, so the copies are
   timed in this process with torch: pageable, pinned, and staged (pageable -> pinned -> device, the server's
   way).
d. **Peak GPU memory** of the server process, sampled through NVML (``pynvml``, from ``nvidia-ml-py``) or else
   ``nvidia-smi`` while (a) and (b) run; torch's allocator counters cannot see another process.
e. **--workers scaling** on small requests (``simple``, CPU, gRPC from several client processes): infer/s with
   N workers over N x infer/s with one; target at least 0.8 up to 8. Skipped, saying so, when ``v2server
   --help`` lists no ``--workers``.
f. **Triton's ``nv_gpu_*`` gauges** on the metrics port, scraped idle and under load.

Without CUDA (or with ``--dry-run``) the same steps run on the CPU, with KIND_CPU instance groups, narrow
models (ResNet-50's layout at width 8 on 32x32 images, a small MLP) and sub-second runs: the numbers mean
nothing, but the run proves the script works.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self, TypeGuard

import numpy as np
import torch

from bench.processes import free_port, http_get, peak_rss_bytes, started, tree, wait_http_ok

__all__ = [
    "GPU_MODELS", "Plan", "build_repository", "heavy_mlp", "main", "make_plan", "render_markdown",
    "split_cpus", "workers_flag",
]

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "model_repository"

TARGET_SERVER_US = 100.0
#: heavy_mlp on the GPU: 1024 -> 3 x 4096 -> 1024. Wider than bench/models.py's CPU heavy_mlp
#: (1024-2048-2048-16), which a GPU runs in a few kernel launches: here the weights (168 MB) make a batch-1
#: forward cost real time.
HEAVY_WIDTHS = (1024, 4096, 4096, 4096, 1024)
TARGET_WORKER_EFFICIENCY = 0.8
CLIENTS = 64

#: bench.loadgen_grpc --handshake (connect, print "ready", wait for a stdin line), where this checkout has it
_HANDSHAKE = "--handshake" in (ROOT / "bench" / "loadgen_grpc.py").read_text()
#: the models the server step loads (``simple``, on the CPU, is only for the transport floor and --workers)
GPU_MODELS = ("mlp", "mlp_nobatch", "heavy_mlp", "heavy_mlp_batching", "resnet50", "resnet50_batching")
#: (a): the model timed at concurrency 1 -> the model whose file the bare forward runs
SERVER_TIME_MODELS = {"mlp": "mlp_nobatch", "heavy_mlp": "heavy_mlp", "resnet50": "resnet50"}
#: (b): model -> (without, with dynamic batching)
BATCHING_MODELS = {
    "heavy_mlp": ("heavy_mlp", "heavy_mlp_batching"), "resnet50": ("resnet50", "resnet50_batching"),
}


# ---------------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """Sizes and durations: the real ones on a GPU, tiny ones for a dry run on the CPU."""

    dry_run: bool
    device: str  # torch device of the bare forward and of the instance groups
    kind: str  # the instance groups' kind
    image: int  # ResNet input side (224)
    resnet_width: int  # 64 is ResNet-50
    resnet_max_batch: int
    heavy_widths: tuple[int, ...]  # input, hidden..., output
    heavy_max_batch: int
    seconds: float  # one timed client run
    warmup: float  # its warm-up
    iterations: int  # bare forward / copies
    client_processes: int  # load generators sharing the 64 clients (one connection each)
    worker_counts: tuple[int, ...]
    #: (e): more connections than workers, so that the kernel's SO_REUSEPORT spread leaves no worker idle
    worker_client_processes: int
    copy_batches: tuple[int, ...] = (1, 32)

    def estimate_load_s(self) -> float:
        """A timed client run with its warm-up, process start and slack."""
        return self.warmup + self.seconds + (6.0 if not self.dry_run else 4.0)


def make_plan(dry_run: bool, cpus: int | None = None) -> Plan:
    cpus = cpus or len(os.sched_getaffinity(0))
    if dry_run:
        return Plan(
            dry_run=True, device="cpu", kind="KIND_CPU", image=32, resnet_width=8, resnet_max_batch=32,
            heavy_widths=(64, 128, 128, 128, 64), heavy_max_batch=64,
            seconds=0.5, warmup=0.2, iterations=10, client_processes=2, worker_counts=(1, 2),
            worker_client_processes=4,
        )
    workers = tuple(n for n in (1, 2, 4, 8) if n == 1 or 2 * n <= cpus)  # as many cores left for the clients
    return Plan(
        dry_run=False, device="cuda", kind="KIND_GPU", image=224, resnet_width=64, resnet_max_batch=32,
        heavy_widths=HEAVY_WIDTHS, heavy_max_batch=64,
        seconds=5.0, warmup=1.0, iterations=200, client_processes=max(2, min(8, cpus // 2)),
        worker_counts=workers, worker_client_processes=min(CLIENTS // 2, 4 * max(workers)),
    )


def split_cpus() -> tuple[str, str]:
    """(server, clients) ``taskset -c`` lists: the first half of this process's CPUs and the second; empty
    strings (no pinning) on one CPU or without ``taskset``."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return "", ""
    half = len(cpus) // 2
    return ",".join(map(str, cpus[:half])), ",".join(map(str, cpus[half:]))


# ---------------------------------------------------------------------------------------------- repository


class _Mlp(torch.nn.Module):
    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        for index, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(torch.nn.Linear(a, b))
            if index < len(sizes) - 2:
                layers.append(torch.nn.ReLU())
        self.layers = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def heavy_mlp(widths: Sequence[int] = HEAVY_WIDTHS, seed: int = 0) -> Any:
    """The compute-bound MLP, scripted: Linear layers through ``widths`` with ReLU between, random weights
    from ``seed`` (about 42 million parameters, 168 MB in FP32, at the default widths)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.jit.script(_Mlp(widths).eval())


def _config(
    name: str, dims_in: Sequence[int], dims_out: Sequence[int], max_batch: int, kind: str, batching: bool
) -> str:
    batching_text = "dynamic_batching { max_queue_delay_microseconds: 100 }\n" if batching else ""
    return (
        f'name: "{name}"\nplatform: "pytorch_libtorch"\nmax_batch_size: {max_batch}\n'
        f'input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ {", ".join(map(str, dims_in))} ] }} ]\n'
        f'output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ {", ".join(map(str, dims_out))} ] }} ]\n'
        f"{batching_text}instance_group [ {{ count: 1 kind: {kind} }} ]\n"
    )


def _bundled(repository: Path, name: str, as_name: str, kind: str | None, batching: bool = True) -> None:
    shutil.copytree(BUNDLED / name, repository / as_name, ignore=shutil.ignore_patterns("aliases.json"))
    config = (BUNDLED / name / "config.pbtxt").read_text().replace(f'name: "{name}"', f'name: "{as_name}"')
    if not batching:
        config = re.sub(r"dynamic_batching \{[^}]*\}\n", "", config)
    if kind is not None:
        config = re.sub(r"kind: KIND_\w+", f"kind: {kind}", config)
    (repository / as_name / "config.pbtxt").write_text(config)


def _shared_model(
    repository: Path, name: str, twin: str, config: str, twin_config: str, build: Callable[[], Any]
) -> None:
    """Two model directories (with and without dynamic batching) for one TorchScript file, saved once."""
    for model, text in ((name, config), (twin, twin_config)):
        (repository / model / "1").mkdir(parents=True)
        (repository / model / "config.pbtxt").write_text(text)
    build().save(str(repository / name / "1" / "model.pt"))
    shutil.copyfile(repository / name / "1" / "model.pt", repository / twin / "1" / "model.pt")


def build_repository(repository: Path, plan: Plan) -> dict[str, Any]:
    """(Re)write the benchmark's repository: ``GPU_MODELS`` with ``plan.kind`` instance groups, and ``simple``
    (KIND_CPU). Returns what it wrote: each model's input shape (batch 1) and parameter count."""
    from bench.resnet import resnet50

    if repository.exists():
        shutil.rmtree(repository)
    repository.mkdir(parents=True)
    _bundled(repository, "mlp", "mlp", plan.kind)
    _bundled(repository, "mlp", "mlp_nobatch", plan.kind, batching=False)
    _bundled(repository, "simple", "simple", None)
    heavy_dims = ([plan.heavy_widths[0]], [plan.heavy_widths[-1]])
    _shared_model(
        repository, "heavy_mlp", "heavy_mlp_batching",
        _config("heavy_mlp", *heavy_dims, plan.heavy_max_batch, plan.kind, batching=False),
        _config("heavy_mlp_batching", *heavy_dims, plan.heavy_max_batch, plan.kind, batching=True),
        lambda: heavy_mlp(plan.heavy_widths),
    )
    image_dims = ([3, plan.image, plan.image], [1000])
    resnet = resnet50(width=plan.resnet_width)
    _shared_model(
        repository, "resnet50", "resnet50_batching",
        _config("resnet50", *image_dims, plan.resnet_max_batch, plan.kind, batching=False),
        _config("resnet50_batching", *image_dims, plan.resnet_max_batch, plan.kind, batching=True),
        lambda: torch.jit.script(resnet),
    )
    heavy = torch.jit.load(str(repository / "heavy_mlp" / "1" / "model.pt"))
    return {
        "path": str(repository),
        "kind": plan.kind,
        "inputs": {
            "mlp": [1, 784], "heavy_mlp": [1, plan.heavy_widths[0]],
            "resnet50": [1, 3, plan.image, plan.image],
        },
        "parameters": {
            "heavy_mlp": sum(p.numel() for p in heavy.parameters()),
            "resnet50": sum(p.numel() for p in resnet.parameters()),
        },
        "heavy_widths": list(plan.heavy_widths),
        "resnet_width": plan.resnet_width,
    }


def _example(model: str, plan: Plan, batch: int = 1) -> np.ndarray:
    rng = np.random.default_rng(0)
    shape = {
        "mlp": (784,), "mlp_nobatch": (784,),
        "heavy_mlp": (plan.heavy_widths[0],), "heavy_mlp_batching": (plan.heavy_widths[0],),
        "resnet50": (3, plan.image, plan.image), "resnet50_batching": (3, plan.image, plan.image),
    }[model]
    return rng.standard_normal((batch, *shape), dtype=np.float32)


def _request(model: str, array: np.ndarray) -> bytes:
    """A serialised gRPC ``ModelInferRequest``: one FP32 input ``INPUT__0`` in ``raw_input_contents``."""
    from v2server._proto import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT__0", datatype="FP32", shape=array.shape)
    request.raw_input_contents.append(array.tobytes())
    return request.SerializeToString()


def _simple_request() -> bytes:
    from v2server._proto import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name="simple")
    data = np.arange(16, dtype=np.int32).reshape(1, 16)
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=data.shape)
        request.raw_input_contents.append(data.tobytes())
    return request.SerializeToString()


# ------------------------------------------------------------------------------------------ in-process torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], device: str, iterations: int, max_seconds: float) -> list[float]:
    """Microseconds of each call of ``fn``, synchronised on both sides; stops early after ``max_seconds``."""
    times: list[float] = []
    deadline = time.monotonic() + max_seconds
    for _ in range(iterations):
        _sync(device)
        start = time.perf_counter_ns()
        fn()
        _sync(device)
        times.append((time.perf_counter_ns() - start) / 1e3)
        if time.monotonic() > deadline and len(times) >= 5:
            break
    return times


def _summary(times: Sequence[float]) -> dict[str, float]:
    return {
        "p50_us": float(np.percentile(times, 50)), "p99_us": float(np.percentile(times, 99)),
        "mean_us": float(statistics.fmean(times)), "iterations": len(times),
    }


def bare_forward(model_file: Path, example: np.ndarray, device: str, iterations: int) -> dict[str, Any]:
    """The model alone, in this process: forward on a device-resident input (what the server time is measured
    over), and forward with the input copied in and the output copied out."""
    model = torch.jit.load(str(model_file), map_location=device).eval()
    host = torch.from_numpy(example)
    resident = host.to(device)

    def forward() -> object:
        return model(resident)

    def with_copies() -> object:
        return model(host.to(device)).cpu()

    with torch.inference_mode():  # what v2server runs under (the INFERENCE_MODE parameter's default)
        _timed(forward, device, max(20, iterations // 10), 30)  # profile, compile, warm
        timed = _summary(_timed(forward, device, iterations, 20))
        copies = _summary(_timed(with_copies, device, iterations, 20))
    return {**timed, "with_copies_p50_us": copies["p50_us"], "batch": int(example.shape[0])}


def _bare_forwards(repo: Path, plan: Plan) -> dict[str, Any]:
    models = {}
    for name, model in SERVER_TIME_MODELS.items():
        models[name] = bare_forward(repo / model / "1" / "model.pt", _example(model, plan), plan.device,
                                    plan.iterations)
        if plan.device.startswith("cuda"):
            torch.cuda.empty_cache()  # the model is gone: give its memory back before the server wants it
    return {"models": models}


def copy_timing(shape: Sequence[int], device: str, iterations: int) -> dict[str, Any]:
    """Host-to-device copies of one tensor of ``shape``: from pageable memory, from pinned memory, and staged
    (pageable copied into a pinned buffer, then an asynchronous copy: what v2server does)."""
    pageable = torch.randn(*shape)
    nbytes = pageable.numel() * pageable.element_size()
    cuda = device.startswith("cuda")
    pinned = torch.empty(*shape, pin_memory=True) if cuda else torch.empty(*shape)
    pinned.copy_(pageable)

    def to_device(source: torch.Tensor, non_blocking: bool) -> torch.Tensor:
        # without CUDA a clone stands in: a copy all the same
        return source.to(device, non_blocking=non_blocking) if cuda else source.clone()

    def staged() -> torch.Tensor:
        pinned.copy_(pageable)
        return to_device(pinned, True)

    ways = {
        "pageable": lambda: to_device(pageable, False),
        "pinned": lambda: to_device(pinned, True),
        "staged": staged,
    }
    result: dict[str, Any] = {"bytes": nbytes}
    for name, fn in ways.items():
        _timed(fn, device, 5, 5)
        p50 = _summary(_timed(fn, device, iterations, 10))["p50_us"]
        result[f"{name}_us"] = p50
        result[f"{name}_gb_s"] = nbytes / p50 / 1e3 if p50 else 0.0
    result["pinned_speedup"] = result["pageable_us"] / result["pinned_us"] if result["pinned_us"] else None
    return result


# -------------------------------------------------------------------------------------------------- server


@dataclass
class Server:
    pid: int
    http_port: int
    grpc_port: int
    metrics_port: int
    log: Path


def _taskset(cpus: str) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


def _server_env(shim: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT), *([str(shim)] if shim else []), *filter(None, [env.get("PYTHONPATH", "")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


@contextlib.contextmanager
def serve(
    repository: Path, models: Sequence[str], logs: Path, label: str, shim: Path | None, ready_s: float,
    extra: Sequence[str] = (), cpus: str = "",
) -> Iterator[Server]:
    """``python -m v2server`` on free 127.0.0.1 ports, ``models`` loaded (explicit mode); stopped on exit.
    ``cpus``: a ``taskset -c`` list to confine it (and its workers) to."""
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    argv = [
        *_taskset(cpus), sys.executable, "-m", "v2server", "--model-repository", str(repository),
        "--http-address", "127.0.0.1", "--http-port", str(http_port),
        "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc_port),
        "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics_port),
        "--model-control-mode", "explicit", *(f"--load-model={model}" for model in models), *extra,
    ]
    log = logs / f"{label}.log"
    with started(argv, log, env=_server_env(shim), cwd=ROOT) as process:
        ready = ["/v2/health/ready", *(f"/v2/models/{model}/ready" for model in models)]
        try:
            wait_http_ok(http_port, ready, process, ready_s)
        except RuntimeError as exc:
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise RuntimeError(f"{exc}; log tail: {tail}") from None
        yield Server(process.pid, http_port, grpc_port, metrics_port, log)


def _check(server: Server, payload: bytes) -> None:
    """One request, answered without error, before anything is timed."""
    import grpc

    from bench.loadgen_grpc import METHOD

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        channel.unary_unary(METHOD)(payload, timeout=120)


def _stats(server: Server, model: str) -> dict[str, tuple[int, int]]:
    """The model's cumulative inference statistics: name -> (count, ns)."""
    status, body = http_get(server.http_port, f"/v2/models/{model}/stats")
    if status != 200:
        return {}
    stats = json.loads(body)["model_stats"][0]["inference_stats"]
    return {name: (int(value.get("count", 0)), int(value.get("ns", 0))) for name, value in stats.items()}


def _stats_delta(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Average microseconds per request of each stage between two readings."""
    averages = {}
    for name, (count, ns) in after.items():
        count0, ns0 = before.get(name, (0, 0))
        if count > count0:
            averages[f"{name}_avg_us"] = (ns - ns0) / (count - count0) / 1e3
    return averages


def load(
    port: int, payload_file: Path, concurrency: int, seconds: float, warmup: float, processes: int,
    during: Callable[[], None] | None = None, shim: Path | None = None, cpus: str = "",
) -> dict[str, Any]:
    """``concurrency`` gRPC clients split over ``processes`` ``bench.loadgen_grpc`` processes (one connection
    each), all at once; ``during`` runs halfway through the timed part. The rate is their sum;
    ``client_cpu_seconds`` what the client processes used."""
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    argv = [
        *_taskset(cpus), sys.executable, "-m", "bench.loadgen_grpc", "--target", f"127.0.0.1:{port}",
        "--payload", str(payload_file), "--seconds", str(seconds), "--warmup", str(warmup),
    ]
    handshake = _HANDSHAKE and len(shares) > 1
    clients = [
        subprocess.Popen([*argv, "--concurrency", str(share), *(["--handshake"] if handshake else [])],
                         stdin=subprocess.PIPE if handshake else subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=ROOT, env=_server_env(shim), bufsize=0)
        for share in shares
    ]
    runs: list[dict[str, Any]] = []
    failures: list[str] = []
    try:
        if handshake:  # every client connected before any sends: their timed windows coincide
            deadline = time.monotonic() + 90
            for client in clients:
                assert client.stdout is not None
                while not select.select([client.stdout], [], [], 1)[0]:
                    if time.monotonic() > deadline or client.poll() is not None:
                        client.kill()
                        detail = client.communicate()[1][-400:]
                        raise RuntimeError(f"a client did not connect: {detail!r}")
                client.stdout.readline()
            for client in clients:
                assert client.stdin is not None
                client.stdin.write(b"go\n")
                client.stdin.flush()
        if during is not None:
            time.sleep(warmup + seconds / 2 + 0.5)  # the clients' imports take a moment too
            with contextlib.suppress(Exception):
                during()
        for client in clients:
            try:
                out, err = client.communicate(timeout=warmup + seconds + 120)
            except subprocess.TimeoutExpired:
                client.kill()
                out, err = client.communicate()
            lines = [line for line in out.decode().splitlines() if line.startswith("{")]
            if client.returncode != 0 or not lines:
                failures.append(f"client exit {client.returncode}: {err.decode(errors='replace')[-400:]}")
            else:
                runs.append(json.loads(lines[-1]))
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()
    if not runs:
        raise RuntimeError("; ".join(failures) or "no client ran")
    errors: dict[str, int] = {}
    for run in runs:
        for code, count in run["errors"].items():
            errors[code] = errors.get(code, 0) + count
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    return {
        "concurrency": concurrency, "processes": len(shares), "seconds": seconds, "cpus": cpus or None,
        "client_cpu_seconds": round(cpu, 2),
        "rate": sum(float(run["rate"]) for run in runs),
        "p50_us": statistics.median(float(run["p50_us"]) for run in runs),  # of each process's p50
        "p99_us": max(float(run["p99_us"]) for run in runs),
        "requests": sum(int(run["requests"]) for run in runs),
        "errors": errors, "client_failures": failures,
    }


class GpuMemorySampler:
    """Samples GPU memory (and utilisation) on a thread: the server's processes' own use where NVML or
    nvidia-smi reports them by pid, and the whole device's; peaks kept. ``source`` says which tool answered.
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.pids: set[int] = set()
        self.source = "none"
        self.note = ""
        self.samples = 0
        self.baseline_device_bytes: int | None = None
        self.peak_device_bytes: int | None = None
        self.peak_server_bytes: int | None = None
        self.peak_utilization: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml: Any = None
        self._handle: Any = None
        if not torch.cuda.is_available():
            self.note = "no CUDA device"
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            uuid = f"GPU-{torch.cuda.get_device_properties(0).uuid}"
            self._handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
            self._nvml = pynvml
            self.source = "pynvml"
        except Exception as exc:  # noqa: BLE001 (not installed, or no driver library: nvidia-smi then)
            self.note = f"pynvml unavailable ({type(exc).__name__}: {exc})"
            if shutil.which("nvidia-smi"):
                self.source = "nvidia-smi"
        with contextlib.suppress(Exception):
            self.baseline_device_bytes = self._read()[0]

    def _read(self) -> tuple[int, dict[int, int], float | None]:
        """(device used bytes, {pid: bytes}, utilisation 0-1)."""
        if self._nvml is not None:
            nvml = self._nvml
            used = int(nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
            running = nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
            per_pid = {int(p.pid): int(p.usedGpuMemory or 0) for p in running}
            utilization = float(nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu) / 100
            return used, per_pid, utilization
        if self.source == "nvidia-smi":
            gpu = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used,utilization.gpu", "--format=csv,noheader,nounits",
                 "-i", "0"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout.split(",")
            apps = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout
            per_pid = {}
            for line in apps.splitlines():
                with contextlib.suppress(ValueError):
                    pid, mib = (part.strip() for part in line.split(","))
                    per_pid[int(pid)] = int(float(mib)) << 20
            return int(float(gpu[0])) << 20, per_pid, float(gpu[1]) / 100
        raise RuntimeError("no source")

    def watch(self, pid: int) -> None:
        self.pids = set(tree(pid))

    def _sample(self) -> None:
        used, per_pid, utilization = self._read()
        self.samples += 1
        self.peak_device_bytes = max(self.peak_device_bytes or 0, used)
        if utilization is not None:
            self.peak_utilization = max(self.peak_utilization or 0.0, utilization)
        mine = [bytes_ for pid, bytes_ in per_pid.items() if pid in self.pids]
        if mine:
            self.peak_server_bytes = max(self.peak_server_bytes or 0, sum(mine))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._sample()
            except Exception as exc:  # noqa: BLE001 (the peaks so far stand; the note says why they stop)
                self.note = f"sampling failed: {type(exc).__name__}: {exc}"
                return

    def __enter__(self) -> Self:
        if self.source != "none":
            self._thread = threading.Thread(target=self._run, name="gpu-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        with contextlib.suppress(Exception):
            if self._nvml is not None:
                self._nvml.nvmlShutdown()

    def result(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "source": self.source, "samples": self.samples, "interval_s": self.interval,
            "baseline_device_bytes": self.baseline_device_bytes, "peak_device_bytes": self.peak_device_bytes,
            "peak_server_bytes": self.peak_server_bytes, "peak_utilization": self.peak_utilization,
        }
        if self.peak_server_bytes is None and self.peak_device_bytes is not None:
            self.note = (self.note + "; " if self.note else "") + (
                "the server's pids were not among the GPU's processes (a PID namespace?): "
                "peak_device_bytes - baseline_device_bytes is the server's share")
        if self.note:
            result["note"] = self.note
        return result


def _scrape_gpu_gauges(server: Server) -> dict[str, Any]:
    status, body = http_get(server.metrics_port, "/metrics")
    lines = [line for line in body.decode(errors="replace").splitlines() if line.startswith("nv_gpu_")]
    return {
        "status": status,
        "lines": lines[:24],
        "present": {
            name: any(line.startswith(name + "{") for line in lines)
            for name in ("nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes")
        },
    }


def workers_flag(help_text: str) -> bool:
    """Whether ``v2server --help`` offers ``--workers``."""
    return re.search(r"(^|[\s\[,])--workers\b", help_text) is not None


# ------------------------------------------------------------------------------------------ steps, results


class Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    def elapsed(self) -> float:
        return time.monotonic() - self.start


@dataclass
class Run:
    out: Path
    plan: Plan
    budget: Budget
    results: dict[str, Any] = field(default_factory=dict)

    def save(self) -> None:
        self.results["elapsed_seconds"] = round(self.budget.elapsed(), 1)
        self.out.mkdir(parents=True, exist_ok=True)
        for name, text in (("gpu.json", json.dumps(self.results, indent=2, default=str) + "\n"),
                           ("gpu.md", render_markdown(self.results))):
            temporary = self.out / f".{name}.tmp"
            temporary.write_text(text)
            temporary.replace(self.out / name)

    def step(self, name: str, need_s: float, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Run ``fn`` when ``need_s`` seconds of budget are left; record its result, its failure or why it was
        skipped under ``steps[name]``; save."""
        steps = self.results.setdefault("steps", {})
        if self.budget.left() < need_s:
            note = f"budget: {self.budget.left():.0f} s left, needs ~{need_s:.0f} s"
            steps[name] = {"status": "skipped", "note": note}
            self.save()
            return None
        began = time.monotonic()
        print(f"[bench.gpu] {name} ...", file=sys.stderr, flush=True)
        try:
            result = {"status": "ok", **fn()}
        except Exception as exc:  # noqa: BLE001 (one failing step must not lose the others)
            result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000],
                      "traceback": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.monotonic() - began, 1)
        steps[name] = result
        print(f"[bench.gpu] {name}: {result['status']} ({result['seconds']} s)", file=sys.stderr, flush=True)
        self.save()
        return result


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(plan: Plan) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(), "python_executable": sys.executable, "torch": torch.__version__,
        "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        properties = torch.cuda.get_device_properties(0)
        info["gpu_memory_bytes"] = int(properties.total_memory)
        info["cudnn"] = torch.backends.cudnn.version()
        with contextlib.suppress(Exception):
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"],
                capture_output=True, text=True, timeout=20, check=True,
            ).stdout.strip()
    else:
        info["gpu"] = None
    with contextlib.suppress(Exception):
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    return info


_BACKENDS_PROBE = (
    "import importlib.metadata as m; "
    "print(','.join(e.name for e in m.entry_points(group='v2server.backends')))"
)


def preflight(out: Path) -> dict[str, Any]:
    """Can this Python run the server? ``v2server --help`` (its imports), its backends' entry points (a shim
    dist-info when v2server is importable but not installed), the client's imports, NVML."""
    env = _server_env(None)
    result: dict[str, Any] = {}
    probe = subprocess.run(
        [sys.executable, "-c", _BACKENDS_PROBE],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60, check=False,
    )
    result["backends"] = probe.stdout.strip()
    shim = None
    if "pytorch" not in result["backends"].split(","):
        shim = out / "_shim"
        info = shim / "v2server_bench_shim-0.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: v2server-bench-shim\nVersion: 0\n")
        (info / "entry_points.txt").write_text(
            "[v2server.backends]\npytorch = v2server.backends.torchscript:backend\n")
        result["shim"] = str(shim)
    helped = subprocess.run(
        [sys.executable, "-m", "v2server", "--help"], capture_output=True, text=True, cwd=ROOT,
        env=_server_env(shim), timeout=120, check=False,
    )
    result["server_runs"] = helped.returncode == 0
    if helped.returncode != 0:
        result["server_error"] = helped.stderr[-1500:]
    result["workers_flag"] = workers_flag(helped.stdout)
    client = subprocess.run(
        [sys.executable, "-c", "import grpc, numpy, orjson"], capture_output=True, text=True, cwd=ROOT,
        timeout=60, check=False,
    )
    result["client_runs"] = client.returncode == 0
    if client.returncode != 0:
        result["client_error"] = client.stderr[-800:]
    try:
        import pynvml  # noqa: F401

        result["pynvml"] = True
    except ImportError:
        result["pynvml"] = False
    result["nvidia_smi"] = shutil.which("nvidia-smi") is not None
    return result


# ------------------------------------------------------------------------------------------------- the run


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("MET" if met else "MISSED")


def run(out: Path, plan: Plan, budget_s: float, repository: Path | None = None) -> dict[str, Any]:
    budget = Budget(budget_s)
    bench = Run(out, plan, budget)
    bench.results.update({
        "benchmark": "bench.gpu",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "dry_run": plan.dry_run,
        "budget_seconds": budget_s,
        "plan": asdict(plan),
        "targets": {"server_time_us": TARGET_SERVER_US, "worker_efficiency": TARGET_WORKER_EFFICIENCY},
    })
    bench.results["machine"] = machine(plan)
    bench.save()
    scratch = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    repo = repository or scratch / "repository"
    payloads = scratch / "payloads"
    payloads.mkdir()
    logs = out / "logs"
    try:
        pre = bench.step("preflight", 30, lambda: preflight(scratch))
        shim = Path(pre["shim"]) if pre and pre.get("shim") else None
        built = bench.step("repository", 60 if not plan.dry_run else 10, lambda: build_repository(repo, plan))
        if not built or built["status"] != "ok":
            return bench.results
        bare = bench.step("bare_forward", 60 if not plan.dry_run else 10, lambda: _bare_forwards(repo, plan))
        bench.step("pinned_copy", 30 if not plan.dry_run else 5, lambda: _copies(plan))
        _server_steps(bench, repo, payloads, logs, shim, bare)
        _workers_step(bench, repo, payloads, logs, shim, pre)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        bench.save()
    return bench.results


def _copies(plan: Plan) -> dict[str, Any]:
    note = ("v2server always stages GPU inputs through a pinned buffer (PinnedStaging, "
            "v2server/backends/torchscript/_execution.py) and has no setting to turn it off: these are the "
            "bare copies of the ResNet input, timed in this process")
    if not plan.device.startswith("cuda"):
        note += "; dry run without CUDA: CPU clones, not copies"
    batches = {
        str(batch): copy_timing((batch, 3, plan.image, plan.image), plan.device, plan.iterations)
        for batch in plan.copy_batches
    }
    return {"server_setting": None, "note": note, "batches": batches}


def _server_steps(
    bench: Run, repo: Path, payloads: Path, logs: Path, shim: Path | None, bare: dict[str, Any] | None
) -> None:
    plan, budget = bench.plan, bench.budget
    steps = bench.results.setdefault("steps", {})
    server_names = ("server_time", "batching", "gpu_memory", "metrics")
    need = 30 + 2 * plan.estimate_load_s()
    if budget.left() < need:
        for name in server_names:
            steps[name] = {"status": "skipped", "note": f"budget: {budget.left():.0f} s left for the server"}
        bench.save()
        return
    files: dict[str, Path] = {}
    for model in GPU_MODELS:
        files[model] = payloads / f"{model}.grpc.bin"
        files[model].write_bytes(_request(model, _example(model, plan)))
    files["simple"] = payloads / "simple.grpc.bin"
    files["simple"].write_bytes(_simple_request())
    sampler = GpuMemorySampler()
    scraped: dict[str, Any] = {}
    try:
        with contextlib.ExitStack() as stack:
            began = time.monotonic()
            ready_s = min(240.0, max(30.0, budget.left() - 60))
            models = [*GPU_MODELS, "simple"]
            server = stack.enter_context(serve(repo, models, logs, "v2server-gpu", shim, ready_s))
            steps["server_start"] = {"status": "ok", "seconds": round(time.monotonic() - began, 1)}
            sampler.watch(server.pid)
            stack.enter_context(sampler)
            for model in models:  # a model that fails here fails its own rows below, not the others'
                try:
                    _check(server, files[model].read_bytes())
                except Exception as exc:  # noqa: BLE001
                    steps["server_start"].setdefault("check_errors", {})[model] = f"{exc}"[:500]
            with contextlib.suppress(Exception):
                scraped["idle"] = _scrape_gpu_gauges(server)
            need = plan.estimate_load_s()
            bench.step("server_time", need, lambda: _server_time(bench, server, files, bare))

            def scrape() -> None:
                scraped["load"] = _scrape_gpu_gauges(server)

            bench.step("batching", need, lambda: _batching(bench, server, files, scrape))
            bench.step("metrics", 5, lambda: _metrics(server, scraped))
            steps["server_start"]["peak_rss_bytes"] = peak_rss_bytes(server.pid)
    except Exception as exc:  # noqa: BLE001 (recorded: the steps after the server still run)
        error = f"server: {type(exc).__name__}: {exc}"[:1500]
        for name in server_names:
            steps.setdefault(name, {"status": "error", "error": error})
        steps.setdefault("server_start", {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]})
    steps["gpu_memory"] = {"status": "ok" if sampler.samples else "skipped", **sampler.result()}
    bench.save()


def _load_with_stats(
    server: Server, model: str, files: dict[str, Path], plan: Plan, concurrency: int, processes: int,
    during: Callable[[], None] | None = None,
) -> dict[str, Any]:
    before = _stats(server, model)
    measured = load(server.grpc_port, files[model], concurrency, plan.seconds, plan.warmup, processes, during)
    measured["server_stats"] = _stats_delta(before, _stats(server, model))
    return measured


def _row(
    base: dict[str, Any], need_s: float, budget: Budget, fn: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """One row of a step: ``base`` plus what ``fn`` measured, or a note saying why not (budget, error)."""
    if budget.left() < need_s:
        return {**base, "note": f"skipped: budget ({budget.left():.0f} s left)"}
    try:
        return {**base, **fn()}
    except Exception as exc:  # noqa: BLE001 (one failing row must not lose the others)
        return {**base, "note": f"error: {type(exc).__name__}: {exc}"[:1000]}


def _server_time(
    bench: Run, server: Server, files: dict[str, Path], bare: dict[str, Any] | None
) -> dict[str, Any]:
    plan, budget = bench.plan, bench.budget
    forwards = (bare or {}).get("models", {})

    def measure(name: str, model: str) -> dict[str, Any]:
        measured = _load_with_stats(server, model, files, plan, 1, 1)
        forward = forwards.get(name, {}).get("p50_us")
        server_us = measured["p50_us"] - forward if forward is not None else None
        stats = measured["server_stats"]
        success = stats.get("success_avg_us")
        return {
            "bare_forward_us": forward,
            "bare_forward_with_copies_us": forwards.get(name, {}).get("with_copies_p50_us"),
            "client_p50_us": measured["p50_us"], "client_p99_us": measured["p99_us"],
            "rate": measured["rate"], "server_time_us": server_us,
            "server_stats_minus_forward_us": success - forward if None not in (forward, success) else None,
            "server_stats": stats, "errors": measured["errors"],
            "verdict": _verdict(None if server_us is None else server_us <= TARGET_SERVER_US),
        }

    rows = [
        _row({"model": name, "served_as": model}, plan.estimate_load_s(), budget,
             lambda name=name, model=model: measure(name, model))  # type: ignore[misc]
        for name, model in SERVER_TIME_MODELS.items()
    ]
    def floor_run() -> dict[str, Any]:
        measured = load(server.grpc_port, files["simple"], 1, plan.seconds, plan.warmup, 1)
        return {key: measured[key] for key in ("p50_us", "p99_us", "rate", "errors")}

    floor = _row({"model": "simple (CPU)"}, plan.estimate_load_s(), budget, floor_run)
    verdicts = [row["verdict"] for row in rows if "verdict" in row]
    return {
        "target_us": TARGET_SERVER_US, "rows": rows, "floor": floor,
        "verdict": "MISSED" if "MISSED" in verdicts else ("MET" if "MET" in verdicts else "n/a"),
        "definition": "server time = gRPC client p50 at concurrency 1 - bare forward p50 (input on the GPU)",
    }


def _batching(
    bench: Run, server: Server, files: dict[str, Path], during: Callable[[], None]
) -> dict[str, Any]:
    plan = bench.plan

    def measure(name: str, plain: str, batched: str) -> dict[str, Any]:
        without = _load_with_stats(server, plain, files, plan, CLIENTS, plan.client_processes)
        with_ = _load_with_stats(server, batched, files, plan, CLIENTS, plan.client_processes,
                                 during if name == "resnet50" else None)
        return {
            "without_rate": without["rate"], "with_rate": with_["rate"],
            "gain": with_["rate"] / without["rate"] if without["rate"] else None,
            "without_p50_us": without["p50_us"], "with_p50_us": with_["p50_us"],
            "without": without, "with": with_,
        }

    rows = [
        _row({"model": name, "clients": CLIENTS}, 2 * plan.estimate_load_s(), bench.budget,
             lambda name=name, plain=plain, batched=batched: measure(  # type: ignore[misc]
                 name, plain, batched))
        for name, (plain, batched) in BATCHING_MODELS.items()
    ]
    return {"clients": CLIENTS, "rows": rows}


def _metrics(server: Server, scraped: dict[str, Any]) -> dict[str, Any]:
    scraped["after"] = _scrape_gpu_gauges(server)
    seen = {name for scrape in scraped.values() for name, present in scrape["present"].items() if present}
    wanted = {"nv_gpu_utilization", "nv_gpu_memory_used_bytes"}
    return {"scrapes": scraped, "present": sorted(seen), "verdict": "present" if wanted <= seen else "absent"}


def _workers_step(
    bench: Run, repo: Path, payloads: Path, logs: Path, shim: Path | None, pre: dict[str, Any] | None
) -> None:
    plan = bench.plan
    steps = bench.results.setdefault("steps", {})
    if pre is None or pre.get("status") != "ok":
        steps["workers"] = {"status": "skipped", "note": "preflight did not run"}
        bench.save()
        return
    if not pre.get("workers_flag"):
        steps["workers"] = {"status": "skipped",
                            "note": "`v2server --help` lists no --workers: this v2server has no worker "
                                    "processes"}
        bench.save()
        return
    payload = payloads / "simple.grpc.bin"
    payload.write_bytes(_simple_request())
    server_cpus, client_cpus = split_cpus()

    def one(count: int) -> dict[str, Any]:
        with serve(repo, ["simple"], logs, f"v2server-workers-{count}", shim, 120,
                   extra=["--workers", str(count)], cpus=server_cpus) as server:
            _check(server, payload.read_bytes())
            measured = load(server.grpc_port, payload, CLIENTS, plan.seconds, plan.warmup,
                            plan.worker_client_processes, cpus=client_cpus)
        return {"rate": measured["rate"], "p50_us": measured["p50_us"], "errors": measured["errors"],
                "client_cpu_seconds": measured["client_cpu_seconds"]}

    def measure() -> dict[str, Any]:
        rows = [_row({"workers": count}, plan.estimate_load_s() + 20, bench.budget,
                     lambda count=count: one(count))  # type: ignore[misc]
                for count in plan.worker_counts]
        single = next((row["rate"] for row in rows if row["workers"] == 1 and "rate" in row), None)
        for row in rows:
            if single and "rate" in row:
                row["efficiency"] = row["rate"] / (row["workers"] * single)
        scored = [row["efficiency"] for row in rows if "efficiency" in row and row["workers"] > 1]
        return {
            "model": "simple (CPU)", "clients": CLIENTS, "client_processes": plan.worker_client_processes,
            "server_cpus": server_cpus or None, "client_cpus": client_cpus or None,
            "target_efficiency": TARGET_WORKER_EFFICIENCY, "rows": rows,
            "verdict": _verdict(None if not scored else all(e >= TARGET_WORKER_EFFICIENCY for e in scored)),
        }

    bench.step("workers", plan.estimate_load_s() + 20, measure)


# ---------------------------------------------------------------------------------------------- the report


def _us(value: object) -> str:
    return "-" if value is None else f"{float(value):,.0f} us"  # type: ignore[arg-type]


def _rate(value: object) -> str:
    return "-" if value is None else f"{float(value):,.0f}/s"  # type: ignore[arg-type]


def _bytes(value: object) -> str:
    return "-" if value is None else f"{int(value) / 2**30:.2f} GiB"  # type: ignore[call-overload]


def _cell(text: object, limit: int = 200) -> str:
    """Text fit for one table cell: one line, no column separators, at most ``limit`` characters."""
    flat = " ".join(str(text).split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _status(step: dict[str, Any] | None) -> str:
    if not step:
        return "not run"
    if step.get("status") == "error":
        return _cell(f"error: {step.get('error', '')}")
    if step.get("status") == "skipped":
        return _cell(f"skipped: {step.get('note', '')}")
    return ""


def _ok(step: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    return step is not None and step.get("status") == "ok"


def _summary_rows(steps: dict[str, Any]) -> list[str]:
    """The summary table's rows: part | result | target | verdict."""
    rows = []
    step = steps.get("server_time")
    target = f"<= {TARGET_SERVER_US:.0f} us"
    if _ok(step):
        shown = ", ".join(f"{row['model']} {_us(row['server_time_us'])}" if "server_time_us" in row
                          else f"{row['model']} -" for row in step["rows"])
        rows.append(
            ("(a) server time over the bare forward, 1 client", shown, target, step.get("verdict", "n/a")))
    else:
        rows.append(("(a) server time over the bare forward, 1 client", _status(step), target, "n/a"))
    step = steps.get("batching")
    if _ok(step):
        shown = ", ".join(f"{row['model']} x{row['gain']:.2f}" if row.get("gain") else f"{row['model']} -"
                          for row in step["rows"])
        rows.append((f"(b) dynamic batching gain, {step.get('clients', CLIENTS)} clients", shown, "-", "-"))
    else:
        rows.append((f"(b) dynamic batching gain, {CLIENTS} clients", _status(step), "-", "-"))
    step = steps.get("pinned_copy")
    if _ok(step):
        shown = ", ".join(
            f"batch {batch}: pageable {c['pageable_gb_s']:.2f}, pinned {c['pinned_gb_s']:.2f}, "
            f"staged {c['staged_gb_s']:.2f} GB/s" for batch, c in step["batches"].items())
        rows.append(("(c) host-to-device copy of the ResNet input (in-process)", shown, "-", "-"))
    else:
        rows.append(("(c) host-to-device copy of the ResNet input", _status(step), "-", "-"))
    step = steps.get("gpu_memory")
    if step and step.get("samples"):
        shown = (f"server {_bytes(step.get('peak_server_bytes'))}, "
                 f"whole GPU {_bytes(step.get('peak_device_bytes'))} "
                 f"({_bytes(step.get('baseline_device_bytes'))} before the server), via {step.get('source')}")
        rows.append(("(d) peak GPU memory", shown, "-", "-"))
    else:
        rows.append(("(d) peak GPU memory", _cell((step or {}).get("note") or _status(step)), "-", "-"))
    step = steps.get("workers")
    target = f">= {TARGET_WORKER_EFFICIENCY} x N x infer/s(1)"
    if _ok(step):
        shown = ", ".join(
            f"{row['workers']}: {_rate(row.get('rate'))}"
            + (f" ({row['efficiency']:.2f})" if "efficiency" in row else "") for row in step["rows"])
        rows.append(
            ("(e) --workers N: infer/s (efficiency), `simple`", shown, target, step.get("verdict", "n/a")))
    else:
        rows.append(("(e) --workers N", _status(step), target, "n/a"))
    step = steps.get("metrics")
    wanted = "nv_gpu_utilization, nv_gpu_memory_used_bytes"
    if _ok(step):
        present = ", ".join(step["present"]) or "none"
        rows.append(("(f) nv_gpu_* gauges on /metrics", present, wanted, step["verdict"]))
    else:
        rows.append(("(f) nv_gpu_* gauges on /metrics", _status(step), wanted, "n/a"))
    return [f"| {part} | {_cell(shown, 400)} | {goal} | {verdict} |" for part, shown, goal, verdict in rows]


def render_markdown(results: dict[str, Any]) -> str:
    """``gpu.md``: a summary table (part, result, target, verdict), then the details of (a), (b) and (e)."""
    info = results.get("machine", {})
    steps = results.get("steps", {})
    where = (f"{info.get('gpu') or 'no GPU'}; {info.get('cpu', '?')}, {info.get('cores', '?')} cores; "
             f"torch {info.get('torch', '?')}, CUDA {info.get('cuda') or '-'}")
    lines = [
        "# GPU benchmark (`make bench-gpu`, `python -m bench.gpu`)", "",
        (f"Run {results.get('date', '?')} on {where}; {results.get('elapsed_seconds', '?')} s of a "
         f"{results.get('budget_seconds', '?')} s budget. Raw numbers: `gpu.json`."),
    ]
    if results.get("dry_run"):
        lines += ["", ("**Dry run**: CPU, KIND_CPU, narrow models and sub-second runs. The numbers only show "
                       "that every step works; they measure nothing.")]
    lines += ["", "| part | result | target | verdict |", "| --- | --- | --- | --- |", *_summary_rows(steps)]

    step = steps.get("server_time")
    if _ok(step):
        lines += ["", "## (a) Server time, concurrency 1 (gRPC)", "",
                  (f"{step.get('definition', '')}; the last but one column uses the server's own statistics "
                   "instead of the client's latency."), "",
                  ("| model | bare forward | with copies | client p50 | client p99 | server time | "
                   "server stats - forward | verdict |"),
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in step["rows"]:
            if "note" in row:
                lines.append(f"| {row['model']} | {_cell(row['note'])} | | | | | | |")
                continue
            lines.append(
                f"| {row['model']} | {_us(row.get('bare_forward_us'))} | "
                f"{_us(row.get('bare_forward_with_copies_us'))} | {_us(row['client_p50_us'])} | "
                f"{_us(row['client_p99_us'])} | {_us(row.get('server_time_us'))} | "
                f"{_us(row.get('server_stats_minus_forward_us'))} | {row['verdict']} |")
        floor = step.get("floor") or {}
        if "p50_us" in floor:
            lines += ["", (f"The client's and transport's own share: `simple` (CPU, no GPU work) answers the "
                           f"same client in {_us(floor['p50_us'])} (p50).")]
    step = steps.get("batching")
    if _ok(step):
        lines += ["", f"## (b) Dynamic batching, {step.get('clients', CLIENTS)} batch-1 clients (gRPC)", "",
                  "| model | without | with | gain | p50 without | p50 with |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for row in step["rows"]:
            if "note" in row:
                lines.append(f"| {row['model']} | {_cell(row['note'])} | | | | |")
                continue
            gain = f"x{row['gain']:.2f}" if row.get("gain") else "-"
            lines.append(f"| {row['model']} | {_rate(row['without_rate'])} | {_rate(row['with_rate'])} | "
                         f"{gain} | {_us(row['without_p50_us'])} | {_us(row['with_p50_us'])} |")
    step = steps.get("workers")
    if _ok(step):
        clients = step.get("clients", CLIENTS)
        lines += ["", f"## (e) --workers, `simple` on the CPU, {clients} clients (gRPC)", "",
                  "| workers | infer/s | p50 | efficiency |", "| --- | --- | --- | --- |"]
        for row in step["rows"]:
            if "note" in row:
                lines.append(f"| {row['workers']} | {_cell(row['note'])} | | |")
                continue
            efficiency = f"{row['efficiency']:.2f}" if "efficiency" in row else "-"
            lines.append(f"| {row['workers']} | {_rate(row['rate'])} | {_us(row['p50_us'])} | {efficiency} |")
        lines += ["", (f"Efficiency: infer/s(N) / (N x infer/s(1)). Server on CPUs "
                       f"{step.get('server_cpus') or 'any'}, {step.get('client_processes', '?')} client "
                       f"processes on CPUs {step.get('client_cpus') or 'any'}.")]
    step = steps.get("pinned_copy")
    if _ok(step) and step.get("note"):
        lines += ["", f"(c): {step['note']}."]
    failed = [(name, step) for name, step in steps.items()
              if isinstance(step, dict) and step.get("status") in ("error", "skipped")]
    if failed:
        lines += ["", "## Not measured", ""]
        lines += [f"- {name}: {_status(step)}" for name, step in failed]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------------- main


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the context managers, which stop the servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where gpu.json, gpu.md and server logs go")
    parser.add_argument("--budget-seconds", type=float, default=480.0,
                        help="steps that would not fit in what is left are skipped (default 480)")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny models, sub-second runs (the default where CUDA is unavailable)")
    parser.add_argument("--repository", type=Path, help="model repository to build (default: temporary)")
    args = parser.parse_args(argv)
    dry = args.dry_run or not torch.cuda.is_available()
    if dry and not args.dry_run:
        print("[bench.gpu] CUDA is not available: dry run on the CPU", file=sys.stderr)
    signal.signal(signal.SIGTERM, _terminate)
    results = run(args.out, make_plan(dry), args.budget_seconds, args.repository)
    print(render_markdown(results))
    failed = [name for name, step in results.get("steps", {}).items()
              if isinstance(step, dict) and step.get("status") == "error"]
    if failed:
        print(f"[bench.gpu] failed steps: {', '.join(failed)} (see {args.out / 'gpu.json'})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
