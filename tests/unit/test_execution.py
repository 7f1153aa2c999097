"""Config ``parameters`` of Triton's PyTorch backend: which apply per model, which are refused, which ignored.

What a request runs under is observed from inside ``forward``: a custom operator, which TorchScript calls
through the dispatcher, reports the grad mode, inference mode, cuDNN switch and executor optimisation of the
thread the model runs on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import torch
from google.protobuf import text_format

from v2server._proto import model_config_pb2 as mc
from v2server.backends.torchscript import TorchScriptInstance, load_instance
from v2server.backends.torchscript._execution import ExecutionOptions, cuda_oom_summary, is_cuda_oom
from v2server.errors import ModelLoadError
from v2server.repository.config import complete_config
from v2server.signature import Signature
from v2server.tensors import Tensor, from_raw

_STATE = ("grad", "inference_mode", "cudnn", "optimized_execution")


@torch.library.custom_op("v2server_test::execution_state", mutates_args=())
def _execution_state(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(
        [
            torch.is_grad_enabled(),
            torch.is_inference_mode_enabled(),
            torch.backends.cudnn.enabled,
            torch._C._get_graph_executor_optimize(),
        ]
    )


class ReportState(torch.nn.Module):
    """Returns the state it ran under, and whether a tensor it computed is an inference tensor."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        return torch.ops.v2server_test.execution_state(x), (x + 1).is_inference()


_CONFIG = """
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "STATE" data_type: TYPE_BOOL dims: [ 4 ] }, { name: "INFERENCE" data_type: TYPE_BOOL dims: [ 1 ] } ]
"""

Load = Callable[..., TorchScriptInstance]


@pytest.fixture
def load(tmp_path: Path) -> Iterator[Load]:
    instances: list[TorchScriptInstance] = []

    def load_(parameters: Mapping[str, str] | None = None) -> TorchScriptInstance:
        path = tmp_path / f"model_{len(instances)}.pt"
        torch.jit.script(ReportState()).save(str(path))
        config = complete_config(text_format.Parse(_CONFIG, mc.ModelConfig()), "m", "<test>")
        instance = load_instance(path, "cpu", Signature.from_config(config), "test", parameters=parameters)
        instances.append(instance)
        return instance

    yield load_
    for instance in instances:
        instance.close()


def _x() -> Tensor:
    return from_raw("x", "FP32", [1], torch.ones(1).numpy().tobytes())


async def _state(instance: TorchScriptInstance) -> dict[str, bool]:
    state, inference = await instance.execute([_x()], ["STATE", "INFERENCE"], 0)
    return {**dict(zip(_STATE, state.array.tolist(), strict=True)), "inference_tensor": bool(inference.array[0])}


DEFAULT = {"grad": False, "inference_mode": True, "cudnn": True, "optimized_execution": True, "inference_tensor": True}


@pytest.mark.parametrize(
    ("parameters", "changed"),
    [
        ({}, {}),
        ({"INFERENCE_MODE": "true"}, {}),
        ({"INFERENCE_MODE": "false"}, {"inference_mode": False, "inference_tensor": False}),
        ({"DISABLE_OPTIMIZED_EXECUTION": "true"}, {"optimized_execution": False}),
        ({"DISABLE_OPTIMIZED_EXECUTION": "false"}, {}),
        ({"DISABLE_CUDNN": "true"}, {"cudnn": False}),
        ({"INFERENCE_MODE": "Off", "DISABLE_CUDNN": " ON ", "DISABLE_OPTIMIZED_EXECUTION": "1"},
         {"inference_mode": False, "inference_tensor": False, "cudnn": False, "optimized_execution": False}),
    ],
    ids=["defaults", "inference-mode", "no-grad", "unoptimized", "optimized", "no-cudnn", "spellings"],
)
async def test_parameters_the_model_runs_under(
    load: Load, parameters: dict[str, str], changed: dict[str, bool]
) -> None:
    assert await _state(load(parameters)) == {**DEFAULT, **changed}
    # what was switched for the request is back as it was, here and on the instance's next request
    assert torch.backends.cudnn.enabled and torch._C._get_graph_executor_optimize()


