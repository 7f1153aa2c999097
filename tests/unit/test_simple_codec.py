"""simple_codec: /v1 and /predict bodies <-> ModelInferRequest/Response, without a server."""

from __future__ import annotations

import re

import numpy as np
import orjson
import pytest
from google.protobuf import text_format

from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import model_config_pb2 as mc
from v2server.datatypes import datatype
from v2server.errors import InvalidRequest, PayloadTooLarge
from v2server.rest_api.json_codec import parse_infer_request
from v2server.rest_api.simple_codec import (
    SimpleModel,
    is_batch,
    parse_alias_version,
    parse_batch_flag,
    parse_timeout,
    predict_answer,
    predict_plan,
    selector_version,
    v1_answer,
    v1_options,
    v1_plan,
)
from v2server.tensors import Tensor, to_raw


def _model(text: str) -> SimpleModel:
    return SimpleModel.from_config(text_format.Parse(text, mc.ModelConfig()))


ADDER = _model(
    'name: "adder" max_batch_size: 0 '
    + " ".join(f'input {{ name: "{n}" data_type: TYPE_INT64 dims: [1] }}' for n in "abc")
    + ' output { name: "OUTPUT__0" data_type: TYPE_INT64 dims: [1] }'
)
DICT = _model(
    'name: "d" max_batch_size: 0 input { name: "d" data_type: TYPE_STRING dims: [1] } '
    'output { name: "OUTPUT__0" data_type: TYPE_INT64 dims: [1] }'
)
VECTOR = _model(
    'name: "v" max_batch_size: 2 input { name: "x" data_type: TYPE_FP32 dims: [-1] } '
    'output { name: "y" data_type: TYPE_FP32 dims: [2] }'
)


def _body(data: object) -> bytes:
    return orjson.dumps({"data": data})


def _response(request: pb.ModelInferRequest, name: str, array: np.ndarray, dt: str) -> pb.ModelInferResponse:
    tensor = Tensor(name, datatype(dt), array)
    return pb.ModelInferResponse(
        model_name=request.model_name,
        outputs=[pb.ModelInferResponse.InferOutputTensor(name=name, datatype=dt, shape=array.shape)],
        raw_output_contents=[to_raw(tensor)],
    )


def test_small_parsers() -> None:
    assert selector_version("latest") == "" and selector_version("3") == "3" and selector_version("prod") is None
    assert parse_batch_flag(None) is None and parse_batch_flag("TRUE") and parse_batch_flag("0") is False
    assert parse_timeout(None) is None and parse_timeout("0.5") == 0.5
    for bad in ("0", "-1", "nan", "x"):
        with pytest.raises(InvalidRequest):
            parse_timeout(bad)
    assert parse_alias_version(b'{"version": 3}') == 3 and parse_alias_version(b'{"version": "4"}') == 4
    with pytest.raises(InvalidRequest):
        parse_alias_version(b'{"version": 0}')


def test_batch_rule() -> None:
    assert not is_batch(ADDER, [3, 4, 5])
    assert is_batch(ADDER, [[1, 3, 4, 5], [2, 6, 7, 8]])
    assert is_batch(ADDER, [[1, 3, 4, 5], [2, 6, 7, 8], [3, 1, 1, 1]])  # three rows, three arguments: still rows
    assert not is_batch(DICT, {"value": 10}) and is_batch(DICT, [[1, {"value": 10}]])
    assert not is_batch(VECTOR, [1.0, 2.0]) and is_batch(VECTOR, [["a", [1.0, 2.0]]])
    assert not is_batch(VECTOR, [[True, [1.0]]])  # a boolean is no ID


def test_single_request() -> None:
    plan = v1_plan(ADDER, "", _body([3, 4, 5]))
    (request,) = plan.requests
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [
        ("a", "INT64", [1]), ("b", "INT64", [1]), ("c", "INT64", [1])
    ]
    assert np.frombuffer(request.raw_input_contents[2], np.int64).tolist() == [5]
    answer = v1_answer(plan, [_response(request, "OUTPUT__0", np.array([12]), "INT64")])
    assert answer == {"data": 12}


def test_dict_argument_is_json_text() -> None:
    (request,) = v1_plan(DICT, "1", _body({"value": 10})).requests
    assert request.model_version == "1" and request.inputs[0].datatype == "BYTES"
    assert request.raw_input_contents[0][4:] == b'{"value":10}'


def test_batch_on_a_batching_model_is_stacked_in_chunks() -> None:
    plan = v1_plan(VECTOR, "", _body([[3, [1, 2]], ["z", [3, 4]], [1, [5, 6]]]))
    assert plan.rows_per_request == (2, 1)
    assert list(plan.requests[0].inputs[0].shape) == [2, 2]
    responses = [
        _response(r, "y", np.arange(n * 2, dtype=np.float32).reshape(n, 2) + 10 * i, "FP32")
        for i, (r, n) in enumerate(zip(plan.requests, plan.rows_per_request, strict=True))
    ]
    assert v1_answer(plan, responses) == {"data": [[1, [10.0, 11.0]], [3, [0.0, 1.0]], ["z", [2.0, 3.0]]]}


