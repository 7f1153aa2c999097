"""Triton's classification extension: top-k per batch row, its string format, labels, and what is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import model_config_pb2 as mc
from v2server.classification import classify, requested_classes
from v2server.datatypes import DATATYPES
from v2server.errors import InvalidRequest, ModelLoadError
from v2server.repository import complete_config, read_labels
from v2server.signature import Signature
from v2server.tensors import Tensor

Output = pb.ModelInferRequest.InferRequestedOutputTensor


def _tensor(values: object, datatype: str = "FP32") -> Tensor:
    return Tensor("OUT", DATATYPES[datatype], np.asarray(values, dtype=DATATYPES[datatype].numpy))


def _strings(tensor: Tensor) -> list[list[str]] | list[str]:
    assert tensor.datatype.name == "BYTES"
    return np.vectorize(lambda item: item.decode(), otypes=[object])(tensor.array).tolist()


def test_tritons_example_unbatched() -> None:
    # extension_classification.md: [1.1, 3.3, 0.5, 2.4], top 2 -> indices 1 and 3; values as std::to_string
    (result,) = classify([_tensor([1.1, 3.3, 0.5, 2.4])], {"OUT": 2}, {}, batched=False)
    assert result.shape == (2,)
    assert _strings(result) == ["3.300000:1", "2.400000:3"]


def test_each_batch_row_is_classified_alone_with_labels() -> None:
    rows = _tensor([[0.1, 0.9, 0.5], [7.0, -1.0, 7.0]])
    (result,) = classify([rows], {"OUT": 2}, {"OUT": ("cat", "dog", "")}, batched=True)
    assert result.shape == (2, 2)
    # an empty label line and an equal value: "value:index", equal values in index order
    assert _strings(result) == [["0.900000:1:dog", "0.500000:2"], ["7.000000:0:cat", "7.000000:2"]]


def test_the_count_is_bounded_by_the_row_and_other_outputs_pass_through() -> None:
    other = Tensor("OTHER", DATATYPES["INT32"], np.arange(3, dtype=np.int32))
    outputs = classify([_tensor([[1, 5, 10, 4]], "UINT8"), other], {"OUT": 9}, {"OUT": ("a",)}, batched=True)
    assert outputs[1] is other
    assert outputs[0].shape == (1, 4)
    assert _strings(outputs[0]) == [["10:2", "5:1", "4:3", "1:0:a"]]  # integers print plainly


@pytest.mark.parametrize("datatype", ["FP16", "FP64", "INT64", "UINT64", "INT8"])
def test_every_numeric_datatype(datatype: str) -> None:
    (result,) = classify([_tensor([[3, 1, 2]], datatype)], {"OUT": 1}, {}, batched=True)
    assert _strings(result)[0][0].split(":")[1] == "0"


def test_bf16_compares_as_floats() -> None:
    bits = (np.array([0.5, 2.0, -3.0], dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    (result,) = classify([Tensor("OUT", DATATYPES["BF16"], bits.reshape(1, 3))], {"OUT": 3}, {}, batched=True)
    assert _strings(result) == [["2.000000:1", "0.500000:0", "-3.000000:2"]]


def test_empty_rows_give_no_classes() -> None:
    (result,) = classify([_tensor(np.zeros((2, 0)))], {"OUT": 3}, {}, batched=True)
    assert result.shape == (2, 0)


SIGNATURE = Signature.from_config(
    mc.ModelConfig(
        name="m",
        max_batch_size=4,
        output=[
            mc.ModelOutput(name="P", data_type=mc.TYPE_FP32, dims=[3]),
            mc.ModelOutput(name="S", data_type=mc.TYPE_STRING, dims=[1]),
            mc.ModelOutput(name="B", data_type=mc.TYPE_BOOL, dims=[1]),
        ],
    )
)


def _asking(name: str, **value: object) -> pb.ModelInferRequest:
    output = Output(name=name)
    for kind, given in value.items():
        setattr(output.parameters["classification"], kind, given)
    return pb.ModelInferRequest(outputs=[output, Output(name="S")])


def test_requested_classes_reads_grpc_and_rest_integers() -> None:
    assert requested_classes(_asking("P", int64_param=3), SIGNATURE) == {"P": 3}
    assert requested_classes(_asking("P", uint64_param=2), SIGNATURE) == {"P": 2}
    assert requested_classes(pb.ModelInferRequest(outputs=[Output(name="P")]), SIGNATURE) == {}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("P", {"int64_param": 0}, "output 'P': 'classification' must be a positive integer (the number of classes to return), got 0"),
        ("P", {"int64_param": -2}, "got -2"),
        ("P", {"double_param": 2.5}, "got 2.5"),
        ("P", {"string_param": "3"}, "got '3'"),
        ("P", {"bool_param": True}, "got True"),
        ("S", {"int64_param": 1}, "output 'S': 'classification' needs a numeric output; 'S' is BYTES"),
        ("B", {"int64_param": 1}, "'B' is BOOL"),
    ],
    ids=["zero", "negative", "float", "string", "bool", "bytes-output", "bool-output"],
)
def test_requested_classes_refusals(name: str, value: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=None) as caught:
        requested_classes(_asking(name, **value), SIGNATURE)
    assert message in caught.value.message


# -- labels: read at load, inside the model's folder ------------------------------------------------------------


def _labelled(label_filename: str) -> mc.ModelConfig:
    return mc.ModelConfig(
        name="m",
        input=[mc.ModelInput(name="I", data_type=mc.TYPE_FP32, dims=[2])],
        output=[
            mc.ModelOutput(name="P", data_type=mc.TYPE_FP32, dims=[2], label_filename=label_filename),
            mc.ModelOutput(name="Q", data_type=mc.TYPE_FP32, dims=[2]),
        ],
    )


def test_read_labels_one_per_line(tmp_path: Path) -> None:
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "p.txt").write_bytes(b"negative\r\npositive\n")
    assert read_labels(_labelled("labels/p.txt"), tmp_path) == {"P": ("negative", "positive")}


def test_a_missing_label_file_fails_the_load(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="label_filename 'nope.txt' does not exist"):
        read_labels(_labelled("nope.txt"), tmp_path)


def test_a_label_file_linked_outside_the_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("x\n")
    model = tmp_path / "m"
    model.mkdir()
    (model / "labels.txt").symlink_to(tmp_path / "secret")
    with pytest.raises(ModelLoadError, match="leads outside the model's folder"):
        read_labels(_labelled("labels.txt"), model)


@pytest.mark.parametrize("path", ["../labels.txt", "/etc/passwd", "a//b", "a/../../b"])
def test_config_refuses_label_paths_that_leave_the_folder(path: str) -> None:
    with pytest.raises(ModelLoadError, match="label_filename"):
        complete_config(_labelled(path), "m", "m/config.pbtxt")
