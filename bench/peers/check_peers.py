"""End to end check of the peers: build their venvs, start each through ``envs.launch``, drive it with tritonclient.

Usage (from the repository root, in our venv)::

    .venv/bin/python bench/peers/check_peers.py --cache .bench [--peers mlserver kserve] [--requests 300]

For every peer this infers ``simple`` ([1,16] INT32), ``mlp`` (batch 1 and 8), a 1 MiB FP32 identity and
``simple_identity`` (BYTES) over REST with JSON tensors, REST with Triton's binary tensor extension, REST with no
requested outputs (tritonclient then asks for ``binary_data_output``) and gRPC, comparing each answer with torch
running the same file here. It prints the support matrix and a rough sequential latency on ``simple``, writes
both to ``<cache>/peers-check/results.json``, talks only to 127.0.0.1, stops every process it starts and gives up
after ``--budget`` seconds. Exit status 0 when every peer serves the numeric models over REST JSON and gRPC.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import processes  # noqa: E402 (needs ROOT on sys.path when run as a script)
from bench.peers import envs  # noqa: E402 (needs ROOT on sys.path when run as a script)

TRANSPORTS = ("rest-json", "rest-json-ct", "rest-binary", "rest-default", "grpc")
NUMERIC = ("simple", "mlp-b1", "mlp-b8", "identity-1MiB")
SPECS = {
    "simple": (("INPUT0", "INPUT1"), ("OUTPUT0", "OUTPUT1")),
    "mlp": (("INPUT__0",), ("OUTPUT__0",)),
    "identity_fp32": (("INPUT0",), ("OUTPUT0",)),
    "simple_identity": (("INPUT0",), ("OUTPUT0",)),
}


@dataclass(frozen=True)
class Case:
    label: str
    model: str
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]


class Timeout(Exception):
    pass


def _build_repository(root: Path) -> Path:
    """Our bundled models (scripts/build_models.py) plus a 1 MiB FP32 identity."""
    repository = root / "repo"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_models.py"), str(repository)], check=True)
    identity = repository / "identity_fp32" / "1"
    identity.mkdir(parents=True, exist_ok=True)
    torch.jit.script(_Identity()).save(str(identity / "model.pt"))  # type: ignore[no-untyped-call]
    return repository


class _Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _cases(repository: Path) -> list[Case]:
    """Inputs and the answers torch gives for them, computed here from the very files the peers load."""
    rng = np.random.default_rng(0)

    def run(model: str, *arrays: np.ndarray) -> list[np.ndarray]:
        module = torch.jit.load(str(repository / model / "1" / "model.pt")).eval()  # type: ignore[no-untyped-call]
        with torch.inference_mode():
            result = module(*(torch.from_numpy(array.copy()) for array in arrays))
        return [t.numpy() for t in (result if isinstance(result, tuple) else (result,))]

    a = rng.integers(-1000, 1000, (1, 16), dtype=np.int32)
    b = rng.integers(-1000, 1000, (1, 16), dtype=np.int32)
    x1 = rng.standard_normal((1, 784), dtype=np.float32)
    x8 = rng.standard_normal((8, 784), dtype=np.float32)
    big = rng.standard_normal(262144, dtype=np.float32)
    words = np.array([f"word-{i}".encode() for i in range(16)], dtype=np.object_).reshape(1, 16)
    return [
        Case("simple", "simple", {"INPUT0": a, "INPUT1": b}, dict(zip(("OUTPUT0", "OUTPUT1"), run("simple", a, b), strict=True))),
        Case("mlp-b1", "mlp", {"INPUT__0": x1}, {"OUTPUT__0": run("mlp", x1)[0]}),
        Case("mlp-b8", "mlp", {"INPUT__0": x8}, {"OUTPUT__0": run("mlp", x8)[0]}),
        Case("identity-1MiB", "identity_fp32", {"INPUT0": big}, {"OUTPUT0": run("identity_fp32", big)[0]}),
        Case("bytes-identity", "simple_identity", {"INPUT0": words}, {"OUTPUT0": words}),
    ]


def _datatype(array: np.ndarray) -> str:
    return "BYTES" if array.dtype == np.object_ else httpclient.np_to_triton_dtype(array.dtype)


def _inputs(transport: str, case: Case) -> list[Any]:
    """The case's inputs as tritonclient tensors: raw for gRPC, JSON or binary for REST."""
    module = grpcclient if transport == "grpc" else httpclient
    inputs = []
    for name, array in case.inputs.items():
        tensor = module.InferInput(name, list(array.shape), _datatype(array))
        if transport == "grpc":
            tensor.set_data_from_numpy(array)
        else:
            tensor.set_data_from_numpy(array, binary_data=transport == "rest-binary")
        inputs.append(tensor)
    return inputs


