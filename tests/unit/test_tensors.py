"""Protobuf tensors <-> numpy: raw bytes, typed contents and the BYTES length-prefixed wire format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from v2server._proto import grpc_service_pb2 as pb
from v2server.datatypes import DATATYPES
from v2server.errors import InvalidRequest
from v2server.tensors import (
    Tensor,
    deserialize_bytes,
    element_count,
    from_contents,
    from_raw,
    serialize_bytes,
    to_raw,
)


def _sample(name: str) -> np.ndarray:
    """A 2x3 array of ``name``'s storage dtype with distinct, type-specific values."""
    if name == "BYTES":
        items = [b"", b"a", b"\x00\xff", "é".encode(), b"x" * 300, b"end"]
        array = np.empty(6, dtype=object)
        array[:] = items
        return array.reshape(2, 3)
    if name == "BF16":
        values = torch.tensor([-2.5, 0.0, 1.0, 3.140625, 1e30, -7.0], dtype=torch.bfloat16)
        return values.view(torch.int16).numpy().view(np.uint16).reshape(2, 3)
    if name == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    dtype = DATATYPES[name].numpy
    info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype)
    return np.array([[info.min, 0, 1], [2, 3, info.max]], dtype=dtype)


@pytest.mark.parametrize("name", list(DATATYPES))
def test_raw_round_trip(name: str) -> None:
    array = _sample(name)
    raw = to_raw(Tensor("OUT", DATATYPES[name], array))
    tensor = from_raw("IN", name, [2, 3], raw)
    assert tensor.datatype is DATATYPES[name]
    assert tensor.shape == (2, 3)
    assert tensor.array.dtype == DATATYPES[name].numpy
    assert tensor.array.tolist() == array.tolist()
    assert to_raw(tensor) == raw
    if name != "BYTES":
        assert len(raw) == 6 * DATATYPES[name].itemsize


def test_bf16_storage_views_back_as_bfloat16() -> None:
    values = torch.tensor([1.5, -0.25, 65280.0], dtype=torch.bfloat16)
    raw = values.view(torch.int16).numpy().tobytes()
    tensor = from_raw("IN", "BF16", [3], raw)
    assert tensor.array.dtype == np.uint16
    assert torch.equal(torch.from_numpy(tensor.array.copy()).view(torch.bfloat16), values)


def test_raw_is_row_major_for_a_non_contiguous_array() -> None:
    array = np.arange(6, dtype=np.int32).reshape(2, 3).T
    raw = to_raw(Tensor("OUT", DATATYPES["INT32"], array))
    assert np.frombuffer(raw, dtype=np.int32).tolist() == [0, 3, 1, 4, 2, 5]


def test_bytes_wire_format_is_a_4_byte_little_endian_length_then_the_bytes() -> None:
    array = np.array([b"ab", b"", "é"], dtype=object)
    assert serialize_bytes(array) == b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x02\x00\x00\x00\xc3\xa9"
    assert deserialize_bytes(b"\x00\x01\x00\x00" + b"z" * 256, 1, "IN").tolist() == [b"z" * 256]


