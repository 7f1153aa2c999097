"""Integral floats for integer datatypes over REST (issue 15): ``open-inference-openapi`` writes INT32 as ``0.0``.

Every style takes ``3.0`` for an integer and still refuses ``3.5``, booleans and values out of range with the
message an integer would get; the identity test models echo what the model received.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import RunningServer, http_call


def _post(server: RunningServer, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    """POST a JSON body; the status and the parsed answer."""
    status, _, data = http_call(server, "POST", path, json.dumps(body).encode())
    return status, json.loads(data)


def _v2(datatype: str, data: list[Any]) -> dict[str, Any]:
    return {"inputs": [{"name": "INPUT0", "datatype": datatype, "shape": [1, len(data)], "data": data}]}


@pytest.mark.parametrize(
    ("datatype", "sent", "received"),
    [
        ("INT32", [0.0, 1.0, -0.0, -7.0], [0, 1, 0, -7]),
        ("INT8", [127.0, -128.0, 3], [127, -128, 3]),
        ("UINT64", [18446744073709551615, 2.0], [18446744073709551615, 2]),
        ("INT64", [9007199254740992.0, -1.0], [9007199254740992, -1]),
    ],
)
def test_every_style_takes_integral_floats_for_integer_datatypes(
    server: RunningServer, datatype: str, sent: list[Any], received: list[int]
) -> None:
    model = f"identity_{datatype.lower()}"
    status, answer = _post(server, f"/v2/models/{model}/infer", _v2(datatype, sent))
    assert status == 200, answer
    output = answer["outputs"][0]
    assert output["datatype"] == datatype and output["data"] == received
    assert all(type(value) is int for value in output["data"])
    assert _post(server, f"/v1/{model}/latest", {"data": sent}) == (200, {"data": received})
    assert _post(server, f"/models/{model}/predict", {"INPUT0": sent}) == (200, {"OUTPUT0": received})


def test_the_simple_model_adds_integral_floats_as_integers(server: RunningServer) -> None:
    body = {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [float(i) for i in range(16)]},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1.0] * 16},
        ]
    }
    status, answer = _post(server, "/v2/models/simple/infer", body)
    assert status == 200, answer
    sums = next(output for output in answer["outputs"] if output["name"] == "OUTPUT0")
    assert sums["data"] == list(range(1, 17))


@pytest.mark.parametrize(
    ("model", "value", "message"),
    [
        ("identity_int32", 3.5, "input 'INPUT0': data must be integers for INT32, got number 3.5"),
        ("identity_int32", True, "input 'INPUT0': data must be integers for INT32, got boolean true"),
        ("identity_int8", 300.0, "input 'INPUT0': value 300 is out of range for INT8"),
        ("identity_uint8", -1.0, "input 'INPUT0': value -1 is out of range for UINT8"),
        (
            "identity_int64",
            9007199254740994.0,
            "input 'INPUT0': data must be integers for INT64, got number 9007199254740994.0",
        ),
    ],
)
def test_other_floats_get_the_same_400_from_v2_v1_and_predict(
    server: RunningServer, model: str, value: Any, message: str
) -> None:
    datatype = model.removeprefix("identity_").upper()
    assert _post(server, f"/v2/models/{model}/infer", _v2(datatype, [1.0, value])) == (
        400,
        {"error": message},
    )
    assert _post(server, f"/v1/{model}/latest", {"data": [1.0, value]}) == (400, {"error": message})
    assert _post(server, f"/models/{model}/predict", {"INPUT0": [1.0, value]}) == (400, {"detail": message})
