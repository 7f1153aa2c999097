"""Decoupled models: the config rules, splitting one execution's outputs into responses, response delays."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import model_config_pb2 as mc
from v2server.datatypes import DATATYPES
from v2server.decoupled import (
    MAX_RESPONSES,
    final_response,
    is_decoupled,
    response_delays,
    split_response,
    wants_empty_final,
)
from v2server.errors import InferenceFailed, InvalidRequest, ModelLoadError
from v2server.inference import encode_response
from v2server.repository.config import complete_config
from v2server.signature import Signature
from v2server.tensors import Tensor, output_array

_REPEAT = """
name: "m"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "IN" data_type: TYPE_INT32 dims: [ -1 ] },
         { name: "DELAY" data_type: TYPE_UINT32 dims: [ -1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] },
          { name: "TEXT" data_type: TYPE_STRING dims: [ 2 ] } ]
"""


def _config(extra: str = "", base: str = _REPEAT) -> mc.ModelConfig:
    return complete_config(text_format.Parse(base + extra, mc.ModelConfig()), "m", "<test>")


def test_a_decoupled_config_loads() -> None:
    config = _config('parameters { key: "response_delay_input" value: { string_value: "DELAY" } }')
    assert is_decoupled(config)
    assert not is_decoupled(mc.ModelConfig())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "max_batch_size: 4 dynamic_batching { }",
            "a decoupled model runs each request on its own here: remove dynamic_batching",
        ),
        (
            'parameters { key: "response_delay_input" value: { string_value: "NOPE" } }',
            "'NOPE' is not an input",
        ),
        ('parameters { key: "response_delay_input" value: { string_value: "IN" } }', None),
    ],
    ids=["dynamic-batching", "delay-input-unknown", "delay-input-ok"],
)
def test_decoupled_config_rules(extra: str, message: str | None) -> None:
    if message is None:
        _config(extra)
        return
    with pytest.raises(ModelLoadError, match=message):
        _config(extra)


def test_the_delay_parameter_needs_an_integer_input_and_a_decoupled_model() -> None:
    floats = _REPEAT.replace("TYPE_UINT32", "TYPE_FP32")
    with pytest.raises(ModelLoadError, match="must name an integer input .* 'DELAY' is a TYPE_FP32"):
        _config('parameters { key: "response_delay_input" value: { string_value: "DELAY" } }', floats)
    plain = _REPEAT.replace("model_transaction_policy { decoupled: true }", "")
    with pytest.raises(ModelLoadError, match="is for decoupled models only"):
        _config('parameters { key: "response_delay_input" value: { string_value: "DELAY" } }', plain)


def test_an_output_reshape_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="output 'OUT': a decoupled model's outputs cannot use reshape"):
        _config(
            "",
            _REPEAT.replace(
                'name: "OUT" data_type: TYPE_INT32 dims: [ 1 ]',
                'name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] reshape { shape: [ ] }',
            ),
        )


def _response(out: np.ndarray, text: np.ndarray) -> pb.ModelInferResponse:
    tensors = [Tensor("OUT", DATATYPES["INT32"], out), Tensor("TEXT", DATATYPES["BYTES"], text)]
    return encode_response(pb.ModelInferRequest(id="x"), "m", 1, tensors)


def test_split_gives_one_response_per_slice_bytes_included() -> None:
    text = np.array([[b"a", b"bb"], [b"", b"ccc"], [b"d", b"e"]], dtype=object)
    parts = split_response(
        _response(np.array([[5], [6], [7]], dtype=np.int32), text), Signature.from_config(_config())
    )
    assert len(parts) == 3
    for index, part in enumerate(parts):
        assert (part.model_name, part.model_version, part.id) == ("m", "1", "x")
        assert [list(o.shape) for o in part.outputs] == [[1], [2]]
        out = output_array("OUT", "INT32", [1], part.raw_output_contents[0])
        assert out.tolist() == [5 + index]
        assert output_array("TEXT", "BYTES", [2], part.raw_output_contents[1]).tolist() == list(text[index])


def test_split_of_zero_responses() -> None:
    response = _response(np.zeros((0, 1), dtype=np.int32), np.zeros((0, 2), dtype=object))
    assert split_response(response, Signature.from_config(_config())) == []


def test_split_refuses_more_than_the_cap() -> None:
    count = MAX_RESPONSES + 1
    response = _response(np.zeros((count, 1), dtype=np.int32), np.full((count, 2), b"", dtype=object))
    with pytest.raises(InferenceFailed, match=f"returned {count} responses"):
        split_response(response, Signature.from_config(_config()))


def _request(delays: list[int], datatype: str = "UINT32") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="IN", datatype="INT32", shape=[len(delays)])
    request.inputs.add(name="DELAY", datatype=datatype, shape=[len(delays)])
    request.raw_input_contents.append(np.zeros(len(delays), np.int32).tobytes())
    request.raw_input_contents.append(np.array(delays, DATATYPES[datatype].numpy).tobytes())
    return request


def test_response_delays_come_from_the_named_input() -> None:
    config = _config('parameters { key: "response_delay_input" value: { string_value: "DELAY" } }')
    assert response_delays(_request([0, 250, 1000]), config, 3) == [0.0, 0.25, 1.0]
    assert response_delays(_request([5, 5]), _config(), 2) == [0.0, 0.0]  # no parameter: no delays
    with pytest.raises(InvalidRequest, match="holds 2 delays for the 3 responses"):
        response_delays(_request([1, 2]), config, 3)
    with pytest.raises(InvalidRequest, match="add up to 61 s"):
        response_delays(_request([60_000, 1000]), config, 2)


def test_typed_contents_give_delays_too() -> None:
    config = _config('parameters { key: "response_delay_input" value: { string_value: "DELAY" } }')
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="IN", datatype="INT32", shape=[2]).contents.int_contents.extend([1, 2])
    request.inputs.add(name="DELAY", datatype="UINT32", shape=[2]).contents.uint_contents.extend([10, 20])
    assert response_delays(request, config, 2) == [0.01, 0.02]


def test_the_empty_final_response() -> None:
    request = pb.ModelInferRequest()
    assert not wants_empty_final(request)
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    assert wants_empty_final(request)
    final = final_response("m", "1", "x").infer_response
    assert (final.model_name, final.id, list(final.outputs)) == ("m", "x", [])
    assert final.parameters["triton_final_response"].bool_param is True