def _infer(transport: str, port: int, case: Case) -> tuple[dict[str, np.ndarray], str]:
    """One request the way a tritonclient user writes it; returns every expected output as numpy."""
    binary = transport == "rest-binary"
    inputs = _inputs(transport, case)
    if transport == "grpc":
        outputs = [grpcclient.InferRequestedOutput(name) for name in case.expected]
        with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
            result = client.infer(case.model, inputs, outputs=outputs, client_timeout=60)
    else:
        requested = None if transport == "rest-default" else [
            httpclient.InferRequestedOutput(name, binary_data=binary) for name in case.expected
        ]
        with contextlib.closing(
            httpclient.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=30, network_timeout=60)
        ) as client:
            # tritonclient sends JSON without a Content-Type; "-ct" adds the one a curl or wrk user would send
            headers = {"Content-Type": "application/json"} if transport in ("rest-json-ct", "rest-default") else None
            result = client.infer(case.model, inputs, outputs=requested, headers=headers)
    return {name: result.as_numpy(name) for name in case.expected}, _encoding(transport, result, case)


def _encoding(transport: str, result: object, case: Case) -> str:
    """How the outputs came back: ``raw``/``typed`` gRPC contents, ``binary``/``json`` REST tensors."""
    if isinstance(result, grpcclient.InferResult):
        return "raw" if result.get_response().raw_output_contents else "typed"
    assert isinstance(result, httpclient.InferResult)
    parameters = [(result.get_output(name) or {}).get("parameters") or {} for name in case.expected]
    binary = [bool(p.get("binary_data_size")) for p in parameters]
    return "binary" if all(binary) else "json" if not any(binary) else "mixed"


def _verdict(case: Case, got: dict[str, np.ndarray]) -> str:
    notes = []
    for name, want in case.expected.items():
        have = got[name]
        if have.dtype != want.dtype:
            return f"{name}: dtype {have.dtype}, expected {want.dtype}"
        if tuple(have.shape) != tuple(want.shape):
            if have.size != want.size:
                return f"{name}: shape {list(have.shape)}, expected {list(want.shape)}"
            notes.append(f"{name} shape {list(have.shape)}")  # values may still be right: compare them
            have = have.reshape(want.shape)
        if want.dtype == np.object_:
            same = [_bytes(v) for v in have.ravel()] == [_bytes(v) for v in want.ravel()]
        elif want.dtype.kind == "f":
            same = bool(np.allclose(have, want, rtol=1e-5, atol=1e-6))
        else:
            same = bool(np.array_equal(have, want))
        if not same:
            return f"{name}: wrong values"
    return "ok" + (f" ({', '.join(notes)})" if notes else "")


def _bytes(value: object) -> bytes:
    """tritonclient gives BYTES from JSON as str and from binary as bytes."""
    return value if isinstance(value, bytes) else str(value).encode()


def _check(transport: str, port: int, case: Case) -> str:
    try:
        got, encoding = _infer(transport, port, case)
        verdict = _verdict(case, got)
        expected = {"grpc": "raw", "rest-binary": "binary", "rest-default": "binary"}.get(transport, "json")
        return verdict if encoding == expected or not verdict.startswith("ok") else f"{verdict} [{encoding} outputs]"
    except Timeout:
        raise
    except Exception as error:  # noqa: BLE001 (what the peer answered is the finding)
        text = " ".join(str(error).split())
        return f"FAIL {type(error).__name__}: {text[:220]}"


