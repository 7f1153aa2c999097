"""ModelInferRequest -> tensors -> ModelInferResponse: raw indexing, requested outputs, the response."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import model_config_pb2 as mc
from v2server.datatypes import DATATYPES
from v2server.errors import InvalidRequest, V2Error
from v2server.inference import check_contents, decode_inputs, encode_response, requested_outputs
from v2server.signature import Signature
from v2server.tensors import Tensor

Input = pb.ModelInferRequest.InferInputTensor
Output = pb.ModelInferRequest.InferRequestedOutputTensor

SIGNATURE = Signature.from_config(
    text_format.Parse(
        """
        name: "m"
        input [ { name: "A" data_type: TYPE_INT32 dims: [ 2 ] } ]
        output [
          { name: "X" data_type: TYPE_INT32 dims: [ 2 ] },
          { name: "Y" data_type: TYPE_STRING dims: [ 1 ] },
          { name: "Z" data_type: TYPE_FP32 dims: [ 1 ] }
        ]
        """,
        mc.ModelConfig(),
    )
)

INT_A = Input(name="A", datatype="INT32", shape=[2])
BYTES_B = Input(name="B", datatype="BYTES", shape=[1])
RAW_A = np.array([1, -2], dtype=np.int32).tobytes()
RAW_B = b"\x03\x00\x00\x00abc"


def test_raw_contents_are_indexed_over_the_inputs_in_order() -> None:
    request = pb.ModelInferRequest(inputs=[INT_A, BYTES_B], raw_input_contents=[RAW_A, RAW_B])
    a, b = decode_inputs(request)
    assert (a.name, a.datatype.name, a.array.tolist()) == ("A", "INT32", [1, -2])
    assert (b.name, b.datatype.name, b.array.tolist()) == ("B", "BYTES", [b"abc"])


def test_typed_contents() -> None:
    request = pb.ModelInferRequest(
        inputs=[
            Input(name="A", datatype="INT32", shape=[2], contents=pb.InferTensorContents(int_contents=[7, 8])),
            Input(name="B", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[b"x"])),
        ]
    )
    assert [t.array.tolist() for t in decode_inputs(request)] == [[7, 8], [b"x"]]


@pytest.mark.parametrize(
    ("inputs", "raw", "message"),
    [
        (
            [INT_A, Input(name="B", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[b"x"]))],
            [RAW_A],
            "input 'B': typed contents and raw_input_contents cannot be mixed in one request",
        ),
        ([INT_A, BYTES_B], [RAW_A], "input 'B': raw_input_contents has 1 entries, fewer than the inputs"),
        ([INT_A], [RAW_A, RAW_B], "raw_input_contents has 2 entries for 1 inputs"),
        ([INT_A, BYTES_B], [RAW_B, RAW_A], "input 'A': expected 8 bytes for shape [2] of INT32, got 7"),
    ],
    ids=["mixed", "fewer-raw", "more-raw", "raw-out-of-order"],
)
def test_raw_index_rules(inputs: list[Input], raw: list[bytes], message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_inputs(pb.ModelInferRequest(inputs=inputs, raw_input_contents=raw))
    assert caught.value.message == message


def test_shared_memory_inputs_take_no_raw_entry() -> None:
    """Raw entries are indexed over the inputs that carry data: one in shared memory has none (Triton's rule)."""
    shm = Input(name="A", datatype="INT32", shape=[2])
    shm.parameters["shared_memory_region"].string_param = "region0"
    request = pb.ModelInferRequest(inputs=[shm, BYTES_B], raw_input_contents=[RAW_B])
    assert check_contents(request).nbytes == len(RAW_B)
    from_region = Tensor("A", DATATYPES["INT32"], np.array([7, 8], dtype=np.int32))
    a, b = decode_inputs(request, None, {"A": from_region})
    assert a is from_region and b.array.tolist() == [b"abc"]
    with pytest.raises(V2Error, match="input 'A' names a shared-memory region that was not read"):
        decode_inputs(request, None, {})


@pytest.mark.parametrize(
    ("asked", "names"),
    [([], ["X", "Y", "Z"]), (["Z", "X"], ["Z", "X"]), (["Y"], ["Y"])],
    ids=["none-means-all-in-config-order", "order-as-asked", "one"],
)
def test_requested_outputs(asked: list[str], names: list[str]) -> None:
    request = pb.ModelInferRequest(outputs=[Output(name=name) for name in asked])
    assert requested_outputs(request, SIGNATURE) == names


def _output(name: str, parameter: str | None = None) -> Output:
    output = Output(name=name)
    if parameter is not None:
        output.parameters[parameter].int64_param = 2
    return output


@pytest.mark.parametrize(
    ("outputs", "error", "message"),
    [
        ([_output("X"), _output("W")], InvalidRequest, "unexpected inference output 'W' for model 'm' (it has ['X', 'Y', 'Z'])"),
        ([_output("X"), _output("Z"), _output("X")], InvalidRequest, "output 'X' is requested more than once"),
    ],
    ids=["unknown", "duplicate"],
)
def test_refused_outputs(outputs: list[Output], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        requested_outputs(pb.ModelInferRequest(outputs=outputs), SIGNATURE)
    assert str(caught.value) == message


def test_encode_response_has_one_raw_entry_per_output_in_order() -> None:
    words = np.empty(2, dtype=object)
    words[:] = [b"hi", b""]
    outputs = [
        Tensor("Z", DATATYPES["FP32"], np.array([[0.5]], dtype=np.float32)),
        Tensor("Y", DATATYPES["BYTES"], words.reshape(2, 1)),
        Tensor("X", DATATYPES["INT32"], np.array([[1, 2]], dtype=np.int32)),
    ]
    response = encode_response(pb.ModelInferRequest(id="req-7"), "m", 3, outputs)
    assert (response.model_name, response.model_version, response.id) == ("m", "3", "req-7")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("Z", "FP32", [1, 1]),
        ("Y", "BYTES", [2, 1]),
        ("X", "INT32", [1, 2]),
    ]
    assert list(response.raw_output_contents) == [
        np.float32(0.5).tobytes(),
        b"\x02\x00\x00\x00hi\x00\x00\x00\x00",
        np.array([1, 2], dtype=np.int32).tobytes(),
    ]
    assert not any(o.HasField("contents") for o in response.outputs)
