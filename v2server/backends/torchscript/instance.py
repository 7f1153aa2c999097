"""TorchScript models: loading onto a device, Triton's I/O naming rules, and execution.

Inputs bind to ``forward`` arguments as Triton's PyTorch backend binds them: by argument name when every
input is named like an argument, else by the ``<name>__<index>`` suffix, else by config order; a single
``Dict[str, Tensor]`` argument receives all inputs by name; a ``Dict[str, int|float|str|bool]`` argument takes one
BYTES element holding a JSON object (see ``_arguments``). Outputs map from a tensor, a tuple or list
(``OUTPUT__<index>`` or config order), a ``Dict[str, Tensor]`` (by key), a ``List[str]`` (BYTES) or a scalar.

On the CPU, request bytes become tensors without a copy. On a GPU, each instance has its own CUDA stream:
inputs go through its pinned staging buffer with non-blocking copies, each output comes back with one
non-blocking copy into pinned memory, and the stream is synchronised once per request. Running out of GPU
memory fails only the request that did, and frees the allocator's cache for the next one.

Each instance runs requests on its own worker thread, so the event loop never waits on a model, except a CPU
model whose executions cost less than handing them to a thread (``INLINE_BELOW_NS``): those run on the event
loop itself, which the benchmark shows is cheaper for everyone. The loop has a budget, so the rule looks at the
worst case, not an average: a request runs inline only when every one of the instance's last ``_WINDOW``
executions stayed under the budget, its input is no larger than ``INLINE_MAX_INPUT_BYTES`` nor than the largest
input in that window (a usually fast model can be slow on a large input), nothing of the instance runs on its
thread, and the event loop's thread has run the model once already (see below). An inline execution over the
budget sends the instance back to its thread for ``_HOLD_FIRST`` executions, twice as many each time it
happens again. An execution's cost is its wall time when inline (what the loop lost) and the worker's CPU
time on the thread (which leaves out waiting for the GIL the loop holds).

"Warm" is per thread: TorchScript's optimised plan is per method and shared by every thread once made (the
first executions, which profile and compile, take milliseconds on whichever thread runs them), but OpenMP
gives each thread that starts a parallel region its own team of worker threads, created on its first one, and
the allocator keeps per-thread caches. Measured on ``mlp`` (batch 16) after 30 executions on the instance's
thread: the first on another thread took 4 ms where a warm one takes 0.1-0.2 ms. So before an instance runs a
request inline, it runs one on the loop with nothing waiting for it: the ``model_warmup`` requests at load
(``warm_inline``), or else, once it first qualifies, a replay of the request that made it qualify.

``pending`` counts an execution until its work has finished: a caller that stops waiting (a cancelled
request) leaves it counted while the thread still runs it, so the least-busy choice and the inline rule
never put a request beside one still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from v2server.backends.base import StageTimes
from v2server.backends.torchscript._arguments import (
    ArgKind,
    Argument,
    Move,
    arg_kind,
    convert_argument,
    to_torch,
)
from v2server.backends.torchscript._execution import (
    ExecutionOptions,
    PinnedStaging,
    cuda_oom_summary,
    is_cuda_oom,
)
from v2server.errors import InferenceFailed, ModelLoadError
from v2server.signature import Signature, TensorSpec
from v2server.tensors import Tensor

__all__ = ["TorchScriptInstance", "load_instance"]

log = logging.getLogger(__name__)

_Move = Move

# Request bytes reach the model without a copy; models must not write into their inputs.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)

_INDEXED_NAME = re.compile(r".*__(\d+)$")

#: A CPU model whose executions take less than this runs on the event loop itself: handing a request to the
#: instance's thread and back (two thread switches, a GIL hand-off, future plumbing) costs about 150 us of CPU,
#: many times what a small model costs. Measured with ``make bench``; see docs/benchmark.md. It is also the
#: most one inline execution may cost the loop: the worst of the recent window must stay below it.
INLINE_BELOW_NS = 200_000
#: Inputs larger than this always go to the thread: one pass over 1 MiB at memory speed (5-20 GB/s) takes
#: 50-200 us, up to all of ``INLINE_BELOW_NS``, so a model that reads a larger input, or this one more than
#: once, cannot stay in budget (1 MiB keeps the benchmark's zero-copy 1 MiB identity inline).
INLINE_MAX_INPUT_BYTES = 1 << 20
_BYTES_ELEMENTS = 1024  # a BYTES input with more elements than this counts as over the size bound
_WINDOW = 32  # recent executions whose worst cost decides
_JUDGED_AFTER = 8  # executions before an instance may run inline
_HOLD_FIRST = 64  # executions on the thread after an inline one over budget; doubled each time, up to:
_HOLD_MAX = 4096


class _Binding:
    """How config inputs become ``forward`` arguments and results become config outputs (computed once)."""

    def __init__(self, signature: Signature, arguments: Sequence[Argument]) -> None:
        self.signature = signature
        self.arguments = list(arguments)
        inputs = list(signature.inputs)
        names = [a.name for a in self.arguments]
        self.dict_argument = len(self.arguments) == 1 and self.arguments[0].kind is ArgKind.TENSOR_DICT
        if self.dict_argument:
            self.slots: dict[str, int] = {}
        elif all(name in names for name in inputs):
            self.slots = {name: names.index(name) for name in inputs}
        elif all(_INDEXED_NAME.match(name) for name in inputs):
            self.slots = {name: int(_INDEXED_NAME.match(name).group(1)) for name in inputs}  # type: ignore[union-attr]
        else:
            self.slots = {name: position for position, name in enumerate(inputs)}
        for name, slot in self.slots.items():
            if slot >= len(self.arguments):
                raise ModelLoadError(
                    f"model '{signature.model_name}': input '{name}' binds to argument {slot} of forward, "
                    f"which takes {len(self.arguments)}"
                )
        bound = set(self.slots.values())
        for position, argument in enumerate(self.arguments):
            if not self.dict_argument and position not in bound and not argument.optional:
                raise ModelLoadError(
                    f"model '{signature.model_name}': forward argument '{argument.name}' has no input in the config"
                )
        outputs = list(signature.outputs)
        if all(_INDEXED_NAME.match(name) for name in outputs):
            self.output_index = {name: int(_INDEXED_NAME.match(name).group(1)) for name in outputs}  # type: ignore[union-attr]
        else:
            self.output_index = {name: position for position, name in enumerate(outputs)}

    def call_arguments(self, inputs: Sequence[Tensor], batch_size: int, to_device: _Move) -> list[Any]:
        """``forward``'s positional arguments for one request; ``to_device`` places each tensor argument."""
        if self.dict_argument:
            return [{t.name: to_torch(t, self.signature.inputs[t.name], batch_size, to_device) for t in inputs}]
        values: list[Any] = [None] * len(self.arguments)
        for tensor in inputs:
            slot = self.slots[tensor.name]
            values[slot] = convert_argument(
                self.arguments[slot], tensor, self.signature.inputs[tensor.name], batch_size, to_device,
                self.signature.model_name,
            )
        return values

    def outputs(self, result: Any, wanted: Sequence[str], batch_size: int, to_host: _Move) -> list[Tensor]:
        """The ``wanted`` outputs of ``forward``'s result, as arrays shaped as the config says.

        ``to_host`` brings each tensor to the CPU; where it only starts the copy, the caller waits for it
        before the arrays are read.
        """
        model = self.signature.model_name
        if isinstance(result, dict):
            values = result
        elif isinstance(result, tuple) or (isinstance(result, list) and result and not isinstance(result[0], str)):
            values = {name: result[i] for name, i in self.output_index.items() if i < len(result)}
        else:
            values = {name: result for name, i in self.output_index.items() if i == 0}
        tensors = []
        for name in wanted:
            if name not in values:
                raise InferenceFailed(f"model '{model}' returned no value for output '{name}'")
            spec = self.signature.outputs[name]
            tensors.append(
                _from_result(values[name], spec, batch_size, self.signature.max_batch_size, model, to_host)
            )
        return tensors


