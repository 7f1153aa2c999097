"""REST bodies <-> protobuf: JSON and binary inputs, output selection, response layout, parameters, messages."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
import pytest
import torch

from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import model_config_pb2 as mc
from v2server.datatypes import DATATYPES
from v2server.errors import InvalidRequest
from v2server.rest_api.json_codec import (
    OutputOptions,
    json_to_parameters,
    message_to_json,
    parameters_to_json,
    parse_infer_request,
    parse_raw_binary_request,
    render_infer_response,
)
from v2server.tensors import deserialize_bytes, serialize_bytes


def _parse(document: Any, binary: bytes = b"") -> tuple[pb.ModelInferRequest, OutputOptions]:
    """Parse ``document`` as JSON followed by ``binary`` (with a header length only when there is binary)."""
    header = orjson.dumps(document)
    return parse_infer_request("m", "1", header + binary, len(header) if binary else None)


def _input(name: str, datatype: str, shape: list[int], data: Any = None, **parameters: Any) -> dict[str, Any]:
    tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    if data is not None:
        tensor["data"] = data
    if parameters:
        tensor["parameters"] = parameters
    return tensor


def _error(document: Any, binary: bytes = b"") -> str:
    with pytest.raises(InvalidRequest) as caught:
        _parse(document, binary)
    return caught.value.message


def _bf16_bits(values: list[float]) -> np.ndarray:
    as_bf16 = torch.tensor(values, dtype=torch.float32).to(torch.bfloat16)
    return as_bf16.view(torch.int16).numpy().view(np.uint16)


# Six values per datatype that exercise its range; the expected array is what numpy (or torch, for BF16) makes.
_VALUES: dict[str, list[Any]] = {
    "BOOL": [True, False, True, True, False, False],
    "UINT8": [0, 1, 2, 3, 254, 255],
    "UINT16": [0, 1, 2, 3, 4, 65535],
    "UINT32": [0, 1, 2, 3, 4, 2**32 - 1],
    "UINT64": [0, 1, 2, 2**53 + 1, 2**63, 2**64 - 1],
    "INT8": [-128, -1, 0, 1, 2, 127],
    "INT16": [-(2**15), -1, 0, 1, 2, 2**15 - 1],
    "INT32": [-(2**31), -1, 0, 1, 2, 2**31 - 1],
    "INT64": [-(2**63), -(2**53) - 1, 0, 1, 2**53 + 1, 2**63 - 1],
    "FP16": [-65504, -1.5, 0, 0.1, 1, 65504],
    "FP32": [-3.4e38, -1.5, 0, 0.1, 1, 3.4e38],
    "FP64": [-1.7e308, -1.5, 0, 0.1, 1e-300, 1.7e308],
    "BF16": [-3.3e38, -1.5, 0, 0.1, 3.140625, 1e30],
    "BYTES": ["", "a", "héllo", "日本語", "x" * 300, "end"],
}


def _expected_raw(datatype: str, values: list[Any]) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes(np.array([value.encode() for value in values], dtype=object))
    if datatype == "BF16":
        return _bf16_bits(values).tobytes()
    return np.array(values, dtype=DATATYPES[datatype].numpy).tobytes()


# --- JSON inputs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_every_datatype_from_json_becomes_numpys_raw_bytes(datatype: str, nested: bool) -> None:
    values = _VALUES[datatype]
    data = [values[:3], values[3:]] if nested else values
    request, _ = _parse({"inputs": [_input("IN", datatype, [2, 3], data)]})
    assert request.inputs[0].datatype == datatype
    assert list(request.inputs[0].shape) == [2, 3]
    assert not request.inputs[0].HasField("contents")
    assert request.raw_input_contents[0] == _expected_raw(datatype, values)


def test_bytes_from_json_are_utf8_and_length_prefixed() -> None:
    request, _ = _parse({"inputs": [_input("IN", "BYTES", [2], ["é", "日本"])]})
    assert request.raw_input_contents[0] == b"\x02\x00\x00\x00\xc3\xa9\x06\x00\x00\x00" + "日本".encode()


def test_request_fields_and_parameters_are_forwarded_without_the_rest_only_ones() -> None:
    request, options = _parse(
        {
            "id": "req-7",
            "parameters": {"binary_data_output": True, "content_type": "np", "sequence_id": 9, "tag": "x"},
            "inputs": [_input("IN", "INT32", [1], [5], content_type="np", custom=1.5)],
            "outputs": [{"name": "OUT", "parameters": {"binary_data": False, "classification": 3}}],
        }
    )
    assert (request.model_name, request.model_version, request.id) == ("m", "1", "req-7")
    assert parameters_to_json(request.parameters) == {"content_type": "np", "sequence_id": 9, "tag": "x"}
    assert parameters_to_json(request.inputs[0].parameters) == {"content_type": "np", "custom": 1.5}
    assert request.outputs[0].name == "OUT"
    assert parameters_to_json(request.outputs[0].parameters) == {"classification": 3}
    assert options == OutputOptions(
        binary={"OUT": False}, binary_default=True, content_type="np", explicit_outputs=True
    )


# --- the binary extension ----------------------------------------------------------------------------------


def test_json_and_binary_inputs_mix_in_one_request_in_input_order() -> None:
    first = np.arange(4, dtype=np.float32)
    second = serialize_bytes(np.array([b"\x00\xff", b"ok"], dtype=object))
    request, _ = _parse(
        {
            "inputs": [
                _input("A", "INT32", [2], [7, 8]),
                _input("B", "FP32", [4], binary_data_size=16),
                _input("C", "BOOL", [1], [True]),
                _input("D", "BYTES", [2], binary_data_size=len(second), other="kept"),
            ]
        },
        first.tobytes() + second,
    )
    assert list(request.raw_input_contents) == [
        np.array([7, 8], dtype=np.int32).tobytes(),
        first.tobytes(),
        b"\x01",
        second,
    ]
    assert "binary_data_size" not in request.inputs[1].parameters
    assert parameters_to_json(request.inputs[3].parameters) == {"other": "kept"}


def test_a_zero_size_binary_input_is_an_empty_raw_entry() -> None:
    request, _ = _parse(
        {"inputs": [_input("A", "FP32", [0], binary_data_size=0), _input("B", "INT8", [1], [1])]}
    )
    assert list(request.raw_input_contents) == [b"", b"\x01"]


@pytest.mark.parametrize(
    ("sizes", "binary", "message"),
    [
        ([4, 8], b"x" * 10, "input 'B': binary_data_size 8 exceeds the 6 bytes left in the body"),
        (
            [4, 4],
            b"x" * 10,
            "the body has 2 bytes after the binary inputs that no input's binary_data_size claims",
        ),
        ([4, -1], b"x" * 4, "input 'B': binary_data_size must be a non-negative integer"),
        ([4, "4"], b"x" * 8, "input 'B': binary_data_size must be a non-negative integer"),
    ],
)
def test_binary_sections_must_add_up(sizes: list[Any], binary: bytes, message: str) -> None:
    inputs = [_input(name, "INT32", [1], binary_data_size=size) for name, size in zip("AB", sizes, strict=False)]
    assert _error({"inputs": inputs}, binary) == message


def test_binary_bytes_without_a_header_length_are_invalid_json() -> None:
    body = orjson.dumps({"inputs": [_input("A", "INT32", [1], binary_data_size=4)]}) + b"\x01\x00\x00\x00"
    with pytest.raises(InvalidRequest, match="^request body is not valid JSON"):
        parse_infer_request("m", "", body, None)


@pytest.mark.parametrize("header_length", [-1, 1000])
def test_the_header_length_must_lie_within_the_body(header_length: int) -> None:
    body = orjson.dumps({"inputs": []})
    with pytest.raises(InvalidRequest) as caught:
        parse_infer_request("m", "", body, header_length)
    assert caught.value.message == (
        f"Inference-Header-Content-Length {header_length} must be between 0 and the body length {len(body)}"
    )


def test_a_raw_binary_request_is_the_single_input_and_asks_for_binary_outputs() -> None:
    raw = np.arange(6, dtype=np.float32).tobytes()
    request, options = parse_raw_binary_request("m", "2", raw)
    assert (request.model_name, request.model_version) == ("m", "2")
    assert not request.inputs  # the core describes the one input from the model's config
    assert list(request.raw_input_contents) == [raw]
    assert not request.outputs
    assert options.is_binary("ANY_OUTPUT")


# --- malformed requests ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "request body is not valid JSON"),
        (b"", "request body is not valid JSON"),
        (b"[1, 2]", "request JSON must be an object"),
        (b"{}", "request JSON needs 'inputs', a list of input tensors"),
        (b'{"inputs": {}}', "request JSON needs 'inputs', a list of input tensors"),
        (b'{"inputs": [], "id": 5}', "request 'id' must be a string"),
        (b'{"inputs": [], "parameters": []}', "request parameters must be a JSON object"),
        (
            b'{"inputs": [], "parameters": {"binary_data_output": 1}}',
            "request parameter 'binary_data_output'",
        ),
        (b'{"inputs": [], "outputs": {}}', "request 'outputs' must be a list"),
        (b'{"inputs": [], "outputs": [{}]}', "outputs[0] must be an object with a 'name' string"),
        (b'{"inputs": [3]}', "inputs[0] must be an object"),
    ],
)
def test_malformed_request_json(body: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_infer_request("m", "", body, None)
    assert caught.value.message.startswith(message)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"datatype": "FP32", "shape": [1], "data": [1]}, "inputs[0] needs a 'name' string"),
        ({"name": "A", "shape": [1], "data": [1]}, "input 'A': needs a 'datatype' string"),
        ({"name": "A", "datatype": "FP8", "shape": [1], "data": [1]}, "input 'A': unknown datatype 'FP8'"),
        (
            {"name": "A", "datatype": "FP32", "data": [1]},
            "input 'A': shape must be a list of non-negative integers",
        ),
        (_input("A", "FP32", [-1], [1]), "input 'A': shape must be a list of non-negative integers"),
        (_input("A", "FP32", [1.0], [1]), "input 'A': shape must be a list of non-negative integers"),
        (_input("A", "FP32", [True], [1]), "input 'A': shape must be a list of non-negative integers"),
        (_input("A", "FP32", [2**63], [1]), "input 'A': shape must be a list of non-negative integers"),
        (_input("A", "FP32", [1]), "input 'A': needs 'data' or parameters.binary_data_size"),
        (_input("A", "FP32", [1], [1], binary_data_size=4), "input 'A': has both 'data' and"),
        (
            _input("A", "FP32", [2, 3], [1, 2, 3, 4, 5]),
            "input 'A': data has 5 elements but shape [2, 3] needs 6",
        ),
        (_input("A", "BYTES", [2], ["a"]), "input 'A': data has 1 elements but shape [2] needs 2"),
        (_input("A", "INT32", [1], ["1"]), "input 'A': data must be integers for INT32, got string \"1\""),
        (_input("A", "INT32", [1], [1.5]), "input 'A': data must be integers for INT32, got number 1.5"),
        (_input("A", "INT32", [1], [True]), "input 'A': data must be integers for INT32, got boolean true"),
        (_input("A", "FP32", [1], [False]), "input 'A': data must be numbers for FP32, got boolean false"),
        (_input("A", "BOOL", [1], [0]), "input 'A': data must be booleans for BOOL, got integer 0"),
        (_input("A", "BYTES", [1], [1]), "input 'A': data must be strings for BYTES, got integer 1"),
        (_input("A", "INT8", [1], [300]), "input 'A': value 300 is out of range for INT8"),
        (_input("A", "UINT16", [1], [-1]), "input 'A': value -1 is out of range for UINT16"),
        (
            _input("A", "INT64", [1], [2**63]),
            "input 'A': value 9223372036854775808 is out of range for INT64",
        ),
        (_input("A", "FP16", [1], [1e6]), "input 'A': a value is out of range for FP16"),
        (_input("A", "FP32", [2], [[1], [2, 3]]), "input 'A': nested data must be a rectangular array"),
        (_input("A", "FP32", [1], "1"), "input 'A': data must be a JSON array"),
        (_input("A", "FP32", [1], [1], tag=[1]), "input 'A' parameters: parameter 'tag' must be a string"),
        (
            _input("A", "FP32", [1], [1], content_type="xyz"),
            "unknown content_type 'xyz' on input 'A'; known: ",
        ),
    ],
)
def test_malformed_inputs_are_invalid_requests_naming_the_input(tensor: dict[str, Any], message: str) -> None:
    assert _error({"inputs": [tensor]}).startswith(message)


def test_an_integer_beyond_64_bits_reads_as_a_float_and_is_refused() -> None:
    body = b'{"inputs": [{"name": "A", "datatype": "UINT64", "shape": [1], "data": [18446744073709551616]}]}'
    with pytest.raises(InvalidRequest, match="^input 'A': data must be integers for UINT64, got number"):
        parse_infer_request("m", "", body, None)


def test_a_length_mismatch_is_refused_before_any_value_is_converted() -> None:
    # the bad value is never looked at: the flat data's length already disagrees with the shape
    body = b'{"inputs": [{"name": "A", "datatype": "FP32", "shape": [1, 784], "data": [1.0, "x", 3.0]}]}'
    with pytest.raises(InvalidRequest, match=r"^input 'A': data has 3 elements but shape \[1, 784\] needs 784$"):
        parse_infer_request("m", "", body, None)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([1.0] * 99_999 + [True], "input 'A': data must be numbers for FP32, got boolean true"),
        ([1.0] * 50_000 + ["x"] + [1.0] * 49_999, None),  # a string inside: parsed as usual, same message
        ([1.0] * 99_999 + [1e39], "input 'A': a value is out of range for FP32"),
    ],
)
def test_a_large_flat_array_converted_in_pieces_gets_the_messages_of_a_small_one(
    values: list[Any], message: str | None
) -> None:
    body = orjson.dumps({"inputs": [{"name": "A", "datatype": "FP32", "shape": [len(values)], "data": values}]})
    small = orjson.dumps({"inputs": [{"name": "A", "datatype": "FP32", "shape": [2], "data": values[-2:]}]})
    if message is None:
        with pytest.raises(InvalidRequest) as expected:
            parse_infer_request("m", "", small.replace(b"1.0", b'"x"'), None)
        message = expected.value.message
    with pytest.raises(InvalidRequest) as caught:
        parse_infer_request("m", "", body, None)
    assert caught.value.message == message


def test_a_large_flat_array_that_is_not_valid_json_is_400() -> None:
    data = b"1," * 100_000 + b",2"  # 100,002 elements by its commas, and an empty one among them
    body = b'{"inputs": [{"name": "A", "datatype": "INT32", "shape": [100002], "data": [' + data + b"]}]}"
    with pytest.raises(InvalidRequest, match="^request body is not valid JSON"):
        parse_infer_request("m", "", body, None)


def test_a_large_body_parses_and_renders_as_a_small_one() -> None:
    values = np.arange(200_000, dtype=np.float32) / 3  # several parse and render pieces
    body = orjson.dumps({"inputs": [{"name": "A", "datatype": "FP32", "shape": [2, 100_000], "data": values}]},
                        option=orjson.OPT_SERIALIZE_NUMPY)
    request, options = parse_infer_request("m", "", body, None)
    np.testing.assert_array_equal(np.frombuffer(request.raw_input_contents[0], np.float32), values)
    response = pb.ModelInferResponse(
        model_name="m", outputs=[pb.ModelInferResponse.InferOutputTensor(name="A", datatype="FP32", shape=[2, 100_000])],
        raw_output_contents=[values.tobytes()],
    )
    rendered, json_length = render_infer_response(response, options)
    assert json_length is None
    assert rendered == orjson.dumps(orjson.loads(rendered))  # one valid document, as one call renders it
    np.testing.assert_array_equal(np.array(orjson.loads(rendered)["outputs"][0]["data"], np.float32), values)


# --- parameters --------------------------------------------------------------------------------------------


def test_parameters_round_trip_with_their_protobuf_types() -> None:
    values = {
        "flag": False,
        "small": -(2**63),
        "big": 2**63 - 1,
        "huge": 2**64 - 1,
        "ratio": 0.1,
        "whole_float": 2.0,
        "text": "héllo",
    }
    target = pb.ModelInferRequest().parameters
    json_to_parameters(values, target, "request parameters")
    assert {key: target[key].WhichOneof("parameter_choice") for key in values} == {
        "flag": "bool_param",
        "small": "int64_param",
        "big": "int64_param",
        "huge": "uint64_param",
        "ratio": "double_param",
        "whole_float": "double_param",
        "text": "string_param",
    }
    rendered = parameters_to_json(target)
    assert rendered == values
    assert type(rendered["whole_float"]) is float
    assert orjson.loads(orjson.dumps(rendered)) == values


@pytest.mark.parametrize(("value", "kind"), [([1], "an array"), ({"a": 1}, "an object"), (None, "null")])
def test_parameters_are_scalars(value: Any, kind: str) -> None:
    target = pb.ModelInferRequest().parameters
    with pytest.raises(InvalidRequest) as caught:
        json_to_parameters({"ok": 1, "bad": value}, target, "request parameters")
    assert caught.value.message == (
        f"request parameters: parameter 'bad' must be a string, number or boolean, not {kind}"
    )
    assert "bad" not in target


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1])
def test_integer_parameters_must_fit_64_bits(value: int) -> None:
    with pytest.raises(InvalidRequest, match="parameter 'n' is out of the 64-bit integer range"):
        json_to_parameters({"n": value}, pb.ModelInferRequest().parameters, "request parameters")


# --- output selection --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "outputs", "expected"),
    [
        ({}, None, {"A": False, "B": False}),
        ({"binary_data_output": True}, None, {"A": True, "B": True}),
        ({"binary_data_output": False}, None, {"A": False, "B": False}),
        ({}, [{"name": "A"}], {"A": False}),
        ({}, [{"name": "A", "parameters": {"binary_data": True}}, {"name": "B"}], {"A": True, "B": False}),
        (
            {"binary_data_output": True},
            [{"name": "A", "parameters": {"binary_data": False}}, {"name": "B"}],
            {"A": False, "B": True},
        ),
        (
            {"binary_data_output": False},
            [{"name": "A", "parameters": {"binary_data": True}}],
            {"A": True, "B": False},
        ),
    ],
    ids=[
        "default-json",
        "request-binary",
        "request-json",
        "listed-default-json",
        "per-output-binary",
        "per-output-wins-over-request-binary",
        "per-output-wins-over-request-json",
    ],
)
def test_output_binary_selection(parameters: dict[str, Any], outputs: Any, expected: dict[str, bool]) -> None:
    document: dict[str, Any] = {"parameters": parameters, "inputs": []}
    if outputs is not None:
        document["outputs"] = outputs
    _, options = _parse(document)
    assert {name: options.is_binary(name) for name in expected} == expected
    assert options.explicit_outputs is (outputs is not None)


# --- responses ---------------------------------------------------------------------------------------------


def _response(*outputs: tuple[str, str, list[int], bytes], **fields: Any) -> pb.ModelInferResponse:
    return pb.ModelInferResponse(
        model_name="m",
        model_version="1",
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=shape)
            for name, datatype, shape, _ in outputs
        ],
        raw_output_contents=[raw for *_, raw in outputs],
        **fields,
    )


_INT = np.array([1, -2, 3], dtype=np.int32).tobytes()
_FP = np.array([0.5, 1.5], dtype=np.float64).tobytes()
_TEXT = serialize_bytes(np.array([b"a", "é".encode()], dtype=object))


def test_a_json_response_has_data_and_no_header_length() -> None:
    response = _response(
        ("I", "INT32", [3], _INT), ("T", "BYTES", [2], _TEXT), ("B", "BOOL", [2], b"\x01\x00")
    )
    body, header_length = render_infer_response(response, OutputOptions())
    assert header_length is None
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "outputs": [
            {"name": "I", "datatype": "INT32", "shape": [3], "data": [1, -2, 3]},
            {"name": "T", "datatype": "BYTES", "shape": [2], "data": ["a", "é"]},
            {"name": "B", "datatype": "BOOL", "shape": [2], "data": [True, False]},
        ],
    }


def test_the_binary_response_layout() -> None:
    response = _response(("I", "INT32", [3], _INT), ("J", "FP64", [2], _FP), ("T", "BYTES", [2], _TEXT))
    options = OutputOptions(binary={"J": False}, binary_default=True, explicit_outputs=True)
    body, header_length = render_infer_response(response, options)
    assert header_length is not None
    header = orjson.loads(body[:header_length])
    assert body[header_length:] == _INT + _TEXT
    assert header["outputs"] == [
        {"name": "I", "datatype": "INT32", "shape": [3], "parameters": {"binary_data_size": len(_INT)}},
        {"name": "J", "datatype": "FP64", "shape": [2], "data": [0.5, 1.5]},
        {"name": "T", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(_TEXT)}},
    ]


def test_an_empty_binary_output_still_counts_as_binary() -> None:
    body, header_length = render_infer_response(
        _response(("E", "FP32", [0], b"")), OutputOptions(binary_default=True)
    )
    assert header_length == len(body)
    assert orjson.loads(body)["outputs"][0]["parameters"] == {"binary_data_size": 0}


def test_id_and_parameters_appear_only_when_set() -> None:
    plain = orjson.loads(render_infer_response(_response(), OutputOptions())[0])
    assert plain == {"model_name": "m", "model_version": "1", "outputs": []}
    response = _response(id="r1", parameters={"sequence_id": pb.InferParameter(uint64_param=2**64 - 1)})
    rendered = orjson.loads(render_infer_response(response, OutputOptions())[0])
    assert rendered["id"] == "r1"
    assert rendered["parameters"] == {"sequence_id": 2**64 - 1}


def test_bf16_and_fp16_outputs_render_as_json_numbers() -> None:
    bf16 = [1.5, -0.25, 3.140625, 1e30]
    fp16 = np.array([0.1, -65504, 2.5], dtype=np.float16)
    response = _response(("B", "BF16", [4], _bf16_bits(bf16).tobytes()), ("H", "FP16", [3], fp16.tobytes()))
    outputs = orjson.loads(render_infer_response(response, OutputOptions())[0])["outputs"]
    assert (
        np.array(outputs[0]["data"], dtype=np.float32).tolist()
        == torch.tensor(bf16).bfloat16().float().tolist()
    )
    assert np.array(outputs[1]["data"], dtype=np.float16).tobytes() == fp16.tobytes()


def test_uint64_and_int64_outputs_keep_every_digit() -> None:
    values = np.array([2**64 - 1, 2**53 + 1], dtype=np.uint64)
    outputs = orjson.loads(
        render_infer_response(_response(("U", "UINT64", [2], values.tobytes())), OutputOptions())[0]
    )
    assert outputs["outputs"][0]["data"] == [2**64 - 1, 2**53 + 1]


def test_non_utf8_bytes_cannot_be_a_json_output() -> None:
    raw = serialize_bytes(np.array([b"\xff\xfe"], dtype=object))
    with pytest.raises(
        InvalidRequest, match=r"^output 'T': BYTES data is not valid UTF-8 .*binary_data = true"
    ):
        render_infer_response(_response(("T", "BYTES", [1], raw)), OutputOptions())
    body, header_length = render_infer_response(
        _response(("T", "BYTES", [1], raw)), OutputOptions(binary_default=True)
    )
    assert header_length is not None and body[header_length:] == raw


def test_a_json_response_round_trips_through_the_request_parser() -> None:
    request, options = _parse({"inputs": [_input("X", "FP32", [2, 2], [[1.5, 2], [3, 4]])]})
    response = _response(("Y", "FP32", [2, 2], request.raw_input_contents[0]))
    output = orjson.loads(render_infer_response(response, options)[0])["outputs"][0]
    assert output["data"] == [1.5, 2.0, 3.0, 4.0]


# --- content types through the codec -----------------------------------------------------------------------


def test_input_level_content_types_decode_json_data() -> None:
    blob = bytes(range(256))
    request, _ = _parse(
        {
            "inputs": [
                _input("B64", "BYTES", [1], [base64.b64encode(blob).decode()], content_type="base64"),
                _input("J", "BYTES", [2], [{"a": 1}, [1, 2]], content_type="json"),
                _input("D", "BYTES", [1], ["2024-05-01T12:00:00"], content_type="datetime"),
            ]
        }
    )
    assert deserialize_bytes(request.raw_input_contents[0], 1, "B64").tolist() == [blob]
    assert deserialize_bytes(request.raw_input_contents[1], 2, "J").tolist() == [b'{"a":1}', b"[1,2]"]
    assert deserialize_bytes(request.raw_input_contents[2], 1, "D").tolist() == [b"2024-05-01T12:00:00"]
    assert parameters_to_json(request.inputs[0].parameters) == {"content_type": "base64"}


def test_a_request_level_content_type_is_the_default_for_inputs_it_fits() -> None:
    encoded = base64.b64encode(b"\xff\x00").decode()
    request, options = _parse(
        {
            "parameters": {"content_type": "base64"},
            "inputs": [
                _input("B", "BYTES", [1], [encoded]),
                _input("S", "BYTES", [1], ["plain"], content_type="str"),
                _input("N", "INT32", [1], [4]),
            ],
        }
    )
    assert deserialize_bytes(request.raw_input_contents[0], 1, "B").tolist() == [b"\xff\x00"]
    assert deserialize_bytes(request.raw_input_contents[1], 1, "S").tolist() == [b"plain"]
    assert request.raw_input_contents[2] == np.array([4], dtype=np.int32).tobytes()
    assert options.content_type == "base64"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"inputs": [_input("A", "FP32", [1], [1], content_type="str")]},
            "input 'A': content_type 'str' needs datatype BYTES, got FP32",
        ),
        (
            {"inputs": [_input("A", "FP32", [1], [1], content_type="pd")]},
            "input 'A': content_type 'pd' applies only to the whole request",
        ),
        (
            {"inputs": [], "parameters": {"content_type": "nope"}},
            "unknown content_type 'nope' on the request; known: ",
        ),
        (
            {"inputs": [], "outputs": [{"name": "O", "parameters": {"content_type": "nope"}}]},
            "unknown content_type 'nope' on output 'O'; known: ",
        ),
        (
            {"inputs": [_input("A", "BYTES", [1], ["%%%"], content_type="base64")]},
            "input 'A': \"%%%\" is not valid base64",
        ),
        (
            {
                "parameters": {"content_type": "pd"},
                "inputs": [_input("A", "FP32", [2], [1, 2]), _input("B", "BYTES", [3], ["a", "b", "c"])],
            },
            "content_type 'pd': input 'B' has 3 rows but input 'A' has 2",
        ),
    ],
)
def test_content_type_errors(document: dict[str, Any], message: str) -> None:
    assert _error(document).startswith(message)


def test_pd_columns_decode_with_their_own_content_type() -> None:
    request, _ = _parse(
        {
            "parameters": {"content_type": "pd"},
            "inputs": [
                _input("age", "INT32", [2], [30, 40]),
                _input("meta", "BYTES", [2, 1], [[{"k": 1}], [None]], content_type="json"),
            ],
        }
    )
    assert request.raw_input_contents[0] == np.array([30, 40], dtype=np.int32).tobytes()
    assert deserialize_bytes(request.raw_input_contents[1], 2, "meta").tolist() == [b'[{"k":1}]', b"[null]"]
    assert parameters_to_json(request.parameters) == {"content_type": "pd"}


def test_output_content_types_encode_json_data_and_are_labelled() -> None:
    raw = serialize_bytes(np.array([b"\xff", b"{}"], dtype=object))
    response = _response(
        ("B", "BYTES", [2], raw), ("J", "BYTES", [2], raw[5:] + raw[5:]), ("N", "INT32", [3], _INT)
    )
    response.outputs[1].parameters["content_type"].string_param = "json"  # the model labels its own output
    options = OutputOptions(content_types={"B": "base64"}, explicit_outputs=True)
    outputs = orjson.loads(render_infer_response(response, options)[0])["outputs"]
    assert outputs[0] == {
        "name": "B",
        "datatype": "BYTES",
        "shape": [2],
        "parameters": {"content_type": "base64"},
        "data": ["/w==", "e30="],
    }
    assert outputs[1]["parameters"] == {"content_type": "json"} and outputs[1]["data"] == [{}, {}]
    assert "parameters" not in outputs[2] and outputs[2]["data"] == [1, -2, 3]


def test_the_request_level_content_type_applies_to_outputs_it_fits() -> None:
    raw = serialize_bytes(np.array([b"\x00\xff"], dtype=object))
    response = _response(("B", "BYTES", [1], raw), ("N", "INT32", [3], _INT))
    outputs = orjson.loads(render_infer_response(response, OutputOptions(content_type="base64"))[0])[
        "outputs"
    ]
    assert outputs[0]["parameters"] == {"content_type": "base64"} and outputs[0]["data"] == ["AP8="]
    assert "parameters" not in outputs[1]


def test_an_output_content_type_that_does_not_fit_its_datatype_is_refused() -> None:
    options = OutputOptions(content_types={"N": "str"}, explicit_outputs=True)
    with pytest.raises(
        InvalidRequest, match="^output 'N': content_type 'str' needs datatype BYTES, got INT32$"
    ):
        render_infer_response(_response(("N", "INT32", [3], _INT)), options)


# --- message_to_json ---------------------------------------------------------------------------------------


def test_message_to_json_renders_a_model_config_as_triton_does() -> None:
    config = mc.ModelConfig(
        name="simple",
        platform="pytorch_libtorch",
        max_batch_size=16,
        input=[mc.ModelInput(name="INPUT0", data_type=mc.TYPE_INT32, dims=[16])],
        output=[mc.ModelOutput(name="OUTPUT0", data_type=mc.TYPE_STRING, dims=[-1, 3])],
        instance_group=[mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=2)],
        dynamic_batching=mc.ModelDynamicBatching(max_queue_delay_microseconds=100),
        parameters={"k": mc.ModelParameter(string_value="v")},
    )
    assert message_to_json(config) == {
        "name": "simple",
        "platform": "pytorch_libtorch",
        "max_batch_size": 16,
        "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_STRING", "dims": [-1, 3]}],
        "instance_group": [{"kind": "KIND_CPU", "count": 2}],
        "dynamic_batching": {"max_queue_delay_microseconds": 100},
        "parameters": {"k": {"string_value": "v"}},
    }


def test_message_to_json_keeps_set_oneofs_stringifies_map_keys_and_encodes_bytes() -> None:
    response = pb.ModelInferResponse(
        parameters={"f": pb.InferParameter(bool_param=False), "z": pb.InferParameter(int64_param=0)},
        raw_output_contents=[b"\x00\xff"],
    )
    assert message_to_json(response) == {
        "parameters": {"f": {"bool_param": False}, "z": {"int64_param": 0}},
        "raw_output_contents": ["AP8="],
    }
    batching = mc.ModelDynamicBatching(priority_queue_policy={2: mc.ModelQueuePolicy(max_queue_size=5)})
    assert message_to_json(batching) == {"priority_queue_policy": {"2": {"max_queue_size": 5}}}
    assert orjson.loads(orjson.dumps(message_to_json(batching))) == message_to_json(batching)
