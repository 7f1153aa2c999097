"""JSON values <-> protobuf parameters and messages: everything of the REST gateway that is not a tensor.

Inference parameters choose their protobuf ``oneof`` field from the JSON type; repository parameters carry
model files as base64; any other message renders the way Triton renders its messages. Tensors and the
inference request layout are :mod:`~v2server.rest_api.json_codec`'s (which re-exports these functions).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, MutableMapping
from typing import Any

import numpy as np
import orjson
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from v2server._proto import grpc_service_pb2 as pb
from v2server.errors import InvalidRequest

__all__ = [
    "json_body",
    "json_object",
    "json_to_parameters",
    "message_to_json",
    "parameters_to_json",
    "parse_repository_request",
]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UINT64_MAX = 2**64 - 1


def json_object(value: Any, where: str) -> Mapping[str, Any]:
    """An optional JSON object member (``parameters``): absent is empty, anything but an object is an error."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where} must be a JSON object")
    return value


def parameters_to_json(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """Protobuf parameters as plain JSON values (unset parameters are left out)."""
    result: dict[str, Any] = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        if which is not None:
            result[key] = getattr(param, which)
    return result


def json_to_parameters(
    values: Mapping[str, Any], target: MutableMapping[str, pb.InferParameter], where: str
) -> None:
    """JSON parameter values into a protobuf parameter map, choosing the oneof field from the JSON type.

    bool -> ``bool_param``, int -> ``int64_param`` (``uint64_param`` above int64), float -> ``double_param``,
    str -> ``string_param``; the V2 protocol allows nothing else. ``target`` is a protobuf message map
    (indexing creates the entry).
    """
    for key, value in values.items():
        if isinstance(value, bool):
            param = pb.InferParameter(bool_param=value)
        elif isinstance(value, int):
            if not _INT64_MIN <= value <= _UINT64_MAX:
                raise InvalidRequest(f"{where}: parameter '{key}' is out of the 64-bit integer range")
            param = (
                pb.InferParameter(uint64_param=value)
                if value > _INT64_MAX
                else pb.InferParameter(int64_param=value)
            )
        elif isinstance(value, float):
            param = pb.InferParameter(double_param=value)
        elif isinstance(value, str):
            param = pb.InferParameter(string_param=value)
        else:
            kind = {list: "an array", dict: "an object", type(None): "null"}.get(
                type(value), type(value).__name__
            )
            raise InvalidRequest(
                f"{where}: parameter '{key}' must be a string, number or boolean, not {kind}"
            )
        target[key].CopyFrom(param)


def json_body(body: bytes, where: str) -> dict[str, Any]:
    """A control body (repository, settings): a JSON object, or nothing at all (``{}``)."""
    if not body.strip():
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"{where}: request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidRequest(f"{where}: request JSON must be an object")
    return document


def parse_repository_request(body: bytes, where: str) -> dict[str, pb.ModelRepositoryParameter]:
    """The ``parameters`` of a repository load/unload body (which may be empty) as protobuf parameters.

    ``file:<version>/<name>`` values are base64 in JSON and become raw ``bytes_param``, as tritonclient's gRPC
    client sends them; ``config`` stays a JSON string.
    """
    document = json_body(body, where)
    if not document:
        return {}
    parameters: dict[str, pb.ModelRepositoryParameter] = {}
    for key, value in json_object(document.get("parameters"), f"{where}: parameters").items():
        if key.startswith("file:"):
            if not isinstance(value, str):
                raise InvalidRequest(f"{where}: parameter '{key}' must be base64 text")
            try:
                parameters[key] = pb.ModelRepositoryParameter(bytes_param=base64.b64decode(value, validate=True))
            except ValueError:
                raise InvalidRequest(f"{where}: parameter '{key}' is not valid base64") from None
        elif isinstance(value, bool):
            parameters[key] = pb.ModelRepositoryParameter(bool_param=value)
        elif isinstance(value, int):
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise InvalidRequest(f"{where}: parameter '{key}' is out of the 64-bit signed integer range")
            parameters[key] = pb.ModelRepositoryParameter(int64_param=value)
        elif isinstance(value, str):
            parameters[key] = pb.ModelRepositoryParameter(string_param=value)
        else:
            raise InvalidRequest(f"{where}: parameter '{key}' must be a string, integer or boolean")
    return parameters


def message_to_json(message: Message, with_defaults: bool = False) -> dict[str, Any]:
    """A protobuf message as JSON-ready values, the way Triton renders its messages.

    Like ``MessageToDict(preserving_proto_field_name=True)`` (fields at their default left out, oneofs as
    set, enums by name, maps as objects) but with 64-bit integers as numbers, not strings: Triton returns
    ``"dims":[16]`` and ``"max_batch_size":16``, and clients index those numbers. ``with_defaults`` also
    renders fields at their default (Triton's statistics show ``{"count":0,"ns":0}``, not nothing).
    """
    if not with_defaults:
        fields = message.ListFields()
    else:
        fields = [
            (d, getattr(message, d.name))
            for d in message.DESCRIPTOR.fields
            if d.containing_oneof is None or message.WhichOneof(d.containing_oneof.name) == d.name
        ]
    return {d.name: _field_to_json(d, value, with_defaults) for d, value in fields}


def _field_to_json(descriptor: FieldDescriptor, value: Any, with_defaults: bool) -> Any:
    entry = descriptor.message_type
    if entry is not None and entry.GetOptions().map_entry:
        value_field = entry.fields_by_name["value"]
        return {_map_key(key): _value_to_json(value_field, item, with_defaults) for key, item in value.items()}
    if descriptor.is_repeated:
        return [_value_to_json(descriptor, item, with_defaults) for item in value]
    return _value_to_json(descriptor, value, with_defaults)


def _value_to_json(descriptor: FieldDescriptor, value: Any, with_defaults: bool) -> Any:
    kind = descriptor.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return message_to_json(value, with_defaults)
    if kind == FieldDescriptor.TYPE_ENUM:
        enum_value = descriptor.enum_type.values_by_number.get(value)
        return enum_value.name if enum_value is not None else value
    if kind == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    if kind == FieldDescriptor.TYPE_FLOAT:  # the shortest text that reads back as the same float32
        return float(str(np.float32(value)))
    return value


def _map_key(key: Any) -> str:
    return ("true" if key else "false") if isinstance(key, bool) else str(key)
