"""Run Triton's Python example clients, unchanged, against our server, and write the results down.

Usage::

    .venv/bin/python scripts/triton_examples.py [EXAMPLES_DIR]

``EXAMPLES_DIR`` is triton-inference-server/client's ``src/python/examples`` (default
``/tmp/tritonclient-src/src/python/examples``). The examples expect a server on ``localhost:8000`` (HTTP) and
``localhost:8001`` (gRPC), so this script starts one there itself, with the very command line ``make run``
runs (read from the Makefile's ``run`` recipe: ``v2server --model-repository model_repository --server-name
triton``; the health/metadata examples check that name); the model-control examples get a server of their own in ``explicit`` mode over a
temporary repository of exactly as many bundled models as the example counts (it reads the number from the
example). Every example in the folder runs, in the variants it has (``-i http`` / ``-i grpc``, ``--dyna``),
each with a timeout; image clients are listed as skipped (they need image models we do not bundle), CUDA
shared memory ones too when this machine has no CUDA device.

The results go to ``docs/triton_examples.json`` and ``docs/triton_examples.md`` (example, arguments, result:
``pass``, ``FAIL`` with the example's last lines, or ``skipped`` with why). It talks only to localhost,
refuses to start when something already listens on the ports, and stops every process it starts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "model_repository"
DEFAULT_EXAMPLES = Path("/tmp/tritonclient-src/src/python/examples")
PORTS = (8000, 8001, 8002)
EXAMPLE_TIMEOUT_S = 180
START_TIMEOUT_S = 300
LAST_LINES = 6

#: Examples that need models we do not bundle, and why.
SKIPPED = {
    "ensemble_image_client.py": "image models: an ensemble of image preprocessing and densenet_onnx",
    "grpc_client.py": "image model: densenet_onnx",
    "grpc_image_client.py": "image models: densenet_onnx / inception_onnx",
    "image_client.py": "image models: densenet_onnx / inception_onnx",
}
CUDA_EXAMPLES = ("simple_grpc_cudashm_client.py", "simple_http_cudashm_client.py")
#: Examples that run more than once, and with what arguments (every other runs once, without any).
VARIANTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "memory_growth_test.py": (("-i", "http"), ("-i", "grpc")),
    "reuse_infer_objects_client.py": (("-i", "http"), ("-i", "grpc", "-u", "localhost:8001")),  # its -u: 8000
    "simple_grpc_sequence_stream_infer_client.py": ((), ("--dyna",)),
    "simple_grpc_sequence_sync_infer_client.py": ((), ("--dyna",)),
    "simple_grpc_aio_sequence_stream_infer_client.py": ((), ("--dyna",)),
    "simple_http_sequence_sync_infer_client.py": ((), ("--dyna",)),
    "simple_http_infer_client.py": (
        (),
        ("--request-compression-algorithm", "gzip", "--response-compression-algorithm", "deflate"),
    ),
    "simple_grpc_infer_client.py": ((), ("--grpc-compression-algorithm", "gzip")),
}
MODEL_CONTROL = ("simple_grpc_model_control.py", "simple_http_model_control.py")
#: Examples that fail on purpose, and why: where we answer better than Triton (the table says so).
EXPECTED_FAILURES = {
    "simple_grpc_model_control.py": (
        "expected: every step passes up to the 256-byte upload path, which Triton answers INTERNAL and we "
        "INVALID_ARGUMENT (the example's own TODO says INVALID_ARGUMENT fits), with Triton's "
        "'failed to poll from model repository' in the message"
    ),
}
#: The bundled models a model-control repository is made of, in this order (the examples load ``simple``).
CONTROL_MODELS = (
    "simple",
    "simple_int8",
    "simple_string",
    "simple_identity",
    "example_doubler",
    "example_adder",
    "example_dict_doubler",
    "custom_identity_int32",
    "repeat_int32",
    "sentiment",
    "mlp",
)


class ServerFailed(Exception):
    """The server did not start or did not become ready (the message holds its log's end)."""


@dataclass(frozen=True, slots=True)
class Result:
    example: str
    arguments: str
    result: str  # pass, FAIL or skipped
    detail: str  # FAIL: the example's last lines; skipped: why
    expected: str = ""  # a FAIL on purpose: why


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def _server(repository: Path, log: Path, *flags: str) -> Iterator[None]:
    """``make run``'s server on the default ports over ``repository`` until the block ends (SIGTERM, then kill)."""
    busy = [port for port in PORTS if _listening(port)]
    if busy:
        raise ServerFailed(f"something already listens on localhost port(s) {busy}: stop it first")
    command = [*_make_run_command(repository), *flags]
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ready():
            if process.poll() is not None or time.monotonic() > deadline:
                raise ServerFailed(
                    f"the server did not become ready; its log ends:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


def _make_run_command(repository: Path) -> list[str]:
    """The server command of the Makefile's ``run`` recipe, with ``repository`` for the bundled one.

    Read from the Makefile, not copied, so the examples run against exactly what ``make run`` serves.
    """
    lines = (ROOT / "Makefile").read_text().splitlines()
    recipe = lines[lines.index(next(line for line in lines if line.startswith("run:"))) + 1].split()
    words = [word for word in recipe if word != "$(ARGS)"]
    words[0] = words[0].replace("$(VENV)", str(Path(sys.executable).parent.parent))
    return [str(repository) if word == "model_repository" else word for word in words]


def _ready() -> bool:
    try:
        with urllib.request.urlopen("http://127.0.0.1:8000/v2/health/ready", timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _run(examples: Path, name: str, arguments: Sequence[str]) -> Result:
    shown = " ".join(arguments)
    try:
        done = subprocess.run(
            [sys.executable, name, *arguments],
            cwd=examples,
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT_S,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return Result(
            name, shown, "FAIL", _last_lines(output + f"\n(no answer within {EXAMPLE_TIMEOUT_S} s)")
        )
    if done.returncode == 0:
        return Result(name, shown, "pass", "")
    return Result(
        name, shown, "FAIL", _last_lines(done.stdout + done.stderr + f"\n(exit status {done.returncode})")
    )


def _last_lines(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(line[:300] for line in lines[-LAST_LINES:])


def _counted_models(example: Path) -> int:
    """How many models the model-control example expects in the repository index."""
    match = re.search(r"get_model_repository_index\(\)[^\n]*!=\s*(\d+)", example.read_text())
    return int(match.group(1)) if match else 8


def _control_repository(count: int, parent: Path) -> Path:
    repository = parent / f"repository_{count}"
    repository.mkdir()
    for name in CONTROL_MODELS[:count]:
        (repository / name).symlink_to(REPOSITORY / name, target_is_directory=True)
    return repository


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def run_all(examples: Path, work: Path) -> list[Result]:
    names = sorted(path.name for path in examples.glob("*.py"))
    results: dict[tuple[str, str], Result] = {}
    plan: list[tuple[str, tuple[str, ...]]] = []
    cuda = _has_cuda()
    for name in names:
        if name in SKIPPED:
            results[(name, "")] = Result(name, "", "skipped", SKIPPED[name])
        elif name in CUDA_EXAMPLES and not cuda:
            results[(name, "")] = Result(
                name, "", "skipped", "CUDA shared memory: this machine has no CUDA device"
            )
        elif name not in MODEL_CONTROL:
            plan += [(name, variant) for variant in VARIANTS.get(name, ((),))]
    with _server(REPOSITORY, work / "server.log"):
        for name, variant in plan:
            result = _run(examples, name, variant)
            print(f"{result.result:7} {name} {result.arguments}", flush=True)
            results[(name, result.arguments)] = result
    for name in [n for n in names if n in MODEL_CONTROL]:
        count = _counted_models(examples / name)
        repository = _control_repository(count, work)
        try:
            with _server(repository, work / f"server_{name}.log", "--model-control-mode=explicit"):
                result = _run(examples, name, ())
        except ServerFailed as exc:
            result = Result(name, "", "FAIL", _last_lines(str(exc)))
        expected = EXPECTED_FAILURES.get(name, "") if result.result == "FAIL" else ""
        server = f"(server: --model-control-mode=explicit, {count} models)"
        result = Result(name, server, result.result, result.detail, expected)
        print(f"{result.result:7} {name} {result.arguments}", flush=True)
        results[(name, result.arguments)] = result
    return [results[key] for key in sorted(results)]


def write_reports(results: Sequence[Result], json_path: Path, markdown_path: Path) -> None:
    json_path.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    counts = {kind: sum(r.result == kind for r in results) for kind in ("pass", "FAIL", "skipped")}
    expected = sum(bool(r.expected) for r in results)
    lines = [
        "# Triton's example clients against v2server",
        "",
        "Written by `scripts/triton_examples.py` (run it again to refresh): every Python example client of",
        "triton-inference-server/client (`src/python/examples`), unchanged, against `make run`'s server over the",
        "bundled `model_repository/` on the default ports; the model-control examples against a server in",
        "`explicit` mode over as many bundled models as each counts.",
        "",
        f"{counts['pass']} pass, {counts['FAIL']} fail ({expected} of them as expected), "
        f"{counts['skipped']} skipped.",
        "",
        "| example | arguments | result |",
        "|---|---|---|",
    ]
    for r in results:
        if r.result == "pass":
            cell = "pass"
        elif r.result == "skipped":
            cell = f"skipped: {r.detail}"
        else:
            cell = f"FAIL ({r.expected}): " if r.expected else "FAIL: "
            cell += "<br>".join(
                f"`{line}`" for line in r.detail.replace("|", "\\|").replace("`", "'").splitlines()
            )
        arguments = f"`{r.arguments}`" if r.arguments and not r.arguments.startswith("(") else r.arguments
        lines.append(f"| `{r.example}` | {arguments} | {cell} |")
    markdown_path.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "examples", type=Path, nargs="?", default=DEFAULT_EXAMPLES, help="the examples folder"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "triton_examples.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "triton_examples.md")
    args = parser.parse_args(argv)
    if not args.examples.is_dir():
        parser.error(f"{args.examples} is not a folder")
    work = Path(tempfile.mkdtemp(prefix="triton-examples-"))
    try:
        results = run_all(args.examples.resolve(), work)
    except ServerFailed as exc:
        print(exc, file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_reports(results, args.json, args.markdown)
    failed = [r for r in results if r.result == "FAIL" and not r.expected]
    print(
        f"{len(results) - len(failed)} of {len(results)} pass, are skipped or fail as expected; "
        f"wrote {args.json} and {args.markdown}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
