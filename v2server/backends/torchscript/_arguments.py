"""Request tensors -> TorchScript ``forward`` arguments, by the argument's declared type.

A ``Tensor`` argument takes the tensor (no copy on the CPU); ``List[str]`` and ``str`` take BYTES as UTF-8;
``int``, ``float`` and ``bool`` take a one-element tensor; ``Dict[str, int|float|str|bool]`` takes one BYTES
element holding a JSON object, checked against the value type before the call (TorchScript would only fail
inside the model, with an error that names neither the input nor the argument).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson
import torch

from v2server.errors import InvalidRequest
from v2server.signature import TensorSpec
from v2server.tensors import Tensor

Move = Callable[[torch.Tensor], torch.Tensor]


class ArgKind(Enum):
    TENSOR = "Tensor"
    STRINGS = "List[str]"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    STR = "str"
    TENSOR_DICT = "Dict[str, Tensor]"
    JSON_DICT = "Dict[str, scalar]"
    OTHER = "other"


_SCALAR_KINDS = {"int": ArgKind.INT, "float": ArgKind.FLOAT, "bool": ArgKind.BOOL, "str": ArgKind.STR}
_JSON_DICTS = {f"Dict[str, {name}]": name for name in _SCALAR_KINDS}


def _strip_optional(text: str) -> str:
    return text[len("Optional[") : -1] if text.startswith("Optional[") and text.endswith("]") else text


def arg_kind(type_text: str) -> ArgKind:
    """The kind of a ``forward`` argument from its schema type's text."""
    text = _strip_optional(type_text)
    if text in _JSON_DICTS:
        return ArgKind.JSON_DICT
    return {
        "Tensor": ArgKind.TENSOR,
        "List[str]": ArgKind.STRINGS,
        **_SCALAR_KINDS,
        "Dict[str, Tensor]": ArgKind.TENSOR_DICT,
    }.get(text, ArgKind.OTHER)


@dataclass(frozen=True, slots=True)
class Argument:
    name: str
    kind: ArgKind
    type_text: str
    optional: bool


def convert_argument(
    argument: Argument, tensor: Tensor, spec: TensorSpec, batch_size: int, to_device: Move, model: str
) -> Any:
    """The value ``forward`` receives for ``argument`` from the request input ``tensor``."""
    kind = argument.kind
    if kind is ArgKind.TENSOR:
        return to_torch(tensor, spec, batch_size, to_device)
    is_bytes = tensor.datatype.name == "BYTES"
    if kind is ArgKind.JSON_DICT:
        return _json_dict(argument, tensor)
    if kind in (ArgKind.STRINGS, ArgKind.STR):
        if not is_bytes:
            raise InvalidRequest(
                f"input '{tensor.name}': forward argument '{argument.name}' is {kind.value}, "
                f"which takes BYTES, not {tensor.datatype.name}"
            )
        try:
            strings = [item.decode("utf-8") for item in tensor.array.reshape(-1)]
        except UnicodeDecodeError:
            raise InvalidRequest(
                f"input '{tensor.name}': an element is not valid UTF-8, which TorchScript {kind.value} needs"
            ) from None
        return strings if kind is ArgKind.STRINGS else _single(strings, argument, tensor)
    if kind in (ArgKind.INT, ArgKind.FLOAT, ArgKind.BOOL):
        if is_bytes:
            raise InvalidRequest(
                f"input '{tensor.name}': forward argument '{argument.name}' is a scalar {kind.value}, "
                "which a BYTES tensor cannot carry"
            )
        value = _single(tensor.array.reshape(-1), argument, tensor)
        return {ArgKind.INT: int, ArgKind.FLOAT: float, ArgKind.BOOL: bool}[kind](value)
    raise InvalidRequest(
        f"model '{model}': forward argument '{argument.name}' is {argument.type_text}, which no V2 tensor can carry"
    )


def _json_dict(argument: Argument, tensor: Tensor) -> dict[str, Any]:
    """A ``Dict[str, <scalar>]`` argument from one BYTES element holding a JSON object."""
    where = f"input '{tensor.name}': forward argument '{argument.name}' is {argument.type_text}"
    if tensor.datatype.name != "BYTES":
        raise InvalidRequest(f"{where}, which takes one BYTES element holding a JSON object, not {tensor.datatype.name}")
    element = _single(tensor.array.reshape(-1), argument, tensor)
    try:
        value = orjson.loads(element)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"{where}, but the element is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where}, but the element holds a JSON {type(value).__name__}, not an object")
    value_type = _JSON_DICTS[_strip_optional(argument.type_text)]
    for key, item in value.items():
        ok = {
            "int": type(item) is int and -(2**63) <= item < 2**63,
            "float": type(item) in (int, float),
            "bool": type(item) is bool,
            "str": type(item) is str,
        }[value_type]
        if not ok:
            raise InvalidRequest(f"{where}: the value of key '{key}' is {orjson.dumps(item).decode()}, not {value_type}")
    return {key: float(item) for key, item in value.items()} if value_type == "float" else value


def _single(values: Sequence[Any], argument: Argument, tensor: Tensor) -> Any:
    """The one element a scalar (or JSON dict) argument takes."""
    if len(values) != 1:
        what = "a JSON dict" if argument.kind is ArgKind.JSON_DICT else f"a scalar {argument.kind.value}"
        raise InvalidRequest(
            f"input '{tensor.name}': forward argument '{argument.name}' is {what}, "
            f"so the tensor must hold exactly one element, not {len(values)}"
        )
    return values[0]


def to_torch(tensor: Tensor, spec: TensorSpec, batch_size: int, to_device: Move) -> torch.Tensor:
    array = tensor.array
    if spec.reshape is not None:
        array = array.reshape(((batch_size,) if batch_size else ()) + spec.reshape)
    if tensor.datatype.name == "BYTES":
        raise InvalidRequest(f"input '{tensor.name}': BYTES cannot become a Tensor argument; use List[str]")
    value = torch.from_numpy(array)
    if tensor.datatype.name == "BF16":
        value = value.view(torch.bfloat16)
    return to_device(value)