def _from_result(
    value: Any, spec: TensorSpec, batch_size: int, max_batch_size: int, model: str, to_host: _Move
) -> Tensor:
    dt = spec.datatype
    prefix = (batch_size,) if max_batch_size > 0 else ()
    if (dt.name == "BYTES") != (isinstance(value, list) and all(isinstance(v, (str, bytes)) for v in value)):
        raise InferenceFailed(
            f"model '{model}' output '{spec.name}' is a {type(value).__name__}, but the config declares "
            f"{dt.config_type} (BYTES outputs come from List[str], other types from tensors or scalars)"
        )
    if isinstance(value, torch.Tensor):
        if value.dtype != dt.torch:
            raise InferenceFailed(
                f"model '{model}' output '{spec.name}' has dtype {value.dtype}, but the config declares {dt.config_type}"
            )
        value = to_host(value.detach())
        if dt.name == "BF16":
            value = value.view(torch.int16)
        array = value.numpy().view(dt.numpy) if dt.name == "BF16" else value.numpy()
        if spec.reshape is not None:
            array = array.reshape(prefix + spec.dims) if spec.dims.count(-1) <= 1 else array
        return Tensor(spec.name, dt, array)
    if dt.name == "BYTES":
        array = np.empty(len(value), dtype=object)
        array[:] = [v.encode("utf-8") if isinstance(v, str) else v for v in value]
    elif isinstance(value, (bool, int, float)):
        array = np.array([value], dtype=dt.numpy)
    else:
        raise InferenceFailed(f"model '{model}' output '{spec.name}' is a {type(value).__name__}, not a tensor")
    shape = prefix + spec.dims
    if shape.count(-1) <= 1:
        try:
            array = array.reshape(shape)
        except ValueError:
            raise InferenceFailed(
                f"model '{model}' output '{spec.name}' has {array.size} elements, which do not fit shape {list(shape)}"
            ) from None
    return Tensor(spec.name, dt, array)