def test_a_batch_over_max_rows_is_refused_before_its_rows_are_read() -> None:
    rows: list[list[object]] = [[i, 1, 2, 3] for i in range(11)]
    rows[4][2] = "bad"  # never read
    for batch in (None, True):
        with pytest.raises(PayloadTooLarge) as caught:
            v1_plan(ADDER, "", _body(rows), batch, max_rows=10)
        assert caught.value.message == (
            "a batch of 11 rows exceeds the limit of 10 rows per request (--max-batch-rows); send it as several requests"
        )
    assert len(v1_plan(ADDER, "", _body([[i, 1, 2, 3] for i in range(10)]), max_rows=10).requests) == 10
    # data whose first element is no row is a single request, whatever its length
    with pytest.raises(InvalidRequest, match="takes 3 arguments"):
        v1_plan(ADDER, "", _body(list(range(11))), max_rows=10)
    with pytest.raises(PayloadTooLarge, match="a batch of 11 rows exceeds the limit of 10 rows"):
        predict_plan(VECTOR, "", orjson.dumps({"x": [[1.0, "bad"]] * 11}), max_rows=10)
    (request,) = predict_plan(VECTOR, "", orjson.dumps({"x": [1.0] * 11}), max_rows=10).requests  # one row of 11
    assert list(request.inputs[0].shape) == [1, 11]


def test_rows_convert_as_one_array_or_row_by_row_alike() -> None:
    # one array per input for all rows; where the rows differ in form, one array per row: the same requests
    uniform = v1_plan(ADDER, "", _body([[1, 3, 4, 5], [2, 6, 7, 8]]))
    mixed = v1_plan(ADDER, "", _body([[1, 3, [4], 5], [2, [6], 7, 8]]))
    assert uniform.requests == mixed.requests
    assert [list(r.inputs[1].shape) for r in uniform.requests] == [[1], [1]]
    stacked = v1_plan(VECTOR, "", _body([[1, [1.0, 2.0]], [2, [3.0, 4.0]], [3, [5.0, 6.0]]]))
    assert [list(r.inputs[0].shape) for r in stacked.requests] == [[2, 2], [1, 2]]
    assert np.frombuffer(stacked.requests[1].raw_input_contents[0], np.float32).tolist() == [5.0, 6.0]


def test_batch_errors() -> None:
    with pytest.raises(InvalidRequest, match="batch ID 1.0 is used more than once"):
        v1_plan(ADDER, "", _body([[1, 1, 1, 1], [1.0, 2, 2, 2]]))
    with pytest.raises(InvalidRequest, match="different shapes"):
        v1_plan(VECTOR, "", _body([[1, [1.0]], [2, [1.0, 2.0]]]))
    with pytest.raises(InvalidRequest, match="^input 'b': data must be integers for INT64, got string \"two\"$"):
        v1_plan(ADDER, "", _body([1, "two", 3]))
    with pytest.raises(InvalidRequest, match="^input 'b': value 9223372036854775808 is out of range for INT64$"):
        v1_plan(ADDER, "", _body([1, 2**63, 3]))
    with pytest.raises(InvalidRequest, match="^row 2, input 'c': value 9223372036854775808 is out of range"):
        v1_plan(ADDER, "", _body([[1, 1, 1, 1], [2, 1, 1, 2**63]]))
    with pytest.raises(InvalidRequest, match="^row \"x\", argument 'x': expected lists nested 1 deep"):
        v1_plan(VECTOR, "", _body([["x", [[1.0]]]]), batch=True)
    with pytest.raises(InvalidRequest, match="takes 3 arguments"):
        v1_plan(ADDER, "", _body([1, 2]), batch=False)
    with pytest.raises(InvalidRequest, match="non-empty list of rows"):
        v1_plan(ADDER, "", _body(5), batch=True)
    with pytest.raises(InvalidRequest, match="'data'"):
        v1_plan(ADDER, "", b"[1]")