@pytest.mark.parametrize(
    ("raw", "count", "message"),
    [
        (b"\x02\x00", 1, "input 'IN0': BYTES data ends inside an element's 4-byte length prefix"),
        (b"\x01\x00\x00\x00a\x03", 2, "input 'IN0': BYTES data ends inside an element's 4-byte length prefix"),
        (b"\x05\x00\x00\x00ab", 1, "input 'IN0': BYTES element 0 claims 5 bytes but only 2 remain"),
        (b"\x01\x00\x00\x00a" * 3, 2, "input 'IN0': expected 2 BYTES elements for its shape, got 3"),
        (b"\x01\x00\x00\x00a", 2, "input 'IN0': expected 2 BYTES elements for its shape, got 1"),
        (b"", 1, "input 'IN0': expected 1 BYTES elements for its shape, got 0"),
    ],
    ids=["truncated-prefix", "truncated-second-prefix", "over-long-element", "too-many", "too-few", "empty"],
)
def test_malformed_bytes(raw: bytes, count: int, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        from_raw("IN0", "BYTES", [count], raw)
    assert caught.value.message == message


@pytest.mark.parametrize(
    ("datatype", "shape", "size", "expected"),
    [("FP32", [2, 2], 15, 16), ("INT64", [3], 32, 24), ("BOOL", [4], 3, 4), ("BF16", [1, 3], 3, 6), ("FP16", [], 4, 2)],
)
def test_raw_byte_size_must_match_the_shape(datatype: str, shape: list[int], size: int, expected: int) -> None:
    with pytest.raises(InvalidRequest) as caught:
        from_raw("IN0", datatype, shape, b"\x00" * size)
    assert caught.value.message == (
        f"input 'IN0': expected {expected} bytes for shape {shape} of {datatype}, got {size}"
    )


def test_scalar_and_empty_shapes() -> None:
    assert element_count([]) == 1 and element_count([2, 3]) == 6 and element_count([4, 0]) == 0
    assert from_raw("IN", "INT32", [], b"\x07\x00\x00\x00").array.tolist() == 7
    assert from_raw("IN", "FP32", [0, 3], b"").shape == (0, 3)


@pytest.mark.parametrize("build", [from_raw, from_contents], ids=["raw", "contents"])
def test_negative_dimension_is_rejected(build: object) -> None:
    with pytest.raises(InvalidRequest, match=r"input 'IN': shape \[-1, 2\] has a negative dimension"):
        build("IN", "INT32", [-1, 2], b"" if build is from_raw else pb.InferTensorContents())  # type: ignore[operator]


@pytest.mark.parametrize("build", [from_raw, from_contents], ids=["raw", "contents"])
def test_unknown_datatype_is_rejected(build: object) -> None:
    with pytest.raises(InvalidRequest, match="unknown datatype 'INT4'"):
        build("IN", "INT4", [1], b"" if build is from_raw else pb.InferTensorContents())  # type: ignore[operator]


TYPED = [
    ("BOOL", {"bool_contents": [True, False, True, True]}),
    ("UINT8", {"uint_contents": [0, 1, 128, 255]}),
    ("UINT16", {"uint_contents": [0, 1, 300, 65535]}),
    ("UINT32", {"uint_contents": [0, 1, 70000, 2**32 - 1]}),
    ("UINT64", {"uint64_contents": [0, 1, 2**40, 2**64 - 1]}),
    ("INT8", {"int_contents": [-128, -1, 0, 127]}),
    ("INT16", {"int_contents": [-32768, -1, 0, 32767]}),
    ("INT32", {"int_contents": [-(2**31), -1, 0, 2**31 - 1]}),
    ("INT64", {"int64_contents": [-(2**63), -1, 0, 2**63 - 1]}),
    ("FP32", {"fp32_contents": [-1.5, 0.0, 0.25, 3e38]}),
    ("FP64", {"fp64_contents": [-1.5, 0.0, 0.1, 1e300]}),
    ("BYTES", {"bytes_contents": [b"", b"a", b"\xff\xfe", b"four"]}),
]


@pytest.mark.parametrize(("name", "contents"), TYPED, ids=[row[0] for row in TYPED])
def test_typed_contents(name: str, contents: dict[str, list[object]]) -> None:
    (field, values), = contents.items()
    assert DATATYPES[name].contents_field == field
    tensor = from_contents("IN", name, [2, 2], pb.InferTensorContents(**contents))
    assert tensor.shape == (2, 2)
    assert tensor.array.dtype == DATATYPES[name].numpy
    expected = np.float32(values).tolist() if name == "FP32" else values
    assert tensor.array.reshape(-1).tolist() == expected


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("INT8", "int_contents", 300),
        ("INT8", "int_contents", -129),
        ("INT16", "int_contents", 40000),
        ("UINT8", "uint_contents", 256),
        ("UINT16", "uint_contents", 70000),
    ],
)
def test_typed_value_that_does_not_fit_is_the_clients_error(name: str, field: str, value: int) -> None:
    with pytest.raises(InvalidRequest) as caught:
        from_contents("IN0", name, [1], pb.InferTensorContents(**{field: [value]}))
    assert caught.value.message == f"input 'IN0': a value in {field} does not fit {name}"


@pytest.mark.parametrize("name", ["FP16", "BF16"])
def test_typed_contents_rejected_for_types_without_a_field(name: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        from_contents("IN0", name, [1], pb.InferTensorContents(fp32_contents=[1.0]))
    assert caught.value.message == f"input 'IN0': datatype {name} can only be sent as raw contents"


@pytest.mark.parametrize(
    ("contents", "got"),
    [({"int_contents": [1, 2, 3]}, 3), ({"fp32_contents": [1.0, 2.0, 3.0, 4.0]}, 0)],
    ids=["wrong-count", "wrong-field"],
)
def test_typed_contents_must_fill_the_shape_from_the_datatypes_field(contents: dict[str, list[object]], got: int) -> None:
    with pytest.raises(InvalidRequest) as caught:
        from_contents("IN0", "INT32", [2, 2], pb.InferTensorContents(**contents))
    assert caught.value.message == f"input 'IN0': expected 4 values in int_contents for shape [2, 2], got {got}"
