"""A model's signature from its config and the name/datatype/shape checks every request passes."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from v2server._proto import model_config_pb2 as mc
from v2server.errors import InvalidRequest
from v2server.signature import Signature

CONFIG = """
name: "m"
max_batch_size: %d
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ -1, 2 ] },
  { name: "EXTRA" data_type: TYPE_STRING dims: [ 1 ] optional: true }
]
output [
  { name: "OUTPUT0" data_type: TYPE_BF16 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } }
]
"""


def _signature(max_batch_size: int = 8) -> Signature:
    return Signature.from_config(text_format.Parse(CONFIG % max_batch_size, mc.ModelConfig()))


def test_from_config() -> None:
    signature = _signature()
    assert (signature.model_name, signature.max_batch_size) == ("m", 8)
    assert list(signature.inputs) == ["INPUT0", "INPUT1", "EXTRA"]
    input0, extra, output = signature.inputs["INPUT0"], signature.inputs["EXTRA"], signature.outputs["OUTPUT0"]
    assert (input0.datatype.name, input0.dims, input0.reshape, input0.optional) == ("INT32", (4,), None, False)
    assert (extra.datatype.name, extra.optional) == ("BYTES", True)
    assert (output.datatype.name, output.dims, output.reshape, output.optional) == ("BF16", (4,), (2, 2), False)


@pytest.mark.parametrize(("max_batch_size", "shape"), [(8, [-1, -1, 2]), (0, [-1, 2])])
def test_full_shape_adds_the_batch_dimension_only_when_batching(max_batch_size: int, shape: list[int]) -> None:
    signature = _signature(max_batch_size)
    assert signature.full_shape(signature.inputs["INPUT1"]) == shape


@pytest.mark.parametrize(
    ("inputs", "batch_size"),
    [
        ([("INPUT0", "INT32", (3, 4)), ("INPUT1", "FP32", (3, 7, 2))], 3),
        ([("INPUT1", "FP32", (8, 1, 2)), ("INPUT0", "INT32", (8, 4)), ("EXTRA", "BYTES", (8, 1))], 8),
        ([("INPUT0", "INT32", (1, 4)), ("INPUT1", "FP32", (1, 0, 2))], 1),
    ],
    ids=["batch-3", "max-batch-any-order-with-optional", "-1-dim-may-be-0"],
)
def test_valid_inputs_return_the_batch_size(inputs: list[tuple[str, str, tuple[int, ...]]], batch_size: int) -> None:
    assert _signature().check_inputs(inputs) == batch_size


def test_without_batching_shapes_are_the_dims_and_batch_size_is_0() -> None:
    signature = _signature(0)
    assert signature.check_inputs([("INPUT0", "INT32", (4,)), ("INPUT1", "FP32", (5, 2))]) == 0
    with pytest.raises(InvalidRequest, match=r"unexpected shape for input 'INPUT0' for model 'm'. Expected \[4\], got \[1,4\]"):
        signature.check_inputs([("INPUT0", "INT32", (1, 4)), ("INPUT1", "FP32", (5, 2))])


GOOD1 = ("INPUT1", "FP32", (2, 3, 2))


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            [("INPUT0", "INT32", (2, 4)), GOOD1, ("INPUT9", "INT32", (2, 4))],
            "unexpected inference input 'INPUT9' for model 'm' (it takes ['INPUT0', 'INPUT1', 'EXTRA'])",
        ),
        ([GOOD1], (
            "expected number of inputs between 2 and 3 but got 1 inputs for model 'm'. Got input(s) ['INPUT1'], "
            "but missing required input(s) ['INPUT0']. Please provide all required input(s)."
        )),
        ([], (
            "expected number of inputs between 2 and 3 but got 0 inputs for model 'm'. Got input(s) [], "
            "but missing required input(s) ['INPUT0', 'INPUT1']. Please provide all required input(s)."
        )),
        (
            [("INPUT0", "INT32", (2, 4)), GOOD1, ("INPUT0", "INT32", (2, 4))],
            "input 'INPUT0' is given more than once",
        ),
        ([("INPUT0", "FP32", (2, 4)), GOOD1], "inference input 'INPUT0' data-type is 'FP32', but model 'm' expects 'INT32'"),
        ([("INPUT0", "", (2, 4)), GOOD1], "inference input 'INPUT0' data-type is '', but model 'm' expects 'INT32'"),
        (
            [("INPUT0", "INT32", (2, 5)), GOOD1],
            "unexpected shape for input 'INPUT0' for model 'm'. Expected [-1,4], got [2,5] (-1 is any size)",
        ),
        (
            [("INPUT0", "INT32", (2, 4, 1)), GOOD1],
            "unexpected shape for input 'INPUT0' for model 'm'. Expected [-1,4], got [2,4,1] (-1 is any size)",
        ),
        ([("INPUT0", "INT32", ()), GOOD1], "input 'INPUT0': shape [] has no batch dimension"),
        (
            [("INPUT0", "INT32", (0, 4)), GOOD1],
            "inference request batch-size must be <= 8 for 'm' (and at least 1; input 'INPUT0' has 0)",
        ),
        (
            [("INPUT0", "INT32", (9, 4)), GOOD1],
            "inference request batch-size must be <= 8 for 'm' (and at least 1; input 'INPUT0' has 9)",
        ),
        (
            [("INPUT0", "INT32", (3, 4)), GOOD1],
            "input 'INPUT1': batch size 2 differs from the other inputs' batch size 3",
        ),
        (
            [("INPUT0", "INT32", (2, 4)), ("INPUT1", "FP32", (2, -1, 2))],
            "input 'INPUT1': shape [2, -1, 2] has a negative dimension",
        ),
    ],
    ids=[
        "unknown", "missing", "none", "duplicate", "wrong-datatype", "no-datatype", "wrong-dim", "wrong-rank",
        "no-batch-dim", "batch-0", "batch-above-max", "differing-batch", "negative-dim",
    ],
)
def test_invalid_inputs(inputs: list[tuple[str, str, tuple[int, ...]]], message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _signature().check_inputs(inputs)
    assert caught.value.message == message
