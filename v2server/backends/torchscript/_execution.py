"""How one request runs on a device: the PyTorch backend's config ``parameters``, pinned staging of inputs,
and CUDA out-of-memory.

Triton's PyTorch backend reads string ``parameters`` from ``config.pbtxt``. We apply those that torch scopes
to one thread or one call, so one model's setting cannot leak into another's:

- ``INFERENCE_MODE`` (default true): ``torch.inference_mode``; false runs under ``torch.no_grad``.
- ``DISABLE_OPTIMIZED_EXECUTION``: ``torch.jit.optimized_execution(False)`` (a thread-local switch).
- ``ENABLE_CACHE_CLEANING``: ``torch.cuda.empty_cache()`` after each request on a GPU.
- ``DISABLE_CUDNN``: torch's cuDNN switch is process-wide, as it is in Triton, which flips it for the
  duration of each execution. We do the same, counted, so that overlapping requests of such models turn it
  back on only when the last one ends; a model running beside them meanwhile runs without cuDNN too.

``ENABLE_JIT_PROFILING``, ``ENABLE_JIT_EXECUTOR``, ``ENABLE_TENSOR_FUSER`` and the thread counts
(``INTRA_OP_THREAD_COUNT``, ``INTER_OP_THREAD_COUNT``) set process-wide state in torch (an atomic, a thread
pool): applying them for one model would change every model in the process, so they are checked, logged as
ignored, and left alone. Other keys are kept in the config and ignored.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from v2server.errors import ModelLoadError

__all__ = ["ExecutionOptions", "PinnedStaging", "cuda_oom_summary", "is_cuda_oom"]

log = logging.getLogger(__name__)

_TRUE = frozenset({"true", "on", "1"})  # what Triton's ParseBoolValue accepts, in any case
_FALSE = frozenset({"false", "off", "0"})

_APPLIED = ("INFERENCE_MODE", "DISABLE_OPTIMIZED_EXECUTION", "DISABLE_CUDNN", "ENABLE_CACHE_CLEANING")
_PROCESS_WIDE_SWITCHES = ("ENABLE_JIT_PROFILING", "ENABLE_JIT_EXECUTOR", "ENABLE_TENSOR_FUSER")
_PROCESS_WIDE_COUNTS = ("INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT")


@dataclass(frozen=True, slots=True)
class ExecutionOptions:
    """The per-model execution settings we apply, parsed once at load."""

    inference_mode: bool = True
    optimized_execution: bool = True
    cudnn: bool = True
    cache_cleaning: bool = False

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str], model: str) -> ExecutionOptions:
        """Parse config ``parameters``; a bad value of a key we know is a load error naming the key."""
        flags: dict[str, bool] = {}
        for key, value in parameters.items():
            if key in _APPLIED:
                flags[key] = _boolean(model, key, value)
            elif key in _PROCESS_WIDE_SWITCHES:
                _boolean(model, key, value)
                log.warning(
                    "model '%s': parameter %s=%s is ignored: torch's switch for it is process-wide, "
                    "so setting it for one model would change every model in the server",
                    model, key, value,
                )
            elif key in _PROCESS_WIDE_COUNTS:
                _count(model, key, value)
                log.warning(
                    "model '%s': parameter %s=%s is not applied per model: torch's thread pools are "
                    "process-wide (size them for the whole server, e.g. with OMP_NUM_THREADS)",
                    model, key, value,
                )
            elif key == "ENABLE_WEIGHT_SHARING":
                if _boolean(model, key, value):
                    log.warning("model '%s': ENABLE_WEIGHT_SHARING is not supported: each instance loads "
                                "its own copy of the weights", model)
            else:
                log.debug(
                    "model '%s': parameter %s is not one the TorchScript backend reads; ignored", model, key
                )
        return cls(
            inference_mode=flags.get("INFERENCE_MODE", True),
            optimized_execution=not flags.get("DISABLE_OPTIMIZED_EXECUTION", False),
            cudnn=not flags.get("DISABLE_CUDNN", False),
            cache_cleaning=flags.get("ENABLE_CACHE_CLEANING", False),
        )

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        """The grad mode, executor optimisation and cuDNN switch one request runs under."""
        if self.optimized_execution and self.cudnn:  # the usual case: just the grad mode, the cheapest way
            return torch.inference_mode() if self.inference_mode else torch.no_grad()
        return self._full_scope()

    @contextlib.contextmanager
    def _full_scope(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode() if self.inference_mode else torch.no_grad())
            if not self.optimized_execution:
                stack.enter_context(torch.jit.optimized_execution(False))  # type: ignore[attr-defined]
            if not self.cudnn:
                stack.enter_context(_CUDNN.disabled())
            yield


def _boolean(model: str, key: str, value: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ModelLoadError(f"model '{model}': parameter {key} is '{value}', expected true or false")


def _count(model: str, key: str, value: str) -> int:
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        raise ModelLoadError(f"model '{model}': parameter {key} is '{value}', expected a whole number >= 0")
    return int(text)


class _CudnnSwitch:
    """torch's process-wide cuDNN switch, off while any request that asked for it to be off runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._restore = True

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._restore = torch.backends.cudnn.enabled
                torch.backends.cudnn.enabled = False
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    torch.backends.cudnn.enabled = self._restore


