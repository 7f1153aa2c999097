"""Triton's ``model_warmup``: synthetic requests every instance runs before its model version is READY.

TorchScript's profiling executor profiles and optimises a method over its first calls (once per method, shared
by every thread), OpenMP creates a team of worker threads for each thread on its first parallel region, and
CUDA sets up kernels and caches lazily, so without warmup the first real requests pay those costs. Warmup
requests go through each instance's own ``execute`` (its own worker thread), so the cost is paid at load time
instead; an instance that may run short executions on the event loop (``warm_inline``, see
``backends/base.py``) then runs each request once more there, so that the loop's thread is warm too.

The data follows Triton (``backend_model_instance.cc``): a warmup input's ``dims`` exclude the batch
dimension; one sample is built and repeated ``batch_size`` times; ``input_data_file`` names a file under
``<model_dir>/warmup/`` that holds (at least) one sample's raw bytes, or for BYTES exactly its 4-byte
length-prefixed elements. Unlike Triton, entries are checked against the config before anything runs, so a bad
entry fails the load with a message that names it, not with a request error from deep inside.
"""

from __future__ import annotations

import asyncio
import logging
import math
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from v2server._proto import model_config_pb2 as mc
from v2server.backends.base import ModelInstance
from v2server.datatypes import DataType, from_config_type
from v2server.errors import InvalidRequest, ModelLoadError, V2Error
from v2server.names import check_relative_path
from v2server.tensors import Tensor, deserialize_bytes

__all__ = ["WARMUP_FOLDER", "WarmupRequest", "run_warmup", "warmup_requests"]

log = logging.getLogger(__name__)

WARMUP_FOLDER = "warmup"
_ALPHABET = np.frombuffer((string.ascii_letters + string.digits).encode(), dtype=np.uint8)

_Fail = Callable[[str], ModelLoadError]


@dataclass(frozen=True, slots=True)
class WarmupRequest:
    """One ``model_warmup`` entry, ready to run ``count`` times on every instance."""

    name: str
    inputs: list[Tensor]
    batch_size: int  # 0 when the model does not batch, as ``execute`` expects
    count: int


def warmup_requests(config: mc.ModelConfig, model_dir: Path) -> list[WarmupRequest]:
    """Build and check every ``model_warmup`` entry of a validated ``config``.

    Args:
        config: the model's configuration, already validated (``read_config``).
        model_dir: the model's directory; ``input_data_file`` paths are relative to its ``warmup/`` folder.

    Raises:
        ModelLoadError: an entry does not fit the model, or its data file is missing or too short.
    """
    rng = np.random.default_rng()
    return [_request(config, entry, index, model_dir, rng) for index, entry in enumerate(config.model_warmup)]


async def run_warmup(
    instances: Sequence[ModelInstance], requests: Sequence[WarmupRequest], output_names: Sequence[str]
) -> None:
    """Run every request ``count`` times, in order, on every instance; instances warm up concurrently.

    Every instance finishes (or fails) before this returns, so no warmup is still running on an instance the
    caller closes after a failure.

    Raises:
        ModelLoadError: ``model_warmup '<name>' failed: <reason>`` for the first failure.
    """
    outputs = list(output_names)

    async def warm(instance: ModelInstance) -> None:
        for request in requests:
            for _ in range(request.count):
                try:
                    await instance.execute_timed(request.inputs, outputs, request.batch_size)
                except Exception as exc:  # the model's or our failure: either way the version cannot serve
                    raise _failed(request, exc) from exc
        warm_inline = getattr(instance, "warm_inline", None)
        if warm_inline is not None:  # after the thread's warmup, so that the executor's compiling is done
            for request in requests:
                try:
                    warm_inline(request.inputs, outputs, request.batch_size)
                except Exception as exc:
                    raise _failed(request, exc) from exc

    results = await asyncio.gather(*(warm(instance) for instance in instances), return_exceptions=True)
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is not None:
        raise failure
    if requests:
        log.debug("warmed up %d instance(s) with %d model_warmup request(s)", len(instances), len(requests))


def _failed(request: WarmupRequest, exc: Exception) -> ModelLoadError:
    reason = exc.message if isinstance(exc, V2Error) else (str(exc) or type(exc).__name__)
    return ModelLoadError(f"model_warmup '{request.name}' failed: {reason}")