class TorchScriptInstance:
    """One loaded copy of a model on one device, with its own worker thread (and CUDA stream)."""

    def __init__(
        self,
        module: torch.jit.ScriptModule,
        device: torch.device,
        signature: Signature,
        label: str,
        options: ExecutionOptions | None = None,
    ) -> None:
        self.device = device
        self._module = module
        self._forward = module.forward  # a ScriptMethod: calling it skips nn.Module.__call__'s Python layers
        self._binding = _Binding(signature, _forward_arguments(module))
        self._options = options or ExecutionOptions()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=label)
        # Outputs reach the wire as views of their memory (v2server.wire), after later requests may have run:
        # one that is the model's own state (a parameter or buffer it returns, and may change in place) is
        # copied instead.
        self._state = {
            t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())
        } - {0}
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._staging = PinnedStaging(device, self._stream) if self._stream is not None else None
        self.pending = 0
        self._costs: deque[int] = deque(maxlen=_WINDOW)  # ns per recent execution (see _record)
        self._sizes: deque[int] = deque(maxlen=_WINDOW)  # their input bytes
        self._worst_ns = 0
        self._largest = 0
        self._hold = 0  # executions still to run on the thread after an inline one over budget
        self._backoff = _HOLD_FIRST
        self._loop_warm = False  # the event loop's thread has run this model
        self._warm_scheduled = False
        self._closed = False

    @property
    def runs_inline(self) -> bool:
        """True while a small request would run on the event loop (a CPU instance, idle, judged short, warm)."""
        return self.pending == 0 and self._loop_warm and self._qualifies(0)

    def _qualifies(self, nbytes: int) -> bool:
        """The recent window says an execution on ``nbytes`` of input fits the loop's budget."""
        return (
            self._stream is None
            and self._hold == 0
            and len(self._costs) >= _JUDGED_AFTER
            and self._worst_ns < INLINE_BELOW_NS
            and nbytes <= min(INLINE_MAX_INPUT_BYTES, self._largest)
        )

    async def execute(self, inputs: Sequence[Tensor], outputs: Sequence[str], batch_size: int) -> list[Tensor]:
        """Run one request on this instance's thread (inline when it is short); the event loop never blocks."""
        return (await self.execute_timed(inputs, outputs, batch_size))[0]

    async def execute_timed(
        self, inputs: Sequence[Tensor], outputs: Sequence[str], batch_size: int
    ) -> tuple[list[Tensor], StageTimes]:
        """``execute``, also returning how long input preparation, the model and output copies took."""
        if self.pending == 0 and self._loop_warm and self._qualifies(0):  # never beside work on the thread
            nbytes = _input_bytes(inputs)
            if self._qualifies(nbytes):
                return self._run_inline(inputs, outputs, batch_size, nbytes)
        loop = asyncio.get_running_loop()
        work = self._executor.submit(self._run_measured, inputs, outputs, batch_size)
        self.pending += 1
        try:
            await asyncio.wrap_future(work, loop=loop)
        except asyncio.CancelledError:
            if work.done():
                self._finished(work)
            else:  # the thread still runs it: the instance stays busy until it returns
                work.add_done_callback(functools.partial(_call_on_loop, loop, self._finished))
            raise
        outcome, nbytes = self._finished(work)
        if isinstance(outcome, BaseException):
            raise outcome
        if not self._loop_warm and not self._warm_scheduled and self._qualifies(nbytes):
            self._warm_scheduled = True  # replay this request on the loop once, with nobody waiting for it
            loop.call_soon(self._warm_loop, inputs, outputs, batch_size)
        return outcome

    def warm_inline(self, inputs: Sequence[Tensor], outputs: Sequence[str], batch_size: int) -> bool:
        """Run one warm-up request on the calling thread (the event loop) if this instance may run inline.

        Called by ``run_warmup`` after the instance's thread ran the warm-up requests; it runs when this is a
        CPU instance, nothing runs on its thread, and one of its executions there was short (the first ones
        profile and compile). Its time is not judged: it pays the thread's one-time costs so that requests
        don't. Returns whether it ran; a failure raises as ``execute`` would.
        """
        if self._stream is not None or self.pending or not self._costs or min(self._costs) >= INLINE_BELOW_NS:
            return False
        if _input_bytes(inputs) > INLINE_MAX_INPUT_BYTES:
            return False
        self._run(inputs, outputs, batch_size)
        self._loop_warm = True
        return True

    def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=True)

    def _run_inline(
        self, inputs: Sequence[Tensor], outputs: Sequence[str], batch_size: int, nbytes: int
    ) -> tuple[list[Tensor], StageTimes]:
        start = time.thread_time_ns()  # the loop's CPU: time the OS gave other processes is not the model's
        try:
            return self._run(inputs, outputs, batch_size)
        finally:
            self._record(time.thread_time_ns() - start, nbytes, inline=True)

    def _run_measured(
        self, inputs: Sequence[Tensor], outputs: Sequence[str], batch_size: int
    ) -> tuple[tuple[list[Tensor], StageTimes] | Exception, int, int]:
        """On the worker thread: the result (or the error, to raise on the loop), its CPU time, input bytes."""
        start = time.thread_time_ns()
        try:
            outcome: tuple[list[Tensor], StageTimes] | Exception = self._run(inputs, outputs, batch_size)
        except Exception as exc:
            outcome = exc
        return outcome, time.thread_time_ns() - start, _input_bytes(inputs)

    def _finished(
        self, work: Future[tuple[tuple[list[Tensor], StageTimes] | Exception, int, int]]
    ) -> tuple[tuple[list[Tensor], StageTimes] | BaseException, int]:
        """On the loop, once the thread's work is done (or cancelled before it started): count and judge it."""
        self.pending -= 1
        if work.cancelled():
            return asyncio.CancelledError(), 0
        error = work.exception()
        if error is not None:  # not from the model (those come back as outcomes): nothing to judge
            return error, 0
        outcome, cost_ns, nbytes = work.result()
        self._record(cost_ns, nbytes, inline=False)
        return outcome, nbytes

    def _record(self, cost_ns: int, nbytes: int, inline: bool) -> None:
        """One execution's cost (ns) and input bytes into the window; an inline one over budget: back off."""
        self._costs.append(cost_ns)
        self._sizes.append(nbytes)
        self._worst_ns = max(self._costs)
        self._largest = max(self._sizes)
        if inline and cost_ns >= INLINE_BELOW_NS:
            self._hold = self._backoff
            self._backoff = min(2 * self._backoff, _HOLD_MAX)
            log.debug(
                "model '%s': an inline execution took %d us; back to its thread for %d executions",
                self._binding.signature.model_name, cost_ns // 1000, self._hold,
            )
        elif not inline and self._hold:
            self._hold -= 1

    def _warm_loop(self, inputs: Sequence[Tensor], outputs: Sequence[str], batch_size: int) -> None:
        """Scheduled on the loop: run a request that already ran on the thread once more, here, unjudged.

        It may run beside the next request on the thread (a model's ``forward`` may run on two threads at
        once; what it computes here is dropped): waiting for an idle moment could wait forever under load.
        """
        self._warm_scheduled = False
        if self._loop_warm or self._closed:
            return
        try:
            self._run(inputs, outputs, batch_size)
        except Exception as exc:  # it succeeded on the thread; whatever this is, stay on the thread a while
            log.debug("model '%s': warming the event loop failed: %s", self._binding.signature.model_name, exc)
            self._hold = self._backoff
            return
        self._loop_warm = True

    def _run(
        self, inputs: Sequence[Tensor], outputs: Sequence[str], batch_size: int
    ) -> tuple[list[Tensor], StageTimes]:
        try:
            return self._execute(inputs, outputs, batch_size)
        except Exception as exc:
            if self._stream is None or not is_cuda_oom(exc):
                raise
            message = (
                f"model '{self._binding.signature.model_name}' ran out of GPU memory on {self.device} "
                f"({f'batch of {batch_size}' if batch_size else 'unbatched request'}): {cuda_oom_summary(exc)}"
            )
            log.warning("%s", message)
        finally:
            if self._stream is not None and self._options.cache_cleaning:
                torch.cuda.empty_cache()
        # Past the except block the error, its traceback and the frames holding this request's tensors are
        # gone, so the allocator can hand their memory back and the next request starts clean.
        torch.cuda.empty_cache()
        raise InferenceFailed(message)

    def _execute(
        self, inputs: Sequence[Tensor], outputs: Sequence[str], batch_size: int
    ) -> tuple[list[Tensor], StageTimes]:
        with self._options.scope(), (_NO_STREAM if self._stream is None else torch.cuda.stream(self._stream)):
            start = time.perf_counter_ns()
            to_device = _keep if self._staging is None else self._staging.begin(
                t.array.nbytes for t in inputs if t.datatype.name != "BYTES"
            )
            arguments = self._binding.call_arguments(inputs, batch_size, to_device)
            inputs_ready = time.perf_counter_ns()
            try:
                result = self._forward(*arguments)
            except Exception as exc:  # the model's own failure: reported, never fatal to the server
                if self._stream is not None and is_cuda_oom(exc):
                    raise
                raise InferenceFailed(f"model '{self._binding.signature.model_name}' failed: {_short(exc)}") from exc
            if self._stream is not None:
                self._stream.synchronize()  # time the model, not the queue of kernels it launched
            inferred = time.perf_counter_ns()
            tensors = self._binding.outputs(result, outputs, batch_size, self._to_host)
            if self._stream is not None:
                self._stream.synchronize()  # the outputs' copies have landed
            done = time.perf_counter_ns()
            return tensors, StageTimes(inputs_ready - start, inferred - inputs_ready, done - inferred)

    def _to_host(self, value: torch.Tensor) -> torch.Tensor:
        """Start one copy of an output to the CPU: pinned and non-blocking from this instance's GPU."""
        if value.device.type == "cpu":
            if self._state and value.untyped_storage().data_ptr() in self._state:
                return value.clone()  # the model's own state: the answer must not change with it
            return value
        if value.device != self.device:  # a model that placed its result elsewhere: not on our stream
            return value.cpu()
        host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
        host.copy_(value, non_blocking=True)
        return host


