"""Where a TorchScript instance runs a request: its thread, or the event loop (inline), and what it counts.

The inline rule is judged by the worst cost of a recent window and the request's input size; these tests feed
the window with chosen costs (``_record``) or set the budget so that every real execution counts as short
(or none does), so nothing depends on how fast this machine is. Where a request ran is seen by the thread its
``forward`` was called on.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from v2server._proto import model_config_pb2 as mc
from v2server.backends.torchscript import TorchScriptInstance, load_instance
from v2server.backends.torchscript import instance as instance_module
from v2server.datatypes import DATATYPES
from v2server.errors import InferenceFailed
from v2server.repository.config import complete_config
from v2server.signature import Signature
from v2server.tensors import Tensor, from_raw
from v2server.warmup import run_warmup, warmup_requests

Load = Callable[..., TorchScriptInstance]
CONFIG = (
    'input [{ name: "x" data_type: TYPE_FP32 dims: [ -1 ] }] output [{ name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] }]'
)
BUDGET = instance_module.INLINE_BELOW_NS
WINDOW = instance_module._WINDOW
HOLD = instance_module._HOLD_FIRST


class AddOne(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


@pytest.fixture
def load(tmp_path: Path) -> Iterator[Load]:
    instances: list[TorchScriptInstance] = []

    def load_(config: str = CONFIG) -> TorchScriptInstance:
        path = tmp_path / f"model_{len(instances)}.pt"
        torch.jit.script(AddOne()).save(str(path))
        signature = Signature.from_config(complete_config(text_format.Parse(config, mc.ModelConfig()), "m", "<t>"))
        instance = load_instance(path, "cpu", signature, "inline-test")
        instances.append(instance)
        return instance

    yield load_
    for instance in instances:
        instance.close()


@pytest.fixture
def all_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(instance_module, "INLINE_BELOW_NS", 10**12)


def _x(n: int = 2) -> list[Tensor]:
    return [from_raw("x", "FP32", [n], np.arange(n, dtype=np.float32).tobytes())]


class Threads:
    """Wraps an instance's ``forward``: notes the thread of each call; ``gate`` (when set) holds calls on the
    instance's own thread until it is opened."""

    def __init__(self, instance: TorchScriptInstance) -> None:
        self.calls: list[str] = []
        self.started = threading.Event()
        self.gate: threading.Event | None = None
        self.loop_thread = threading.current_thread().name
        forward = instance._forward

        def recorded(*args: Any) -> Any:
            here = threading.current_thread().name
            self.calls.append("loop" if here == self.loop_thread else "thread")
            if self.gate is not None and here != self.loop_thread:
                self.started.set()
                self.gate.wait()
            return forward(*args)

        instance._forward = recorded  # type: ignore[method-assign]


def _judged_short(instance: TorchScriptInstance, nbytes: int = 8, count: int = WINDOW) -> None:
    for _ in range(count):
        instance._record(1_000, nbytes, inline=False)


# -- the rule ------------------------------------------------------------------------------------------------


async def test_short_executions_run_inline_once_the_loop_is_warm(load: Load, all_short: None) -> None:
    """Judged on the thread, then one replay warms the loop with nobody waiting, then requests run inline."""
    instance = load()
    threads = Threads(instance)
    answers, inline = [], []
    for _ in range(12):
        inline.append(instance.runs_inline)
        [out] = await instance.execute(_x(), ["OUT"], 0)
        answers.append(out.array.tolist())
    judged = instance_module._JUDGED_AFTER
    # the request that completes the judging still runs on the thread; the replay warms the loop beside it
    assert inline == [False] * (judged + 1) + [True] * (12 - judged - 1)
    assert sorted(threads.calls[: judged + 2]) == ["loop"] + ["thread"] * (judged + 1)
    assert threads.calls[judged + 2 :] == ["loop"] * (12 - judged - 1)
    assert answers == [[1.0, 2.0]] * 12


async def test_no_inline_before_the_loop_ran_the_model(load: Load, all_short: None) -> None:
    instance = load()
    _judged_short(instance)
    assert instance._qualifies(8) and not instance.runs_inline  # judged short, but the loop is cold
    threads = Threads(instance)
    await instance.execute(_x(), ["OUT"], 0)
    assert threads.calls[0] == "thread"


async def test_the_worst_execution_decides_not_the_average(load: Load) -> None:
    instance = load()
    instance._loop_warm = True
    _judged_short(instance, count=WINDOW - 1)
    assert instance.runs_inline
    instance._record(BUDGET, 8, inline=False)  # one at the budget among 31 of 1 us: the average is far below
    assert not instance.runs_inline
    _judged_short(instance, count=WINDOW - 1)
    assert not instance.runs_inline  # still in the window
    _judged_short(instance, count=1)
    assert instance.runs_inline  # aged out


async def test_an_inline_execution_over_budget_sends_the_instance_back_for_longer_each_time(load: Load) -> None:
    instance = load()
    instance._loop_warm = True
    _judged_short(instance)
    for hold in (HOLD, 2 * HOLD, 4 * HOLD):
        assert instance.runs_inline
        instance._record(BUDGET + 1, 8, inline=True)
        _judged_short(instance, count=hold - 1)
        assert not instance.runs_inline
        _judged_short(instance, count=1)
    assert instance.runs_inline


