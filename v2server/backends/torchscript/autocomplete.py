"""Auto-complete (``--strict-model-config=false``): fill missing inputs and outputs from ``forward``'s types.

Triton's PyTorch backend cannot auto-complete at all, because a TorchScript schema records argument *types*
but not tensor datatypes or shapes. Scalars and string lists are the exception: their type fixes both, so we
complete those and refuse the rest with a message that says what the config must declare. Completed inputs
are named after ``forward``'s arguments and outputs ``OUTPUT__<index>``, the names the backend binds by; an
``Optional[...]`` argument becomes an ``optional`` input, since the backend passes None for an absent one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from v2server._proto import model_config_pb2 as mc
from v2server.errors import ModelLoadError

__all__ = ["autocomplete_config"]


@dataclass(frozen=True, slots=True)
class _Completion:
    data_type: mc.DataType
    dims: tuple[int, ...]


# What a type says on its own. ``str`` is an input only: the backend returns BYTES from ``List[str]`` alone.
_INPUT_TYPES = {
    "int": _Completion(mc.TYPE_INT64, (1,)),
    "float": _Completion(mc.TYPE_FP64, (1,)),
    "bool": _Completion(mc.TYPE_BOOL, (1,)),
    "str": _Completion(mc.TYPE_STRING, (1,)),
    "List[str]": _Completion(mc.TYPE_STRING, (-1,)),
}
_OUTPUT_TYPES = {name: row for name, row in _INPUT_TYPES.items() if name != "str"}
_NO_TENSOR_FACTS = "TorchScript records no datatype or shape for a Tensor"
_DECLARE_INPUTS = "declare the model's inputs in config.pbtxt"
_DECLARE_OUTPUTS = "declare the model's outputs in config.pbtxt"


def autocomplete_config(config: mc.ModelConfig, module: torch.jit.ScriptModule) -> list[str]:
    """Fill ``config.input`` (when it has none) and ``config.output`` (when it has none) from ``module``.

    A config that declares some inputs (or outputs) keeps exactly those: a partial list is the operator's
    choice, and guessing the rest could contradict it. ``max_batch_size`` is left as it is (0 when unset),
    because a scalar argument has no batch dimension.

    Returns:
        One note per completed tensor, for the load log.

    Raises:
        ModelLoadError: a type that does not determine a datatype and shape (a Tensor, a Dict, ...).
    """
    schema: torch.FunctionSchema = module.forward.schema  # type: ignore[attr-defined]  # a ScriptMethod
    notes: list[str] = []
    if not config.input:
        # a sequence model's control and state inputs are the server's to fill, never the request's
        batching = config.sequence_batching
        filled = {c.name for c in batching.control_input} | {s.input_name for s in batching.state}
        arguments = [a for a in schema.arguments if a.name != "self" and a.name not in filled]
        for argument in arguments:
            row, optional = _input_completion(argument)
            config.input.add(name=argument.name, data_type=row.data_type, dims=row.dims, optional=optional)
            origin = f"forward argument '{argument.name}: {argument.type}'"
            notes.append(_note("input", argument.name, row, origin))
    if not config.output:
        for name, row, origin in _output_completions(schema.returns):
            config.output.add(name=name, data_type=row.data_type, dims=row.dims)
            notes.append(_note("output", name, row, origin))
    return notes


def _input_completion(argument: torch.Argument) -> tuple[_Completion, bool]:
    """The completion of one argument, and whether the input is optional."""
    type_ = argument.type
    optional = isinstance(type_, torch.OptionalType)
    row = _INPUT_TYPES.get(str(type_.getElementType() if optional else type_))
    if row is not None:
        return row, optional
    where = f"cannot auto-complete inputs: forward argument '{argument.name}' is {type_}"
    if str(type_) == "Dict[str, Tensor]":
        raise ModelLoadError(f"{where}, whose keys TorchScript does not record; declare them as inputs")
    if "Tensor" in str(type_):
        raise ModelLoadError(f"{where}, and {_NO_TENSOR_FACTS}; {_DECLARE_INPUTS}")
    if isinstance(type_, torch.DictType):
        raise ModelLoadError(f"{where}, which V2 cannot describe: an input is one tensor, not a mapping")
    raise ModelLoadError(f"{where}; only int, float, bool, str, List[str] and Optional ones can be completed")


def _output_completions(returns: list[torch.Argument]) -> list[tuple[str, _Completion, str]]:
    """``(name, completion, origin)`` per output: one for a single result, one per element of a tuple."""
    result = returns[0].type  # TorchScript methods have exactly one return
    is_tuple = isinstance(result, torch.TupleType)
    types = result.elements() if isinstance(result, torch.TupleType) else [result]
    if not types:
        raise ModelLoadError(f"cannot auto-complete outputs: forward returns {result}; {_DECLARE_OUTPUTS}")
    completions = []
    for index, type_ in enumerate(types):
        origin = f"element {index} of forward's {result}" if is_tuple else f"forward's result {result}"
        row = _OUTPUT_TYPES.get(str(type_))
        if row is None:
            what = f"{origin} is {type_}" if is_tuple else f"forward returns {type_}"
            where = f"cannot auto-complete outputs: {what}"
            if "Tensor" in str(type_):
                raise ModelLoadError(f"{where}, and {_NO_TENSOR_FACTS}; {_DECLARE_OUTPUTS}")
            raise ModelLoadError(
                f"{where}; only int, float, bool and List[str] results, or a tuple of them, can be completed"
            )
        completions.append((f"OUTPUT__{index}", row, origin))
    return completions


def _note(kind: str, name: str, row: _Completion, origin: str) -> str:
    return f"{kind} '{name}': {mc.DataType.Name(row.data_type)} dims {list(row.dims)} (from {origin})"
