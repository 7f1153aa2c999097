"""V2 REST inference bodies (JSON and Triton's binary extension) <-> the core's protobuf messages.

A REST inference request becomes the same ``ModelInferRequest`` a gRPC client would send, so every rule lives
once, in the core. Every input goes to ``raw_input_contents`` (protobuf forbids mixing typed and raw contents,
and raw is what the core reads fastest): binary-extension inputs as slices of the body, JSON inputs converted
by numpy through their content-type codec. What the JSON response needs beyond the protobuf (which outputs
are binary, their content types) travels beside it as :class:`OutputOptions`.

This is the ``/v2`` JSON<->protobuf code; :mod:`~v2server.rest_api.simple_codec` does the same for ``/v1``
and ``/predict`` bodies, and both share the value codecs of :mod:`~v2server.rest_api.content_types` and the
numeric rules of :mod:`v2server.tensors`, so a bad value gets the same error through every style.
Parameters, repository bodies and other messages are :mod:`~v2server.rest_api.messages`' (re-exported here).

Only REST concerns are consumed here: ``binary_data_output``, ``binary_data`` and ``binary_data_size``.
Everything else in ``parameters`` (``content_type`` included) is forwarded to the core.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from v2server._proto import grpc_service_pb2 as pb
from v2server.datatypes import DATATYPES
from v2server.errors import InvalidRequest, V2Error
from v2server.rest_api import chunked_json
from v2server.rest_api.content_types import Codec, NumpyCodec, check_columns, get_codec
from v2server.rest_api.messages import (
    json_object,
    json_to_parameters,
    message_to_json,
    parameters_to_json,
    parse_repository_request,
)
from v2server.tensors import Tensor, bytes_array, output_array, raw_view
from v2server.wire import Buffer

__all__ = [
    "HEADER_LENGTH",
    "OutputOptions",
    "json_to_parameters",
    "message_to_json",
    "parameters_to_json",
    "parse_infer_parts",
    "parse_infer_request",
    "parse_raw_binary_parts",
    "parse_raw_binary_request",
    "parse_repository_request",
    "render_infer_response",
]

HEADER_LENGTH = "Inference-Header-Content-Length"

_INT64_MAX = 2**63 - 1
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
    """:func:`parse_infer_parts` with the raw entries in the message (``raw_input_contents``)."""
    request, options, raw = parse_infer_parts(model_name, model_version, body, header_length)
    request.raw_input_contents.extend(bytes(entry) for entry in raw)
    return request, options


def parse_infer_parts(
    model_name: str, model_version: str, body: bytes, header_length: int | None
) -> tuple[pb.ModelInferRequest, OutputOptions, list[Buffer]]:
    """A V2 JSON inference request (with Triton's binary extension) as the core's protobuf request and its
    raw entries, kept out of the message (``core.ModelInfer``'s ``raw``): binary inputs are views of
    ``body`` and JSON ones the parsed arrays' memory, so no tensor is copied on its way to the model.

    Args:
        model_name: from the URL.
        model_version: from the URL ("" when absent).
        body: the decoded body: JSON, then the binary inputs' bytes in input order.
        header_length: ``Inference-Header-Content-Length``, the JSON's length; None when the whole body is
            JSON. 0 (a raw binary request) is :func:`parse_raw_binary_request`'s.

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
        document = chunked_json.loads(body, json_end, defer=True)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    raw: list[Buffer] = []
    try:
        request, options = _infer_request(model_name, model_version, document, view, json_end, raw)
        return request, options, raw
    finally:
        if json_end > 2 * chunked_json.CHUNK_ELEMENTS:  # smaller JSON cannot hold a list of more values than that
            chunked_json.discard(document)  # a large document is freed here, in steps (see discard)


def _infer_request(
    model_name: str, model_version: str, document: Any, view: memoryview, json_end: int, raw: list[Buffer]
) -> tuple[pb.ModelInferRequest, OutputOptions]:
    if not isinstance(document, dict):
        raise InvalidRequest("request JSON must be an object")

    request = pb.ModelInferRequest(model_name=model_name, model_version=model_version)
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidRequest("request 'id' must be a string")
    request.id = request_id

    parameters = dict(json_object(document.get("parameters"), "request parameters"))
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
        offset = _parse_input(item, index, request, raw, view, offset, default_codec)
    if offset != len(view):
        raise InvalidRequest(
            f"the body has {len(view) - offset} bytes after the binary inputs that no input's "
            "binary_data_size claims"
        )
    if content_type == "pd":
        check_columns(request)

    options = _parse_outputs(document.get("outputs"), request, binary_default, content_type)
    return request, options


def parse_raw_binary_request(
    model_name: str, model_version: str, body: bytes
) -> tuple[pb.ModelInferRequest, OutputOptions]:
    """:func:`parse_raw_binary_parts` with the body in the message (``raw_input_contents``)."""
    request, options, raw = parse_raw_binary_parts(model_name, model_version, body)
    request.raw_input_contents.extend(raw)
    return request, options


def parse_raw_binary_parts(
    model_name: str, model_version: str, body: bytes
) -> tuple[pb.ModelInferRequest, OutputOptions, list[Buffer]]:
    """Triton's raw binary request (``Inference-Header-Content-Length: 0``): the body is the single input's bytes.

    The request carries no input description: the core describes the one input from the model's config
    (``inference.complete_raw_binary``), so gateway mode needs one RPC. Every output comes back binary.
    """
    request = pb.ModelInferRequest(model_name=model_name, model_version=model_version)
    return request, OutputOptions(binary_default=True), [body]


def _parse_input(
    item: Any, index: int, request: pb.ModelInferRequest, raw: list[Buffer], view: memoryview, offset: int,
    default: Codec | None,
) -> int:
    """Append one JSON input to ``request`` and its contents to ``raw``; returns the new binary offset."""
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

    parameters = dict(json_object(item.get("parameters"), f"{where} parameters"))
    size = parameters.pop("binary_data_size", None)
    codec = _input_codec(_content_type(parameters, where), type_name, where, default)
    tensor = request.inputs.add(name=name, datatype=type_name, shape=shape)
    json_to_parameters(parameters, tensor.parameters, f"{where} parameters")

    if _SHM in parameters and (size is not None or "data" in item):
        raise InvalidRequest(
            f"{where}: Input must set only one of the following fields: 'data', 'binary_data_size' in "
            "'parameters', 'shared_memory_region' in 'parameters'"
        )
    if size is not None:
        if type(size) is not int or size < 0:
            raise InvalidRequest(f"{where}: binary_data_size must be a non-negative integer")
        if "data" in item:
            raise InvalidRequest(f"{where}: has both 'data' and parameters.binary_data_size")
        if offset + size > len(view):
            raise InvalidRequest(
                f"{where}: binary_data_size {size} exceeds the {len(view) - offset} bytes left in the body"
            )
        raw.append(view[offset : offset + size])
        return offset + size
    if _SHM in parameters:  # the core reads (or refuses) shared memory; no raw entry, as over gRPC
        return offset
    if "data" not in item:
        raise InvalidRequest(f"{where}: needs 'data' or parameters.binary_data_size")
    data = item["data"]
    needed = math.prod(shape)
    flat = isinstance(data, chunked_json.FlatArray) or (isinstance(data, list) and data and not isinstance(data[0], list))
    if flat and len(data) != needed:
        # flat data: its length is its element count, so a mismatch is refused before any value is converted
        # (a large flat array of numbers is not even parsed: its commas are counted)
        raise InvalidRequest(f"{where}: data has {len(data)} elements but shape {shape} needs {needed}")
    if isinstance(data, chunked_json.FlatArray):
        values = _flat_values(data, codec, type_name, name)
    else:
        values = codec.decode(data, type_name, name)
    count = len(values)
    if count != needed:
        raise InvalidRequest(f"{where}: data has {count} elements but shape {shape} needs {needed}")
    array = values if isinstance(values, np.ndarray) else bytes_array(values)
    raw.append(raw_view(Tensor(name, DATATYPES[type_name], array)))
    return offset


def _flat_values(data: chunked_json.FlatArray, codec: Codec, type_name: str, name: str) -> list[bytes] | np.ndarray:
    """A large flat array's values, parsed and converted a piece at a time (numbers straight into the tensor),
    or, for a codec that wants the JSON values, as the list ``orjson`` would give."""
    try:
        if isinstance(codec, NumpyCodec) and type_name != "BYTES":
            return codec.decode_pieces(data.pieces(), len(data), type_name, name)
        return codec.decode(data.tolist(), type_name, name)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


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
        parameters = dict(json_object(item.get("parameters"), f"{where} parameters"))
        if _SHM in parameters and parameters.get("binary_data") is True:
            raise InvalidRequest(f"{where}: Output can't set both 'shared_memory_region' and 'binary_data'")
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
    blobs: list[Buffer] = []
    values_in_json = 0  # JSON values the document holds: a small one is rendered at once
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
            values = output_array(output.name, output.datatype, output.shape, raw).reshape(-1)
            data = (codec or _DEFAULT_CODEC).encode(values, output.datatype, output.name)
            values_in_json += values.size
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
    if values_in_json <= _RENDER_AT_ONCE:  # names, shapes and parameters are few: no need to weigh them
        header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    else:
        header = chunked_json.dumps(document, orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


#: a response document with at most this many tensor values is rendered by one ``orjson.dumps`` call
_RENDER_AT_ONCE = chunked_json.CHUNK_ELEMENTS // 2


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


def _string_parameter(parameters: Mapping[str, pb.InferParameter], key: str) -> str | None:
    if key not in parameters or parameters[key].WhichOneof("parameter_choice") != "string_param":
        return None
    return parameters[key].string_param