async def test_a_slow_inline_request_goes_back_to_the_thread(
    load: Load, all_short: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Judged short, then a real inline execution over the budget: the model lowers the budget while it runs."""
    instance = load()
    instance._loop_warm = True
    _judged_short(instance)
    threads = Threads(instance)
    forward = instance._forward

    def slow(*args: Any) -> Any:
        monkeypatch.setattr(instance_module, "INLINE_BELOW_NS", 0)  # whatever this one takes is over budget
        return forward(*args)

    instance._forward = slow  # type: ignore[method-assign]
    await instance.execute(_x(), ["OUT"], 0)
    await instance.execute(_x(), ["OUT"], 0)
    assert threads.calls == ["loop", "thread"]
    assert instance._hold == HOLD - 1


async def test_a_larger_input_than_the_window_has_seen_goes_to_the_thread_first(load: Load, all_short: None) -> None:
    instance = load()
    instance._loop_warm = True
    _judged_short(instance, nbytes=8)  # 2 floats
    threads = Threads(instance)
    for n in (2, 64, 64, 2):
        await instance.execute(_x(n), ["OUT"], 0)
    assert threads.calls == ["loop", "thread", "loop", "loop"]  # 64 floats: once on the thread, then judged


async def test_inputs_over_the_size_bound_always_go_to_the_thread(
    load: Load, all_short: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(instance_module, "INLINE_MAX_INPUT_BYTES", 64)
    instance = load()
    instance._loop_warm = True
    _judged_short(instance, nbytes=10**6)
    threads = Threads(instance)
    for n in (16, 17, 17, 16):  # 64 bytes, 68 bytes
        await instance.execute(_x(n), ["OUT"], 0)
    assert threads.calls == ["loop", "thread", "thread", "loop"]


def test_input_bytes_count_bytes_elements_and_bound_the_work() -> None:
    small = np.empty(3, dtype=object)
    small[:] = [b"ab", b"", b"cdef"]
    many = np.empty(instance_module._BYTES_ELEMENTS + 1, dtype=object)
    many[:] = [b""] * many.size
    size = instance_module._input_bytes
    fp32, bytes_ = _x(4)[0], DATATYPES["BYTES"]
    assert size([fp32]) == 16
    assert size([fp32, Tensor("s", bytes_, small)]) == 16 + small.nbytes + 6
    assert size([Tensor("s", bytes_, many)]) > instance_module.INLINE_MAX_INPUT_BYTES


# -- pending ---------------------------------------------------------------------------------------------------


async def test_a_cancelled_request_keeps_the_instance_busy_until_its_thread_is_done(load: Load) -> None:
    instance = load()
    threads = Threads(instance)
    threads.gate = threading.Event()
    running = asyncio.create_task(instance.execute(_x(), ["OUT"], 0))
    queued = asyncio.create_task(instance.execute(_x(), ["OUT"], 0))
    await asyncio.to_thread(threads.started.wait)  # the first holds the thread; the second waits behind it
    assert instance.pending == 2
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert instance.pending == 1  # never started: released at once
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert instance.pending == 1 and not instance.runs_inline  # its work still runs on the thread
    threads.gate.set()
    for _ in range(1000):  # bounded: the done callback comes back through the loop
        if instance.pending == 0:
            break
        await asyncio.sleep(0.01)
    assert instance.pending == 0
    assert threads.calls == ["thread"]  # the queued one never ran
    assert len(instance._costs) == 1  # and the one that ran was judged


async def test_pending_returns_to_zero_after_success_and_failure(load: Load) -> None:
    instance = load()
    await instance.execute(_x(), ["OUT"], 0)
    assert instance.pending == 0

    def fails(*args: Any) -> Any:
        raise RuntimeError("no")

    instance._forward = fails  # type: ignore[method-assign]
    with pytest.raises(InferenceFailed, match="model 'm' failed: no"):
        await instance.execute(_x(), ["OUT"], 0)
    assert instance.pending == 0 and len(instance._costs) == 2  # a failure is judged too


# -- warming the loop at load ----------------------------------------------------------------------------------


def _warmup_config() -> mc.ModelConfig:
    text = CONFIG + ' model_warmup { name: "w" count: 2 inputs { key: "x" value { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } }'
    return complete_config(text_format.Parse(text, mc.ModelConfig()), "m", "<t>")


async def test_warmup_also_runs_once_on_the_loop_when_the_instance_may_run_inline(
    load: Load, tmp_path: Path, all_short: None
) -> None:
    instance = load()
    threads = Threads(instance)
    await run_warmup([instance], warmup_requests(_warmup_config(), tmp_path), ["OUT"])
    assert threads.calls == ["thread", "thread", "loop"] and instance._loop_warm


async def test_warmup_stays_off_the_loop_when_the_model_is_not_short(
    load: Load, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(instance_module, "INLINE_BELOW_NS", 0)
    instance = load()
    threads = Threads(instance)
    await run_warmup([instance], warmup_requests(_warmup_config(), tmp_path), ["OUT"])
    assert threads.calls == ["thread", "thread"] and not instance._loop_warm


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
async def test_gpu_instances_never_run_inline(tmp_path: Path, all_short: None) -> None:
    path = tmp_path / "model.pt"
    torch.jit.script(AddOne()).save(str(path))
    signature = Signature.from_config(complete_config(text_format.Parse(CONFIG, mc.ModelConfig()), "m", "<t>"))
    instance = load_instance(path, "cuda:0", signature, "inline-test")
    try:
        for _ in range(WINDOW):
            await instance.execute(_x(), ["OUT"], 0)
        await asyncio.sleep(0)
        assert not instance.runs_inline and not instance._loop_warm
        assert instance.warm_inline(_x(), ["OUT"], 0) is False
    finally:
        instance.close()