async def test_one_models_parameters_do_not_reach_another(load: Load) -> None:
    plain, unoptimized = load(), load({"DISABLE_OPTIMIZED_EXECUTION": "true", "INFERENCE_MODE": "false"})
    assert (await _state(unoptimized))["optimized_execution"] is False
    assert await _state(plain) == DEFAULT


def test_cudnn_stays_off_until_the_last_overlapping_request_ends() -> None:
    """cuDNN's switch is process-wide: overlapping requests must not turn it back on under each other."""
    first, second = ExecutionOptions(cudnn=False).scope(), ExecutionOptions(cudnn=False).scope()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert torch.backends.cudnn.enabled is False
    second.__exit__(None, None, None)
    assert torch.backends.cudnn.enabled is True


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("INFERENCE_MODE", "maybe", "true or false"),
        ("DISABLE_CUDNN", "", "true or false"),
        ("ENABLE_CACHE_CLEANING", "yes", "true or false"),
        ("ENABLE_JIT_PROFILING", "2", "true or false"),
        ("INTRA_OP_THREAD_COUNT", "four", "a whole number >= 0"),
        ("INTER_OP_THREAD_COUNT", "-1", "a whole number >= 0"),
    ],
)
def test_bad_values_fail_the_load_naming_the_parameter(load: Load, key: str, value: str, expected: str) -> None:
    with pytest.raises(ModelLoadError) as caught:
        load({key: value})
    assert caught.value.message == f"model 'm': parameter {key} is '{value}', expected {expected}"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ENABLE_JIT_PROFILING", "false"),
        ("ENABLE_JIT_EXECUTOR", "false"),
        ("ENABLE_TENSOR_FUSER", "true"),
        ("INTRA_OP_THREAD_COUNT", "1"),
        ("INTER_OP_THREAD_COUNT", "1"),
    ],
)
async def test_process_wide_parameters_are_logged_and_not_applied(
    load: Load, caplog: pytest.LogCaptureFixture, key: str, value: str
) -> None:
    threads, interop = torch.get_num_threads(), torch.get_num_interop_threads()
    with caplog.at_level(logging.WARNING, logger="v2server.backends.torchscript._execution"):
        instance = load({key: value})
    assert [r.getMessage() for r in caplog.records if key in r.getMessage() and "process-wide" in r.getMessage()]
    assert await _state(instance) == DEFAULT
    assert (torch.get_num_threads(), torch.get_num_interop_threads()) == (threads, interop)


async def test_unknown_parameters_are_ignored(load: Load, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="v2server.backends.torchscript._execution"):
        instance = load({"MY_TOKENIZER": "bert", "ENABLE_CACHE_CLEANING": "true"})  # cache cleaning: GPU only
    assert "model 'm': parameter MY_TOKENIZER is not one the TorchScript backend reads; ignored" in caplog.messages
    assert await _state(instance) == DEFAULT


_TORCH_OOM = (
    "CUDA out of memory. Tried to allocate 4096.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 78.51 GiB "
    "is free. Including non-PyTorch memory, this process has 694.00 MiB memory in use. Of the allocated memory "
    "..."
)


def test_cuda_oom_is_recognised_and_summarised() -> None:
    scripted = RuntimeError(f"The following operation failed in the TorchScript interpreter.\n...\n{_TORCH_OOM}")
    assert is_cuda_oom(torch.OutOfMemoryError(_TORCH_OOM)) and is_cuda_oom(scripted)
    assert not is_cuda_oom(RuntimeError("shape mismatch"))
    assert cuda_oom_summary(scripted) == "CUDA out of memory: tried to allocate 4096.00 GiB with 78.51 GiB free of 79.19 GiB"
    assert cuda_oom_summary(torch.OutOfMemoryError("CUDA error: out of memory")) == "CUDA out of memory"