_CUDNN = _CudnnSwitch()

_ALIGNMENT = 256  # every staged tensor starts on a boundary any dtype can be viewed at
_MIN_STAGING = 1 << 16


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGNMENT) * _ALIGNMENT


class PinnedStaging:
    """One pinned host buffer per instance through which inputs reach the GPU with asynchronous copies.

    Pinning is expensive, so the buffer is kept and grown (to a power of two) rather than pinned per
    request. A copy from pinned memory returns before it has read the buffer, so :meth:`begin` waits for
    everything already queued on the instance's stream before the buffer is written again.
    """

    def __init__(self, device: torch.device, stream: torch.cuda.Stream) -> None:
        self._device = device
        self._stream = stream
        self._buffer = torch.empty(0, dtype=torch.uint8)
        self._offset = 0

    def begin(self, sizes: Iterable[int]) -> Callable[[torch.Tensor], torch.Tensor]:
        """Make room for tensors of ``sizes`` bytes; return the function that moves one to the device."""
        needed = sum(_aligned(size) for size in sizes)
        self._stream.synchronize()  # no copy out of the buffer is still in flight
        if needed > self._buffer.numel():
            capacity = max(_MIN_STAGING, 1 << (needed - 1).bit_length())
            self._buffer = torch.empty(capacity, dtype=torch.uint8, pin_memory=True)
        self._offset = 0
        return self._to_device

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        nbytes = host.numel() * host.element_size()
        start = self._offset
        if start + nbytes > self._buffer.numel():  # not announced to begin(): copy without staging
            return host.to(self._device)
        self._offset = start + _aligned(nbytes)
        slot = self._buffer[start : start + nbytes].view(host.dtype).view(host.shape)
        slot.copy_(host)
        return slot.to(self._device, non_blocking=True)  # on the current stream: the instance's


def is_cuda_oom(exc: BaseException) -> bool:
    """CUDA out-of-memory, raised by torch directly or re-raised as text by the TorchScript interpreter."""
    text = str(exc)
    return isinstance(exc, torch.OutOfMemoryError) or any(
        marker in text for marker in ("CUDA out of memory", "CUDA error: out of memory")
    )


_TRIED = re.compile(r"Tried to allocate ([\d.]+ \w+)")
_FREE = re.compile(r"total capacity of ([\d.]+ \w+) of which ([\d.]+ \w+) is free")


def cuda_oom_summary(exc: BaseException) -> str:
    """The useful part of torch's long out-of-memory message: what was asked for and what was free."""
    text = str(exc)
    tried, free = _TRIED.search(text), _FREE.search(text)
    if tried is None:
        return "CUDA out of memory"
    summary = f"CUDA out of memory: tried to allocate {tried.group(1)}"
    if free is not None:
        summary += f" with {free.group(2)} free of {free.group(1)}"
    return summary
