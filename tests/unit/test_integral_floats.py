"""Integral floats for integer datatypes through the whole ``/v2`` JSON parser and the simple styles' codec.

test_content_types.py checks the rule on the codec; here the same bodies go through ``parse_infer_request``,
small (parsed by orjson at once) and large (a flat array converted a piece at a time), and through the
``/predict`` plan, so every way JSON numbers reach a tensor takes ``3.0`` and refuses ``3.5`` alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from v2server._proto import model_config_pb2 as mc
from v2server.errors import InvalidRequest
from v2server.rest_api.json_codec import parse_infer_request
from v2server.rest_api.simple_codec import SimpleModel, predict_plan

LARGE = 200_000  # above the size at which a flat array is converted in pieces


def _body(datatype: str, data: list[Any]) -> bytes:
    return orjson.dumps({"inputs": [{"name": "A", "datatype": datatype, "shape": [len(data)], "data": data}]})


@pytest.mark.parametrize("count", [4, LARGE], ids=["small", "large"])
def test_v2_takes_integral_floats_for_int32(count: int) -> None:
    data = [float(i % 1000 - 500) for i in range(count)]
    request, _ = parse_infer_request("m", "", _body("INT32", data), None)
    values = np.frombuffer(request.raw_input_contents[0], dtype=np.int32)
    assert values.tolist() == [int(x) for x in data]


@pytest.mark.parametrize("count", [4, LARGE], ids=["small", "large"])
@pytest.mark.parametrize(
    ("datatype", "last", "message"),
    [
        ("INT32", 3.5, "input 'A': data must be integers for INT32, got number 3.5"),
        ("INT32", True, "input 'A': data must be integers for INT32, got boolean true"),
        ("INT8", 300.0, "input 'A': value 300 is out of range for INT8"),
        (
            "UINT64",
            18446744073709551616.0,
            "input 'A': data must be integers for UINT64, got number 1.8446744",
        ),
    ],
)
def test_v2_refuses_other_floats_with_the_message_of_a_small_body(
    count: int, datatype: str, last: Any, message: str
) -> None:
    data: list[Any] = [1.0] * (count - 1) + [last]
    with pytest.raises(InvalidRequest) as caught:
        parse_infer_request("m", "", _body(datatype, data), None)
    assert caught.value.message.startswith(message)


def _int32_model() -> SimpleModel:
    config = mc.ModelConfig(name="m", max_batch_size=0)
    config.input.add(name="x", data_type=mc.TYPE_INT32, dims=[-1])
    config.output.add(name="y", data_type=mc.TYPE_INT32, dims=[-1])
    return SimpleModel.from_config(config)


def test_predict_takes_integral_floats_and_refuses_the_rest() -> None:
    plan = predict_plan(_int32_model(), "", b'{"x": [1.0, -0.0, 7]}')
    (request,) = plan.requests
    assert np.frombuffer(request.raw_input_contents[0], dtype=np.int32).tolist() == [1, 0, 7]
    with pytest.raises(InvalidRequest) as caught:
        predict_plan(_int32_model(), "", b'{"x": [1.0, 2.5]}')
    assert caught.value.message == "input 'x': data must be integers for INT32, got number 2.5"
