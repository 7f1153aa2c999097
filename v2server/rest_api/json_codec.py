"""REST bodies <-> the core's protobuf messages: the only JSON<->protobuf code of the project.

A REST inference request becomes the same ``ModelInferRequest`` a gRPC client would send, so every rule lives
once, in the core. Every input goes to ``raw_input_contents`` (protobuf forbids mixing typed and raw contents,
and raw is what the core reads fastest): binary-extension inputs as slices of the body, JSON inputs converted
by numpy through their content-type codec. What the JSON response needs beyond the protobuf (which outputs
are binary, their content types) travels beside it as :class:`OutputOptions`.

Only REST concerns are consumed here: ``binary_data_output``, ``binary_data`` and ``binary_data_size``.
Everything else in ``parameters`` (``content_type`` included) is forwarded to the core.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from v2server._proto import grpc_service_pb2 as pb
from v2server.datatypes import DATATYPES, datatype
from v2server.errors import InvalidRequest, V2Error
from v2server.rest_api.content_types import Codec, check_columns, get_codec
from v2server.tensors import deserialize_bytes, serialize_bytes

__all__ = [
    "HEADER_LENGTH",
    "OutputOptions",
    "json_to_parameters",
    "message_to_json",
    "parameters_to_json",
    "parse_infer_request",
    "parse_raw_binary_request",
    "parse_repository_request",
    "render_infer_response",
]

HEADER_LENGTH = "Inference-Header-Content-Length"

_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1
_SHM = "shared_memory_region"
_DEFAULT_CODEC = get_codec("np", "the server")


@dataclass(frozen=True, slots=True)
class OutputOptions:
    """What the JSON response needs beyond the protobuf response, taken from the request.

    Attributes:
        binary: per requested output, whether it returns as a binary blob (already resolved: its own
            ``binary_data``, else the request-level default).
        content_types: per requested output, its ``content_type`` when it asked for one.
        binary_default: the request-level ``binary_data_output``; applies to outputs not listed.
        content_type: the request-level ``content_type``; the default codec of outputs it can encode.
        explicit_outputs: whether the request listed its outputs.
    """

    binary: Mapping[str, bool] = field(default_factory=dict)
    content_types: Mapping[str, str] = field(default_factory=dict)
    binary_default: bool = False
    content_type: str | None = None
    explicit_outputs: bool = False

    def is_binary(self, name: str) -> bool:
        """Triton's rule: the output's own ``binary_data``, else ``binary_data_output``, else JSON."""
        return self.binary.get(name, self.binary_default)


# --- request -----------------------------------------------------------------------------------------------


def parse_infer_request(
    model_name: str, model_version: str, body: bytes, header_length: int | None
) -> tuple[pb.ModelInferRequest, OutputOptions]:
    """A V2 JSON inference request (with Triton's binary extension) as the core's protobuf request.

    Args:
        model_name: from the URL.
        model_version: from the URL ("" when absent).
        body: the decoded body: JSON, then the binary inputs' bytes in input order.
        header_length: ``Inference-Header-Content-Length``, the JSON's length; None when the whole body is
            JSON. 0 (a raw binary request) needs the model's metadata: see :func:`parse_raw_binary_request`.

    Raises:
        InvalidRequest: naming what is wrong (and the input) for any malformed request.
    """
    json_end = len(body) if header_length is None else header_length
    if not 0 <= json_end <= len(body):
        raise InvalidRequest(
            f"{HEADER_LENGTH} {header_length} must be between 0 and the body length {len(body)}"
        )
    view = memoryview(body)
    try:
        document = orjson.loads(view[:json_end])
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidRequest("request JSON must be an object")

    request = pb.ModelInferRequest(model_name=model_name, model_version=model_version)
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidRequest("request 'id' must be a string")
    request.id = request_id

    parameters = dict(_object(document.get("parameters"), "request parameters"))
    binary_default = _flag(
        parameters.pop("binary_data_output", False), "request parameter 'binary_data_output'"
    )
    content_type = _content_type(parameters, "the request")
    json_to_parameters(parameters, request.parameters, "request parameters")
    default_codec = get_codec(content_type, "the request") if content_type else None

    inputs = document.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidRequest("request JSON needs 'inputs', a list of input tensors")
    offset = json_end
    for index, item in enumerate(inputs):
        offset = _parse_input(item, index, request, view, offset, default_codec)
    if offset != len(body):
        raise InvalidRequest(
            f"the body has {len(body) - offset} bytes after the binary inputs that no input's "
            "binary_data_size claims"
        )
    if content_type == "pd":
        check_columns(request)

    options = _parse_outputs(document.get("outputs"), request, binary_default, content_type)
    return request, options


def parse_raw_binary_request(
    model_name: str, model_version: str, body: bytes, input_name: str, datatype_name: str, shape: list[int]
) -> tuple[pb.ModelInferRequest, OutputOptions]:
    """Triton's raw binary request (``Inference-Header-Content-Length: 0``): the body is the single input's bytes.

    The caller knows the model's one input and its shape; every output comes back binary.
    """
    datatype(datatype_name)
    request = pb.ModelInferRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=[pb.ModelInferRequest.InferInputTensor(name=input_name, datatype=datatype_name, shape=shape)],
        raw_input_contents=[bytes(body)],
    )
    return request, OutputOptions(binary_default=True)


def _parse_input(
    item: Any, index: int, request: pb.ModelInferRequest, view: memoryview, offset: int, default: Codec | None
) -> int:
    """Append one JSON input (tensor and raw contents) to ``request``; returns the new binary offset."""
    if not isinstance(item, dict):
        raise InvalidRequest(f"inputs[{index}] must be an object")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"inputs[{index}] needs a 'name' string")
    where = f"input '{name}'"
    type_name = item.get("datatype")
    if not isinstance(type_name, str):
        raise InvalidRequest(f"{where}: needs a 'datatype' string")
    if type_name not in DATATYPES:
        raise InvalidRequest(
            f"{where}: unknown datatype '{type_name}', expected one of {', '.join(DATATYPES)}"
        )
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(type(dim) is int and 0 <= dim <= _INT64_MAX for dim in shape):
        raise InvalidRequest(f"{where}: shape must be a list of non-negative integers")

    parameters = dict(_object(item.get("parameters"), f"{where} parameters"))
    size = parameters.pop("binary_data_size", None)
    codec = _input_codec(_content_type(parameters, where), type_name, where, default)
    tensor = request.inputs.add(name=name, datatype=type_name, shape=shape)
    json_to_parameters(parameters, tensor.parameters, f"{where} parameters")

    if size is not None:
        if type(size) is not int or size < 0:
            raise InvalidRequest(f"{where}: binary_data_size must be a non-negative integer")
        if "data" in item:
            raise InvalidRequest(f"{where}: has both 'data' and parameters.binary_data_size")
        if offset + size > len(view):
            raise InvalidRequest(
                f"{where}: binary_data_size {size} exceeds the {len(view) - offset} bytes left in the body"
            )
        request.raw_input_contents.append(bytes(view[offset : offset + size]))
        return offset + size
    if _SHM in parameters:  # the core reads (or refuses) shared memory; no raw entry, as over gRPC
        return offset
    if "data" not in item:
        raise InvalidRequest(f"{where}: needs 'data' or parameters.binary_data_size")
    values = codec.decode(item["data"], type_name, name)
    count = len(values)
    needed = math.prod(shape)
    if count != needed:
        raise InvalidRequest(f"{where}: data has {count} elements but shape {shape} needs {needed}")
    if type_name == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = values
        request.raw_input_contents.append(serialize_bytes(array))
    else:
        request.raw_input_contents.append(
            np.ascontiguousarray(values, dtype=DATATYPES[type_name].numpy).tobytes()
        )
    return offset


def _input_codec(content_type: str | None, type_name: str, where: str, default: Codec | None) -> Codec:
    """The input's own content type, else the request's where it fits the datatype, else ``np``."""
    if content_type is None:
        return default if default is not None and default.supports(type_name) else _DEFAULT_CODEC
    codec = get_codec(content_type, where)
    if codec.request_only:
        raise InvalidRequest(f"{where}: content_type '{content_type}' applies only to the whole request")
    if not codec.supports(type_name):
        raise InvalidRequest(f"{where}: content_type '{content_type}' needs datatype BYTES, got {type_name}")
    return codec


def _parse_outputs(
    outputs: Any, request: pb.ModelInferRequest, binary_default: bool, content_type: str | None
) -> OutputOptions:
    if outputs is None:
        outputs = []
    if not isinstance(outputs, list):
        raise InvalidRequest("request 'outputs' must be a list")
    binary: dict[str, bool] = {}
    content_types: dict[str, str] = {}
    for index, item in enumerate(outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise InvalidRequest(f"outputs[{index}] must be an object with a 'name' string")
        name = item["name"]
        where = f"output '{name}'"
        parameters = dict(_object(item.get("parameters"), f"{where} parameters"))
        binary[name] = _flag(parameters.pop("binary_data", binary_default), f"{where}: binary_data")
        output_type = _content_type(parameters, where)
        if output_type is not None:
            if get_codec(output_type, where).request_only:
                raise InvalidRequest(
                    f"{where}: content_type '{output_type}' applies only to the whole request"
                )
            content_types[name] = output_type
        tensor = request.outputs.add(name=name)
        json_to_parameters(parameters, tensor.parameters, f"{where} parameters")
    return OutputOptions(
        binary=binary,
        content_types=content_types,
        binary_default=binary_default,
        content_type=content_type,
        explicit_outputs=bool(outputs),
    )


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where} must be a JSON object")
    return value


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{where} must be true or false")
    return value


def _content_type(parameters: Mapping[str, Any], where: str) -> str | None:
    """The ``content_type`` parameter, checked to be a known codec name (it stays in the parameters)."""
    value = parameters.get("content_type")
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{where}: content_type must be a string")
    get_codec(value, where)
    return value


# --- response ----------------------------------------------------------------------------------------------


def render_infer_response(
    response: pb.ModelInferResponse, options: OutputOptions
) -> tuple[bytes, int | None]:
    """The REST body of an inference response: JSON, then the binary outputs' blobs in output order.

    Returns:
        The body and the JSON's length for ``Inference-Header-Content-Length``, or None when no output is
        binary (the whole body is JSON).
    """
    raws = response.raw_output_contents
    if len(raws) != len(response.outputs):
        raise V2Error(f"the response has {len(raws)} raw_output_contents for {len(response.outputs)} outputs")
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for output, raw in zip(response.outputs, raws, strict=False):
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
        }
        parameters = parameters_to_json(output.parameters)
        data: Any = None
        if _SHM in output.parameters:
            pass  # written to the client's shared memory: neither data nor a blob
        elif options.is_binary(output.name):
            parameters["binary_data_size"] = len(raw)
            blobs.append(raw)
        else:
            codec = _output_codec(output, options)
            if codec is not None:
                parameters["content_type"] = codec.name
            data = (codec or _DEFAULT_CODEC).encode(_output_values(output, raw), output.datatype, output.name)
        if parameters:
            entry["parameters"] = parameters
        if data is not None:
            entry["data"] = data
        outputs.append(entry)

    document: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = parameters_to_json(response.parameters)
    document["outputs"] = outputs
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _output_codec(output: pb.ModelInferResponse.InferOutputTensor, options: OutputOptions) -> Codec | None:
    """The codec for a JSON output: the one the client asked for, else the model's, else the request's default
    where it fits the datatype; None for the plain V2 mapping."""
    where = f"output '{output.name}'"
    asked = options.content_types.get(output.name)
    if asked is not None:
        codec = get_codec(asked, where)
        if not codec.supports(output.datatype):
            raise InvalidRequest(
                f"{where}: content_type '{asked}' needs datatype BYTES, got {output.datatype}"
            )
        return codec
    for name in (_string_parameter(output.parameters, "content_type"), options.content_type):
        if name is None:
            continue
        try:
            codec = get_codec(name, where)
        except InvalidRequest:
            continue  # a model's own label we do not know: keep it, render plainly
        if not codec.request_only and codec.supports(output.datatype):
            return codec
    return None


def _output_values(output: pb.ModelInferResponse.InferOutputTensor, raw: bytes) -> np.ndarray:
    row = DATATYPES.get(output.datatype)
    if row is None:
        raise V2Error(f"output '{output.name}': unknown datatype '{output.datatype}'")
    count = math.prod(output.shape)
    if row.name == "BYTES":
        return deserialize_bytes(raw, count, output.name)
    if len(raw) != count * row.itemsize:
        raise V2Error(
            f"output '{output.name}': {len(raw)} bytes for shape {list(output.shape)} of {row.name}"
        )
    return np.frombuffer(raw, dtype=row.numpy)


def _string_parameter(parameters: Mapping[str, pb.InferParameter], key: str) -> str | None:
    if key not in parameters or parameters[key].WhichOneof("parameter_choice") != "string_param":
        return None
    return parameters[key].string_param


# --- parameters and messages -------------------------------------------------------------------------------


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
            if not -_INT64_MAX - 1 <= value <= _UINT64_MAX:
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


def parse_repository_request(body: bytes, where: str) -> dict[str, pb.ModelRepositoryParameter]:
    """The ``parameters`` of a repository load/unload body (which may be empty) as protobuf parameters.

    ``file:<version>/<name>`` values are base64 in JSON and become raw ``bytes_param``, as tritonclient's gRPC
    client sends them; ``config`` stays a JSON string.
    """
    if not body.strip():
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"{where}: request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidRequest(f"{where}: request JSON must be an object")
    parameters: dict[str, pb.ModelRepositoryParameter] = {}
    for key, value in _object(document.get("parameters"), f"{where}: parameters").items():
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
            if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
                raise InvalidRequest(f"{where}: parameter '{key}' is out of the 64-bit signed integer range")
            parameters[key] = pb.ModelRepositoryParameter(int64_param=value)
        elif isinstance(value, str):
            parameters[key] = pb.ModelRepositoryParameter(string_param=value)
        else:
            raise InvalidRequest(f"{where}: parameter '{key}' must be a string, integer or boolean")
    return parameters