def _latency(transport: str, port: int, case: Case, count: int) -> dict[str, float]:
    """Sequential requests on one connection: mean, p50, p99 in milliseconds."""
    inputs = _inputs(transport, case)
    headers = {"Content-Type": "application/json"} if transport == "rest-json-ct" else None
    if transport == "grpc":
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        outputs = [grpcclient.InferRequestedOutput(name) for name in case.expected]
    else:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60)
        outputs = [
            httpclient.InferRequestedOutput(name, binary_data=transport == "rest-binary") for name in case.expected
        ]
    samples = []
    try:
        for i in range(count + 20):
            started = time.perf_counter()
            if headers:
                client.infer(case.model, inputs, outputs=outputs, headers=headers)
            else:
                client.infer(case.model, inputs, outputs=outputs)
            if i >= 20:
                samples.append((time.perf_counter() - started) * 1e3)
    finally:
        client.close()
    samples.sort()
    return {
        "mean_ms": round(statistics.fmean(samples), 3),
        "p50_ms": round(samples[len(samples) // 2], 3),
        "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 3),
    }


@contextlib.contextmanager
def _serving(argv: list[str], env: dict[str, str], log: Path, port: int, paths: list[str]) -> Iterator[float]:
    """Start the peer in its own process group; yield its start-up seconds once ready; stop the group after."""
    started = time.monotonic()
    with processes.started(argv, log, env=env) as process:
        processes.wait_http_ok(port, paths, process, seconds=240)
        yield time.monotonic() - started


def _probe(port: int, grpc_port: int, model: str) -> dict[str, str]:
    """The non-inference calls a tritonclient user makes first."""
    calls: dict[str, Callable[[], object]] = {}
    http_client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=30)
    grpc_client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    calls["rest server_metadata"] = http_client.get_server_metadata
    calls["rest model_metadata"] = lambda: http_client.get_model_metadata(model)
    calls["rest model_config"] = lambda: http_client.get_model_config(model)
    calls["grpc server_ready"] = grpc_client.is_server_ready
    calls["grpc model_ready"] = lambda: grpc_client.is_model_ready(model)
    calls["grpc model_metadata"] = lambda: grpc_client.get_model_metadata(model, as_json=True)
    found = {}
    try:
        for name, call in calls.items():
            try:
                answer = call()
                found[name] = "ok" if answer not in (False, None) else f"answered {answer!r}"
            except Timeout:
                raise
            except Exception as error:  # noqa: BLE001
                found[name] = f"FAIL {type(error).__name__}: {' '.join(str(error).split())[:160]}"
    finally:
        http_client.close()
        grpc_client.close()
    return found


def check_peer(peer: str, cache: Path, repository: Path, cases: list[Case], count: int) -> dict[str, object]:
    python = envs.ensure_env(peer, cache)
    models = [envs.ModelSpec(name, repository / name / "1" / "model.pt", *spec) for name, spec in SPECS.items()]
    http_port, grpc_port = processes.free_port(), processes.free_port()
    workdir = cache / "peers-check" / "work" / peer
    argv, env = envs.launch(peer, python, models, http_port, grpc_port, workdir)
    print(f"[check] {peer}: {' '.join(argv)}", file=sys.stderr, flush=True)
    result: dict[str, object] = {"argv": argv, "log": str(workdir / "server.log")}
    with _serving(argv, env, workdir / "server.log", http_port, envs.ready_paths(models)) as startup:
        result["startup_s"] = round(startup, 1)
        matrix = {}
        for case in cases:
            ports = {t: grpc_port if t == "grpc" else http_port for t in TRANSPORTS}
            matrix[case.label] = {t: _check(t, ports[t], case) for t in TRANSPORTS}
            print(f"[check] {peer} {case.label}: {matrix[case.label]}", file=sys.stderr, flush=True)
        result["matrix"] = matrix
        result["probes"] = _probe(http_port, grpc_port, "simple")
        simple = next(case for case in cases if case.label == "simple")
        latency = {}
        for transport in ("rest-json-ct", "rest-binary", "grpc"):
            if matrix["simple"][transport].startswith("ok"):
                latency[transport] = _latency(transport, grpc_port if transport == "grpc" else http_port, simple, count)
        result["latency_simple"] = latency
        identity = next(case for case in cases if case.label == "identity-1MiB")
        result["latency_identity_1MiB"] = {
            transport: _latency(transport, grpc_port if transport == "grpc" else http_port, identity, max(count // 10, 10))
            for transport in ("rest-json-ct", "rest-binary", "grpc")
            if matrix["identity-1MiB"][transport].startswith("ok")
        }
    return result


def _print(results: dict[str, dict[str, object]]) -> None:
    for peer, result in results.items():
        print(f"\n== {peer}  (ready in {result.get('startup_s', '?')} s)")
        if "error" in result:
            print(f"  ERROR {result['error']}")
            continue
        matrix = result["matrix"]
        assert isinstance(matrix, dict)
        print(f"  {'case':<16}" + "".join(f"{t:<20}" for t in TRANSPORTS))
        for label, row in matrix.items():
            print(f"  {label:<16}" + "".join(f"{row[t][:19]:<20}" for t in TRANSPORTS))
        for label, row in matrix.items():
            for transport, verdict in row.items():
                if verdict != "ok":
                    print(f"    {label} / {transport}: {verdict}")
        for name, verdict in dict(result["probes"]).items():  # type: ignore[call-overload]
            print(f"  probe {name}: {verdict}")
        for model in ("simple", "identity_1MiB"):
            for transport, numbers in dict(result[f"latency_{model}"]).items():  # type: ignore[call-overload]
                print(f"  latency {model} {transport}: {numbers}")


def _alarm(signum: int, frame: object) -> None:
    raise Timeout("check_peers budget exhausted")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=ROOT / ".bench", help="venvs and work files")
    parser.add_argument("--peers", nargs="+", choices=envs.PEERS, default=list(envs.PEERS))
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per latency sample")
    parser.add_argument("--budget", type=int, default=1800, help="seconds before giving up (venv builds included)")
    args = parser.parse_args()
    cache = args.cache.resolve()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(args.budget)
    repository = _build_repository(cache / "peers-check")
    cases = _cases(repository)
    results: dict[str, dict[str, object]] = {}
    for peer in args.peers:
        try:
            results[peer] = check_peer(peer, cache, repository, cases, args.requests)
        except Exception as error:  # noqa: BLE001 (report and go on with the next peer)
            results[peer] = {"error": f"{type(error).__name__}: {error}"}
    signal.alarm(0)
    (cache / "peers-check" / "results.json").write_text(json.dumps(results, indent=2))
    _print(results)
    healthy = all(
        "matrix" in result
        and all(
            dict(result["matrix"])[label][t].startswith("ok")  # type: ignore[call-overload]
            for label in NUMERIC
            for t in ("rest-json-ct", "grpc")
        )
        for result in results.values()
    )
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