_NO_STREAM = contextlib.nullcontext()


def _call_on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[Future[Any]], object], work: Future[Any]) -> None:
    """A done callback of ``work`` (on whichever thread finished it): run ``callback(work)`` on ``loop``."""
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody counts any more
        loop.call_soon_threadsafe(callback, work)


def _input_bytes(inputs: Sequence[Tensor]) -> int:
    """A request's input size: array bytes, plus the elements' bytes for BYTES (bounded work on the loop)."""
    total = 0
    for tensor in inputs:
        array = tensor.array
        total += array.nbytes
        if array.dtype == object:
            if array.size > _BYTES_ELEMENTS:
                return INLINE_MAX_INPUT_BYTES + 1 + total
            total += sum(len(value) for value in array.flat)
    return total


def _keep(value: torch.Tensor) -> torch.Tensor:
    return value


def load_instance(
    path: Path, device: str, signature: Signature, label: str, parameters: Mapping[str, str] | None = None
) -> TorchScriptInstance:
    """Load ``path`` onto ``device`` (blocking: call it from a worker thread).

    ``parameters`` are the config's string ``parameters``; those of Triton's PyTorch backend that can apply
    to one model are applied (see ``_execution``), a bad value of one of them is a ``ModelLoadError``.
    """
    options = ExecutionOptions.from_parameters(parameters or {}, signature.model_name)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    place = torch.device(device)
    if place.type == "cuda" and place.index is None:
        place = torch.device("cuda", torch.cuda.current_device())
    try:
        module = torch.jit.load(str(path), map_location=place)
    except Exception as exc:
        raise ModelLoadError(f"cannot load TorchScript file {path}: {_short(exc)}") from exc
    module.eval()
    return TorchScriptInstance(module, place, signature, label, options)


def _forward_arguments(module: torch.jit.ScriptModule) -> list[Argument]:
    schema = module.forward.schema
    arguments = [a for a in schema.arguments if a.name != "self"]
    return [
        Argument(a.name, arg_kind(str(a.type)), str(a.type), str(a.type).startswith("Optional[")) for a in arguments
    ]


def _short(exc: BaseException) -> str:
    """A TorchScript error's last meaningful line (its full text is a TorchScript traceback)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