def _request(
    config: mc.ModelConfig, entry: mc.ModelWarmup, index: int, model_dir: Path, rng: np.random.Generator
) -> WarmupRequest:
    label = entry.name or f"#{index}"

    def fail(message: str) -> ModelLoadError:
        return ModelLoadError(f"model_warmup '{label}': {message}")

    batching = config.max_batch_size > 0
    batch_size = max(entry.batch_size, 1)
    if batching and batch_size > config.max_batch_size:
        raise fail(f"batch_size {entry.batch_size} exceeds max_batch_size {config.max_batch_size}")
    if not batching and batch_size > 1:
        raise fail(f"batch_size {entry.batch_size} needs a batching model, but max_batch_size is 0")
    declared = {tensor.name: tensor for tensor in config.input}
    for name in sorted(entry.inputs):
        if name not in declared:
            raise fail(f"input '{name}' is not an input of the model (inputs: {list(declared)})")
    missing = [name for name, tensor in declared.items() if name not in entry.inputs and not tensor.optional]
    if missing:
        raise fail(f"input(s) {missing} of the model are missing")
    tensors = []
    for name, model_input in declared.items():
        if name in entry.inputs:
            sample = _sample(name, entry.inputs[name], model_input, model_dir, rng, fail)
            array = np.repeat(sample[np.newaxis], batch_size, axis=0) if batching else sample
            tensors.append(Tensor(name, from_config_type(mc.DataType.Name(model_input.data_type)), array))
    return WarmupRequest(label, tensors, batch_size if batching else 0, entry.count or 1)


def _sample(
    name: str,
    spec: mc.ModelWarmup.Input,
    model_input: mc.ModelInput,
    model_dir: Path,
    rng: np.random.Generator,
    fail: _Fail,
) -> np.ndarray:
    """One sample (no batch dimension) of a warmup input, after checking it against the config."""
    if spec.data_type != model_input.data_type:
        raise fail(
            f"input '{name}': data_type {mc.DataType.Name(spec.data_type)} differs from the model's "
            f"{mc.DataType.Name(model_input.data_type)}"
        )
    dims, expected = tuple(spec.dims), list(model_input.dims)
    if any(dim < 0 for dim in dims):
        raise fail(f"input '{name}': dims {list(dims)} must be concrete sizes (no -1)")
    if len(dims) != len(expected) or any(d != e and e != -1 for d, e in zip(dims, expected, strict=False)):
        raise fail(
            f"input '{name}': dims {list(dims)} do not match the model's dims {expected} (-1 is any size)"
        )
    dt = from_config_type(mc.DataType.Name(model_input.data_type))
    count = math.prod(dims)
    source = spec.WhichOneof("input_data_type")
    if source == "zero_data":
        array = np.full(count, b"", dtype=object) if dt.name == "BYTES" else np.zeros(count, dtype=dt.numpy)
    elif source == "random_data":
        array = _random(dt, count, rng)
    elif source == "input_data_file":
        array = _from_file(name, spec.input_data_file, dt, count, model_dir, fail)
    else:
        raise fail(f"input '{name}': set one of zero_data, random_data or input_data_file")
    return array.reshape(dims)


def _random(dt: DataType, count: int, rng: np.random.Generator) -> np.ndarray:
    """Random values a model can take: short ASCII strings, 0/1, any integer, floats in [0, 1)."""
    if dt.name == "BYTES":
        array = np.empty(count, dtype=object)
        lengths = rng.integers(1, 9, count)
        array[:] = [_ALPHABET[rng.integers(0, len(_ALPHABET), size=n)].tobytes() for n in lengths]
        return array
    if dt.name == "BOOL":
        return rng.integers(0, 2, count).astype(np.bool_)
    if dt.name == "BF16":  # the upper half of an FP32 is its BF16; truncation keeps values below 1
        return (rng.random(count, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    if dt.numpy.kind == "f":  # rounding to FP16 can reach 1.0; keep the half-open range
        values = rng.random(count).astype(dt.numpy)
        below_one: np.ndarray = np.minimum(values, np.nextafter(dt.numpy.type(1), dt.numpy.type(0)))
        return below_one
    info = np.iinfo(dt.numpy)
    return rng.integers(info.min, info.max, count, dtype=dt.numpy, endpoint=True)


def _from_file(name: str, filename: str, dt: DataType, count: int, model_dir: Path, fail: _Fail) -> np.ndarray:
    """One sample from ``<model_dir>/warmup/<filename>``, Triton's raw layout."""
    try:
        parts = check_relative_path(filename, f"input '{name}': input_data_file (a path inside {WARMUP_FOLDER}/)")
    except InvalidRequest as exc:
        raise fail(exc.message) from None
    path = model_dir.joinpath(WARMUP_FOLDER, *parts)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise fail(f"input '{name}': cannot read {path}: {exc.strerror}") from None
    if dt.name == "BYTES":
        try:
            return deserialize_bytes(data, count, name)
        except InvalidRequest as exc:
            raise fail(f"{exc.message} (in {path})") from None
    needed = count * dt.itemsize
    if len(data) < needed:
        raise fail(
            f"input '{name}': {path} holds {len(data)} bytes, but one sample of {dt.name} needs {needed}"
        )
    return np.frombuffer(data, dtype=dt.numpy, count=count)
