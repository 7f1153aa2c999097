"""v2server.wire: large requests split without protobuf's copies, answers serialised from the model's arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf.message import DecodeError

from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import model_config_pb2 as mc
from v2server.backends.torchscript.instance import TorchScriptInstance
from v2server.datatypes import DATATYPES
from v2server.inference import encode_response
from v2server.signature import Signature
from v2server.tensors import Tensor
from v2server.wire import SPLIT_ABOVE_BYTES, SPLIT_MAX_FIELDS, InferAnswer, SplitRequest, _encode_varint, split_infer_request


def _large_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="identity_fp32", model_version="1", id="r1")
    request.parameters["priority"].uint64_param = 3
    for index, count in enumerate((SPLIT_ABOVE_BYTES // 4 + 5, 7)):
        request.inputs.add(name=f"INPUT{index}", datatype="FP32", shape=[count])
        request.raw_input_contents.append(np.arange(count, dtype=np.float32).tobytes())
    request.outputs.add(name="OUTPUT0")
    return request


def test_a_large_request_keeps_its_raw_entries_as_views_of_the_wire_bytes() -> None:
    request = _large_request()
    data = request.SerializeToString()
    split = split_infer_request(data)
    assert isinstance(split, SplitRequest)
    assert all(isinstance(entry, memoryview) and entry.obj is data for entry in split.raw)
    assert [bytes(entry) for entry in split.raw] == list(request.raw_input_contents)
    whole = pb.ModelInferRequest()
    whole.CopyFrom(split.message)
    assert not whole.raw_input_contents
    whole.raw_input_contents.extend(bytes(entry) for entry in split.raw)
    assert whole == request


def test_fields_in_any_order_and_small_requests_parse_as_protobuf_does() -> None:
    request = _large_request()
    raw = list(request.raw_input_contents)
    request.ClearField("raw_input_contents")
    head = request.SerializeToString()
    tag = b"\x3a"  # field 7, length-delimited
    entries = [tag + _encode_varint(len(entry)) + entry for entry in raw]
    data = entries[0] + head + entries[1]  # a raw entry before the other fields, one after
    split = split_infer_request(data)
    assert isinstance(split, SplitRequest)
    assert [bytes(entry) for entry in split.raw] == raw and split.message.id == "r1"
    small = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"\0" * 8]).SerializeToString()
    assert split_infer_request(small) == pb.ModelInferRequest.FromString(small)


def test_a_request_of_many_tiny_fields_is_left_to_protobuf() -> None:
    """The walk is Python on the event loop: past SPLIT_MAX_FIELDS fields protobuf's C parser takes over."""
    request = _large_request()
    for index in range(SPLIT_MAX_FIELDS):
        request.parameters[f"p{index}"].bool_param = True  # each map entry is a top-level field
    data = request.SerializeToString()
    parsed = split_infer_request(data)
    assert isinstance(parsed, pb.ModelInferRequest) and parsed == request


@pytest.mark.parametrize("damage", ["truncate", "group", "varint"])
def test_malformed_bytes_raise_what_protobuf_raises(damage: str) -> None:
    data = _large_request().SerializeToString()
    if damage == "truncate":
        data = data[:-3]
    elif damage == "group":
        data = b"\x0b" + data  # field 1 as a start-group: not ours to parse
    else:
        data = b"\x0a" + b"\xff" * 11 + data
    with pytest.raises(DecodeError):
        split_infer_request(data)


def test_an_answer_serialises_to_the_message_protobuf_would_write() -> None:
    outputs = [
        Tensor("OUTPUT0", DATATYPES["FP32"], np.arange(12, dtype=np.float32).reshape(3, 4).T),  # not row-major
        Tensor("OUTPUT1", DATATYPES["BYTES"], np.array([b"a", b"bc"], dtype=object)),
        Tensor("OUTPUT2", DATATYPES["BOOL"], np.array([True, False])),
        Tensor("OUTPUT3", DATATYPES["INT64"], np.zeros((0, 2), dtype=np.int64)),
    ]
    answer = encode_response(pb.ModelInferRequest(id="x"), "m", 2, outputs)
    assert isinstance(answer, InferAnswer)
    assert [len(raw) for raw in answer.raw_output_contents] == [48, 11, 2, 0]  # len is bytes, not elements
    parsed = pb.ModelInferResponse.FromString(answer.SerializeToString())
    assert parsed == answer.to_message()
    assert parsed.id == "x" and parsed.model_version == "2" and list(parsed.outputs[0].shape) == [4, 3]
    assert np.array_equal(np.frombuffer(parsed.raw_output_contents[0], np.float32).reshape(4, 3), outputs[0].array)
    assert answer.outputs[1].name == "OUTPUT1"  # reads like the message


class _Stateful(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("total", torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.total += x
        return self.total


def test_an_output_that_is_the_models_own_state_is_copied_not_viewed() -> None:
    model_config = mc.ModelConfig(name="acc", max_batch_size=0)
    model_config.input.add(name="INPUT__0", data_type=mc.TYPE_FP32, dims=[2])
    model_config.output.add(name="OUTPUT__0", data_type=mc.TYPE_FP32, dims=[2])
    instance = TorchScriptInstance(
        torch.jit.script(_Stateful()), torch.device("cpu"), Signature.from_config(model_config), "acc"
    )
    try:
        first, _ = instance._run([Tensor("INPUT__0", DATATYPES["FP32"], np.ones(2, np.float32))], ["OUTPUT__0"], 0)
        answer = encode_response(pb.ModelInferRequest(), "acc", 1, first)
        instance._run([Tensor("INPUT__0", DATATYPES["FP32"], np.ones(2, np.float32))], ["OUTPUT__0"], 0)
        assert np.frombuffer(answer.SerializeToString()[-8:], np.float32).tolist() == [1.0, 1.0]
    finally:
        instance.close()