def test_predict() -> None:
    plan = predict_plan(VECTOR, "", b'{"x": [1, 2, 3]}')
    assert not plan.batch and list(plan.requests[0].inputs[0].shape) == [1, 3]
    response = _response(plan.requests[0], "y", np.array([[0.5, 1.5]], np.float32), "FP32")
    assert predict_answer(plan, [response]) == {"y": [0.5, 1.5]}
    plan = predict_plan(VECTOR, "", b'{"x": [[1, 2], [3, 4]]}')
    assert plan.batch and list(plan.requests[0].inputs[0].shape) == [2, 2]
    response = _response(plan.requests[0], "y", np.zeros((2, 2), np.float32), "FP32")
    assert predict_answer(plan, [response]) == {"y": [[0.0, 0.0], [0.0, 0.0]]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{}", "Missing required input: 'x'"),
        (b'{"x": 1}', "Invalid input type for 'x': expected array"),
        (b'{"x": [1], "z": 2}', "Unknown input: 'z'"),
        (b'{"x": [[[1]]]}', "Invalid input shape for 'x'"),
    ],
)
def test_predict_errors(body: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        predict_plan(VECTOR, "", body)
    assert caught.value.message.startswith(message)


# --- one conversion path: /v2 JSON, /v1 and /predict agree -------------------------------------------------


def _one_input(dt: str) -> SimpleModel:
    return _model(
        f'name: "m" max_batch_size: 0 input {{ name: "x" data_type: {datatype(dt).config_type} dims: [-1] }} '
        f'output {{ name: "y" data_type: {datatype(dt).config_type} dims: [-1] }}'
    )


def _three_styles(dt: str, values: list[object]) -> dict[str, pb.ModelInferRequest | str]:
    """The request (or the error message) each style makes of the same values for input 'x' of ``dt``."""
    model = _one_input(dt)
    v2 = {"inputs": [{"name": "x", "datatype": dt, "shape": [len(values)], "data": values}]}
    builders = {
        "/v2": lambda: parse_infer_request("m", "", orjson.dumps(v2), None)[0],
        "/v1": lambda: v1_plan(model, "", _body(values), batch=False).requests[0],
        "/predict": lambda: predict_plan(model, "", orjson.dumps({"x": values})).requests[0],
    }
    results: dict[str, pb.ModelInferRequest | str] = {}
    for style, build in builders.items():
        try:
            results[style] = build()
        except InvalidRequest as exc:
            results[style] = exc.message
    return results


@pytest.mark.parametrize(
    ("dt", "values", "message"),
    [
        ("FP16", [1.0, 70000.0], "input 'x': a value is out of range for FP16"),
        ("FP32", [1.0, 1e39], "input 'x': a value is out of range for FP32"),
        ("BF16", [1.0, 3.4e38], "input 'x': a value is out of range for BF16"),
        ("INT8", [1, 300], "input 'x': value 300 is out of range for INT8"),
        ("UINT8", [1, -1], "input 'x': value -1 is out of range for UINT8"),
        ("INT64", [1, 2**63], "input 'x': value 9223372036854775808 is out of range for INT64"),
        ("INT32", [1, True], "input 'x': data must be integers for INT32, got boolean true"),
        ("INT32", [1, 1.5], "input 'x': data must be integers for INT32, got number 1.5"),
        ("FP32", [1.0, False], "input 'x': data must be numbers for FP32, got boolean false"),
        ("FP32", [1.0, "2"], "input 'x': data must be numbers for FP32, got string \"2\""),
        ("BOOL", [True, 1], "input 'x': data must be booleans for BOOL, got integer 1"),
    ],
)
def test_a_bad_value_gets_the_same_error_in_every_style(dt: str, values: list[object], message: str) -> None:
    assert _three_styles(dt, values) == {"/v2": message, "/v1": message, "/predict": message}


@pytest.mark.parametrize(
    ("dt", "values"),
    [
        ("BOOL", [True, False]),
        ("UINT64", [0, 2**64 - 1]),
        ("INT8", [-128, 127]),
        ("INT64", [-(2**63), 2**63 - 1]),
        ("FP16", [-65504, 0.1]),
        ("FP32", [3.4e38, 1]),
        ("FP64", [1e300, -2]),
        ("BF16", [1 + 3 * 2**-8, 3.3e38]),
        ("BYTES", ["é", ""]),
    ],
)
def test_good_values_become_the_same_raw_bytes_in_every_style(dt: str, values: list[object]) -> None:
    requests = _three_styles(dt, values)
    raws = {style: r.raw_input_contents[0] for style, r in requests.items() if isinstance(r, pb.ModelInferRequest)}
    assert len(raws) == 3 and raws["/v1"] == raws["/v2"] == raws["/predict"]


def test_bf16_and_fp16_outputs_read_back_as_numbers() -> None:
    plan = predict_plan(_one_input("BF16"), "", b'{"x": [1.5]}')
    bits = plan.requests[0].raw_input_contents[0]
    response = pb.ModelInferResponse(
        outputs=[pb.ModelInferResponse.InferOutputTensor(name="y", datatype="BF16", shape=[2])],
        raw_output_contents=[bits * 2],
    )
    assert predict_answer(plan, [response]) == {"y": [1.5, 1.5]}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"response_format": "links", "response_webhook": "https://example.com/h"},
         "'response_format' applies to synchronous requests"),
        ({"response_format": "zip"}, "'response_format' must be one of ['links']"),
        ({"response_webhook_ignore_timeout": True}, "applies to asynchronous requests"),
        ({"response_timeout": 0}, "'response_timeout' must be a positive number"),
    ],
)
def test_v1_options_refuse_what_cannot_work_together(document: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        v1_options(document)


def test_v1_options_read_the_async_and_links_fields() -> None:
    options = v1_options({"response_webhook": "https://example.com/h", "response_timeout": 2})
    assert (options.response_webhook, options.response_timeout, options.response_format) == (
        "https://example.com/h", 2.0, None,
    )
    assert v1_options({"response_format": "links"}).response_format == "links"
