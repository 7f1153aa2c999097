"""Pure batching functions: which requests may share a batch, joining their inputs and cutting outputs back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from v2server.batching import batch_key, merge, split
from v2server.datatypes import DATATYPES
from v2server.errors import InferenceFailed
from v2server.tensors import Tensor


def _fp32(name: str, rows: int, cols: int = 2, start: float = 0.0) -> Tensor:
    array = np.arange(start, start + rows * cols, dtype=np.float32).reshape(rows, cols)
    return Tensor(name, DATATYPES["FP32"], array)


def _bytes(name: str, items: list[bytes]) -> Tensor:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return Tensor(name, DATATYPES["BYTES"], array.reshape(len(items), 1))


def _bf16(name: str, values: list[float]) -> Tensor:
    storage = torch.tensor(values, dtype=torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return Tensor(name, DATATYPES["BF16"], storage.reshape(len(values), 1))


def test_key_equal_for_same_names_types_and_inner_dims_whatever_the_batch_size() -> None:
    one = batch_key([_fp32("A", 1), _fp32("B", 1, 3)], ["OUT"])
    four = batch_key([_fp32("A", 4), _fp32("B", 4, 3)], ["OUT"])
    assert one == four
    assert hash(one) == hash(four)


def test_key_ignores_input_order() -> None:
    assert batch_key([_fp32("A", 1), _fp32("B", 2)], ["OUT"]) == batch_key(
        [_fp32("B", 1), _fp32("A", 3)], ["OUT"]
    )


@pytest.mark.parametrize(
    ("other_inputs", "other_outputs"),
    [
        pytest.param([_fp32("A", 1, cols=3)], ["OUT"], id="inner-dims"),
        pytest.param([Tensor("A", DATATYPES["FP64"], np.zeros((1, 2)))], ["OUT"], id="datatype"),
        pytest.param([_fp32("X", 1)], ["OUT"], id="input-name"),
        pytest.param([_fp32("A", 1), _fp32("B", 1)], ["OUT"], id="extra-input"),
        pytest.param([_fp32("A", 1)], ["OTHER"], id="output-name"),
        pytest.param([_fp32("A", 1)], ["OUT", "OTHER"], id="extra-output"),
    ],
)
def test_key_differs(other_inputs: list[Tensor], other_outputs: list[str]) -> None:
    assert batch_key([_fp32("A", 1)], ["OUT"]) != batch_key(other_inputs, other_outputs)


def test_key_depends_on_output_order() -> None:
    assert batch_key([_fp32("A", 1)], ["X", "Y"]) != batch_key([_fp32("A", 1)], ["Y", "X"])


def test_merge_concatenates_along_the_batch_dimension_in_the_first_requests_order() -> None:
    first = [_fp32("A", 1, start=0), _fp32("B", 1, start=100)]
    second = [_fp32("B", 2, start=200), _fp32("A", 2, start=10)]  # matched by name, not position
    merged = merge([first, second])
    assert [tensor.name for tensor in merged] == ["A", "B"]
    assert merged[0].datatype is DATATYPES["FP32"]
    np.testing.assert_array_equal(merged[0].array, [[0, 1], [10, 11], [12, 13]])
    np.testing.assert_array_equal(merged[1].array, [[100, 101], [200, 201], [202, 203]])


def test_merge_of_one_request_is_that_request() -> None:
    tensor = _fp32("A", 3)
    (merged,) = merge([[tensor]])
    assert merged is tensor


def test_merge_bytes() -> None:
    merged = merge([[_bytes("S", [b"a", b""])], [_bytes("S", [b"\x00\xff"])]])
    assert merged[0].array.dtype == object
    assert merged[0].shape == (3, 1)
    assert merged[0].array.reshape(-1).tolist() == [b"a", b"", b"\x00\xff"]


def test_merge_bf16_storage() -> None:
    merged = merge([[_bf16("H", [1.5, -2.0])], [_bf16("H", [3.140625])]])
    assert merged[0].array.dtype == np.uint16
    values = torch.from_numpy(merged[0].array.copy()).view(torch.bfloat16).reshape(-1)
    assert values.tolist() == [1.5, -2.0, 3.140625]


def test_merge_needs_a_request() -> None:
    with pytest.raises(ValueError, match="at least one"):
        merge([])


def test_split_gives_each_request_its_rows_as_views() -> None:
    outputs = [_fp32("X", 6), _bytes("S", [b"0", b"1", b"2", b"3", b"4", b"5"])]
    parts = split(outputs, [1, 2, 3])
    assert [[tensor.shape for tensor in part] for part in parts] == [
        [(1, 2), (1, 1)],
        [(2, 2), (2, 1)],
        [(3, 2), (3, 1)],
    ]
    np.testing.assert_array_equal(parts[1][0].array, outputs[0].array[1:3])
    assert parts[2][1].array.reshape(-1).tolist() == [b"3", b"4", b"5"]
    assert all(part[0].name == "X" and part[1].datatype is DATATYPES["BYTES"] for part in parts)
    assert np.shares_memory(parts[2][0].array, outputs[0].array)


def test_split_undoes_merge() -> None:
    requests = [[_bf16("H", [1.0])], [_bf16("H", [2.0, 3.0])], [_bf16("H", [4.0, 5.0, 6.0])]]
    parts = split(merge(requests), [1, 2, 3])
    for part, request in zip(parts, requests, strict=True):
        np.testing.assert_array_equal(part[0].array, request[0].array)


def test_split_rejects_an_output_with_the_wrong_number_of_rows() -> None:
    with pytest.raises(InferenceFailed, match=r"model output 'X' has 7 rows for a batch of 8"):
        split([_fp32("OK", 8), _fp32("X", 7)], [3, 5])


def test_split_rejects_a_scalar_output() -> None:
    with pytest.raises(InferenceFailed, match=r"model output 'S' has no rows for a batch of 2"):
        split([Tensor("S", DATATYPES["FP32"], np.array(1.0, dtype=np.float32))], [2])
