"""Protobuf tensors <-> numpy: raw bytes, typed contents and the BYTES length-prefixed wire format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from v2server._proto import grpc_service_pb2 as pb
from v2server.datatypes import DATATYPES
from v2server.errors import InvalidRequest, V2Error
from v2server.tensors import (
    CHUNK,
    Tensor,
    bfloat16_to_float32,
    bytes_array,
    check_raw_size,
    count_bytes_elements,
    deserialize_bytes,
    element_count,
    from_contents,
    from_raw,
    output_array,
    serialize_bytes,
    storage_array,
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


_AT_MOST = "and each element has a 4-byte length prefix)"


@pytest.mark.parametrize(
    ("raw", "count", "message"),
    [
        (b"\x02\x00", 0, "input 'IN0': BYTES data ends inside an element's 4-byte length prefix"),
        (b"\x01\x00\x00\x00a\x03", 1, "input 'IN0': BYTES data ends inside an element's 4-byte length prefix"),
        (b"\x05\x00\x00\x00ab", 1, "input 'IN0': BYTES element 0 claims 5 bytes but only 2 remain"),
        (b"\x01\x00\x00\x00a" * 3, 2, "input 'IN0': expected 2 BYTES elements for its shape, got 3"),
        (b"\x05\x00\x00\x00hello", 2, "input 'IN0': expected 2 BYTES elements for its shape, got 1"),
        (b"\x01\x00\x00\x00a", 2, f"input 'IN0': expected 2 BYTES elements for its shape, got at most 1 (5 bytes, {_AT_MOST}"),
        (b"", 1, f"input 'IN0': expected 1 BYTES elements for its shape, got at most 0 (0 bytes, {_AT_MOST}"),
        (b"\x02\x00", 1, f"input 'IN0': expected 1 BYTES elements for its shape, got at most 0 (2 bytes, {_AT_MOST}"),
    ],
    ids=["truncated-prefix", "truncated-second-prefix", "over-long-element", "too-many", "too-few",
         "too-few-for-the-prefixes", "empty", "short-for-the-prefixes"],
)
def test_malformed_bytes(raw: bytes, count: int, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        from_raw("IN0", "BYTES", [count], raw)
    assert caught.value.message == message


# --- BYTES at scale: the uniform fast path, the walk, slices, and the checks before any element ---------------


def _wire(items: list[bytes]) -> bytes:
    """The wire format written independently of ``serialize_bytes``."""
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


def _varied(count: int) -> list[bytes]:
    return [bytes([i % 251]) * (i % 7) + b"\x00" * (i % 3) for i in range(count)]


@pytest.mark.parametrize(
    "items",
    [
        [b""] * (2 * CHUNK + 3),  # uniform, empty: more than two slices
        [b"ab\x00"] * (CHUNK + 1),  # uniform with trailing NULs, which a fixed-width S view would drop
        [b"\x00"] * 200,  # uniform, within one slice
        _varied(2 * CHUNK + 5),  # the walk
        [b"x" * 70_000, b"", b"y"],  # few long elements
        [b"z" * 1000],  # one element, past the small-buffer path
    ],
    ids=["empty-elements", "equal-with-nuls", "small-uniform", "varied", "long", "single"],
)
def test_many_bytes_elements_round_trip(items: list[bytes]) -> None:
    raw = _wire(items)
    array = deserialize_bytes(raw, len(items), "IN")
    assert array.dtype == object and array.shape == (len(items),)
    assert array.tolist() == items
    assert all(type(item) is bytes for item in array[:: max(1, len(items) // 100)])
    assert count_bytes_elements(raw) == len(items)
    assert serialize_bytes(array) == raw
    assert serialize_bytes(array.reshape(1, -1)) == raw
    assert from_raw("IN", "BYTES", [1, len(items)], raw).array.reshape(-1).tolist() == items


def test_bytes_from_a_memoryview_and_of_str_elements() -> None:
    items = [b"a", b"bcd", b""] * 100
    raw = _wire(items)
    assert deserialize_bytes(memoryview(raw), len(items), "IN").tolist() == items
    strings = np.array(["é", "", "abc"] * 10_000, dtype=object)
    assert serialize_bytes(strings) == _wire(["é".encode(), b"", b"abc"] * 10_000)
    mixed = np.array([b"x", "y", bytearray(b"z"), np.bytes_(b"w")] * 20, dtype=object)
    assert serialize_bytes(mixed) == _wire([b"x", b"y", b"z", b"w"] * 20)
    views = np.empty(20, dtype=object)
    views[:] = [memoryview(np.array([1, 2], dtype=np.int32))] * 20  # len() 2, 8 bytes
    assert serialize_bytes(views) == _wire([b"\x01\x00\x00\x00\x02\x00\x00\x00"] * 20)
    assert serialize_bytes(np.empty(0, dtype=object)) == b""


@pytest.mark.parametrize("delta", [-1, 1])
def test_a_uniform_bytes_tensor_off_by_one_is_refused_with_its_count(delta: int) -> None:
    raw = b"\x00" * 4 * 100_000  # 100,000 empty elements
    with pytest.raises(InvalidRequest) as caught:
        from_raw("IN", "BYTES", [1, 100_000 + delta], raw)
    if delta < 0:
        assert caught.value.message == "input 'IN': expected 99999 BYTES elements for its shape, got 100000"
    else:  # refused by the byte count alone, before any element is read
        assert caught.value.message == (
            f"input 'IN': expected 100001 BYTES elements for its shape, got at most 100000 (400000 bytes, {_AT_MOST}"
        )


def test_a_varied_bytes_tensor_is_not_walked_past_its_shape() -> None:
    items = _varied(50_000)
    raw = _wire(items)
    with pytest.raises(InvalidRequest) as caught:
        deserialize_bytes(raw, 10, "IN")
    assert caught.value.message == "input 'IN': expected 10 BYTES elements for its shape, got more than 10"
    with pytest.raises(InvalidRequest) as caught:
        deserialize_bytes(raw, 50_001, "IN")
    assert caught.value.message == "input 'IN': expected 50001 BYTES elements for its shape, got 50000"
    with pytest.raises(InvalidRequest, match="BYTES element 49999 claims"):
        deserialize_bytes(raw[:-1], 50_000, "IN")
    with pytest.raises(InvalidRequest, match="ends inside an element's 4-byte length prefix"):
        deserialize_bytes(raw + b"\x01", 50_000, "IN")


def test_check_raw_size_is_the_check_before_any_element() -> None:
    check_raw_size("IN", "BYTES", [2], 8)
    check_raw_size("IN", "INT32", [2, 2], 16)
    with pytest.raises(InvalidRequest, match=r"expected 3 BYTES elements for its shape, got at most 2 \(11 bytes"):
        check_raw_size("IN", "BYTES", [3], 11)
    with pytest.raises(InvalidRequest, match=r"^input 'IN': expected 16 bytes for shape \[2, 2\] of INT32, got 15$"):
        check_raw_size("IN", "INT32", [2, 2], 15)
    with pytest.raises(InvalidRequest, match="negative dimension"):
        check_raw_size("IN", "BYTES", [-2], 8)


def test_large_typed_contents_convert_in_slices() -> None:
    values = list(range(-CHUNK, 2 * CHUNK + 7))
    tensor = from_contents("IN", "INT32", [len(values)], pb.InferTensorContents(int_contents=values))
    assert tensor.array.dtype == np.int32 and tensor.array.tolist() == values
    blobs = [b"%d" % i for i in range(CHUNK + 9)]
    tensor = from_contents("IN", "BYTES", [len(blobs)], pb.InferTensorContents(bytes_contents=blobs))
    assert tensor.array.dtype == object and tensor.array.tolist() == blobs
    bad = [0] * (CHUNK + 10) + [300]
    with pytest.raises(InvalidRequest, match="^input 'IN': value 300 is out of range for INT8$"):
        from_contents("IN", "INT8", [len(bad)], pb.InferTensorContents(int_contents=bad))
    assert bytes_array(iter(blobs)).tolist() == blobs


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
    assert caught.value.message == f"input 'IN0': value {value} is out of range for {name}"


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


# --- storage_array: the narrowing rules every path shares ----------------------------------------------------


@pytest.mark.parametrize("name", [n for n, row in DATATYPES.items() if row.numpy.kind in "iu" and n != "BF16"])
def test_integers_hold_their_whole_range(name: str) -> None:
    info = np.iinfo(DATATYPES[name].numpy)
    array = storage_array("IN", DATATYPES[name], [int(info.min), 0, int(info.max)])
    assert array.dtype == DATATYPES[name].numpy
    assert array.tolist() == [info.min, 0, info.max]


@pytest.mark.parametrize("name", [n for n, row in DATATYPES.items() if row.numpy.kind in "iu" and n != "BF16"])
@pytest.mark.parametrize("side", ["below", "above"])
def test_an_integer_just_outside_the_range_is_named(name: str, side: str) -> None:
    info = np.iinfo(DATATYPES[name].numpy)
    bad = int(info.min) - 1 if side == "below" else int(info.max) + 1
    with pytest.raises(InvalidRequest) as caught:
        storage_array("IN", DATATYPES[name], [0, bad, 1])
    assert caught.value.message == f"input 'IN': value {bad} is out of range for {name}"


def test_the_first_bad_integer_is_named_and_uint64_takes_values_beyond_int64() -> None:
    with pytest.raises(InvalidRequest, match="^input 'IN': value -1 is out of range for UINT64$"):
        storage_array("IN", DATATYPES["UINT64"], [2**64 - 1, -1])
    with pytest.raises(InvalidRequest, match="^input 'IN': value 300 is out of range for INT8$"):
        storage_array("IN", DATATYPES["INT8"], [1, 300, -200])
    assert storage_array("IN", DATATYPES["UINT64"], [2**63, 1]).tolist() == [2**63, 1]


@pytest.mark.parametrize(
    ("name", "ok", "bad"),
    [("FP16", 65504.0, 65520.0), ("FP32", 3.4e38, 3.5e38), ("BF16", 3.38e38, 3.4e38), ("BF16", -3.38e38, -3.4e38)],
)
def test_a_float_that_would_become_inf_is_refused(name: str, ok: float, bad: float) -> None:
    assert np.isfinite(_as_float(name, storage_array("IN", DATATYPES[name], [ok, 0.5]))).all()
    with pytest.raises(InvalidRequest) as caught:
        storage_array("IN", DATATYPES[name], [ok, bad])
    assert caught.value.message == f"input 'IN': a value is out of range for {name}"


def _as_float(name: str, array: np.ndarray) -> np.ndarray:
    return bfloat16_to_float32(array) if name == "BF16" else array


def test_bf16_rounds_to_nearest_even_as_torch_does_and_widens_back() -> None:
    numbers = [1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1.0039063, -2.5, 3.140625, 1e-40, 3.3e38]
    bits = storage_array("IN", DATATYPES["BF16"], numbers)
    expected = torch.tensor(numbers, dtype=torch.float32).to(torch.bfloat16)
    assert bits.dtype == np.uint16
    assert bits.tolist() == expected.view(torch.int16).numpy().view(np.uint16).tolist()
    assert bfloat16_to_float32(bits).tolist() == expected.float().tolist()


def test_bool_and_bytes_storage() -> None:
    assert storage_array("IN", DATATYPES["BOOL"], [True, False]).dtype == np.bool_
    array = storage_array("IN", DATATYPES["BYTES"], [b"ab", b""])
    assert array.dtype == object and array.tolist() == [b"ab", b""]
    assert bytes_array([b"\x00\x00"]).tolist() == [b"\x00\x00"]  # np.array would strip the NULs


# --- output_array: the server's own bytes --------------------------------------------------------------------


def test_output_array_reads_raw_outputs_shaped() -> None:
    raw = np.arange(6, dtype=np.int16).tobytes()
    assert output_array("OUT", "INT16", [2, 3], raw).tolist() == [[0, 1, 2], [3, 4, 5]]
    text = serialize_bytes(np.array([b"a", b"bc"], dtype=object))
    assert output_array("OUT", "BYTES", [2, 1], text).tolist() == [[b"a"], [b"bc"]]


@pytest.mark.parametrize(
    ("datatype", "raw", "message"),
    [
        ("INT32", b"\x00" * 6, "output 'OUT': expected 8 bytes for shape [2] of INT32, got 6"),
        ("BYTES", b"\x05\x00\x00\x00ab\x00\x00", "output 'OUT': BYTES element 0 claims 5 bytes but only 4 remain"),
        ("INT4", b"", "output 'OUT': unknown datatype 'INT4'"),
    ],
)
def test_output_array_mismatches_are_the_servers_error(datatype: str, raw: bytes, message: str) -> None:
    with pytest.raises(V2Error) as caught:
        output_array("OUT", datatype, [2], raw)
    assert type(caught.value) is V2Error  # 500, not the client's 400
    assert caught.value.message == message
