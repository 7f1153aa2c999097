"""Protobuf tensors <-> numpy arrays: the numeric narrowing rules, raw bytes and the BYTES wire format.

Every path that turns values into a tensor goes through here, so each rule is written once and is strict the
same way for every transport and style (gRPC typed contents, V2 JSON, ``/v1``, ``/predict``):

- an integer outside its datatype's range is the client's error (never wrapped, never clipped);
- a float that FP16, FP32 or BF16 cannot hold (it would become inf) is the client's error, not a silent inf;
- BF16 is stored as its ``uint16`` bit pattern, rounded to nearest even as torch does.

Raw contents become arrays with ``np.frombuffer`` (no copy, no per-element loop). BYTES elements travel as a
4-byte little-endian length followed by the bytes; that is the only format that needs a pass per element.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from v2server.datatypes import DATATYPES, DataType, datatype
from v2server.errors import InvalidRequest, V2Error

__all__ = [
    "Tensor",
    "bfloat16_to_float32",
    "bytes_array",
    "count_bytes_elements",
    "deserialize_bytes",
    "element_count",
    "from_contents",
    "from_raw",
    "output_array",
    "serialize_bytes",
    "storage_array",
    "to_raw",
]

_LENGTH = struct.Struct("<I")
_INT64 = np.iinfo(np.int64)
_BF16_INF = 0x7F80  # exponent all ones, mantissa zero: what an overflowing bfloat16 rounds to


@dataclass(frozen=True, slots=True)
class Tensor:
    """A named tensor in transit: its V2 datatype and an array of that datatype's storage dtype.

    BYTES arrays hold ``bytes`` objects (dtype object); BF16 arrays hold the raw ``uint16`` bit patterns.
    """

    name: str
    datatype: DataType
    array: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def element_count(shape: Sequence[int]) -> int:
    """Number of elements of ``shape`` (1 for a scalar shape)."""
    return math.prod(shape)


# --- values -> storage: the narrowing rules ----------------------------------------------------------------


def storage_array(name: str, dt: DataType, values: Sequence[Any]) -> np.ndarray:
    """Flat element values of ``dt``'s kind as a 1-D array of its storage dtype, checking every narrowing.

    Callers check the kinds first (the JSON codecs refuse ``true`` for an integer, ``1.5`` for INT8; protobuf
    fields are typed): this function only converts, with numpy doing the loop, and refuses values the
    datatype cannot hold.

    Args:
        name: the input, for messages.
        dt: the datatype to store.
        values: booleans for BOOL, integers for the integer types, numbers for the float types, bytes for
            BYTES (any sequence numpy reads: a list, a protobuf repeated field, an array).

    Raises:
        InvalidRequest: ``input 'A': value 300 is out of range for INT8`` (the first such value), or
            ``input 'A': a value is out of range for FP16`` for a float that would become inf.
    """
    if dt.kind == "bytes":
        return bytes_array(values)
    if dt.kind == "bool":
        return np.asarray(values, dtype=np.bool_)
    if dt.kind == "int":
        return _integers(name, dt, values)
    return _floats(name, dt, values)


@functools.cache
def _integer_range(storage: np.dtype) -> np.iinfo:
    return np.iinfo(storage)  # building an iinfo costs more than checking a small tensor


def _integers(name: str, dt: DataType, values: Sequence[int]) -> np.ndarray:
    info = _integer_range(dt.numpy)
    try:
        wide = np.asarray(values, dtype=np.int64)
    except OverflowError:  # a value beyond int64: only UINT64 holds it, and then no value may be negative
        if dt.name != "UINT64" or min(values) < 0:  # (older numpy wraps a negative into uint64 silently)
            raise _out_of_range(name, dt, values, info) from None
        try:
            return np.asarray(values, dtype=np.uint64)
        except OverflowError:
            raise _out_of_range(name, dt, values, info) from None
    low, high = max(info.min, _INT64.min), min(info.max, _INT64.max)  # compare within int64
    if wide.size and (wide.min() < low or wide.max() > high):
        raise _out_of_range(name, dt, wide[(wide < low) | (wide > high)].tolist(), info)
    return wide.astype(dt.numpy, copy=False)


def _out_of_range(name: str, dt: DataType, values: Iterable[int], info: np.iinfo) -> InvalidRequest:
    bad = next(value for value in values if not info.min <= value <= info.max)
    return InvalidRequest(f"input '{name}': value {bad} is out of range for {dt.name}")


def _floats(name: str, dt: DataType, values: Sequence[float]) -> np.ndarray:
    try:
        wide = np.asarray(values, dtype=np.float64)
        with np.errstate(over="raise"):  # a finite number that would narrow to inf raises FloatingPointError
            if dt.name == "BF16":
                return _bfloat16_bits(name, wide.astype(np.float32))
            return wide.astype(dt.numpy, copy=False)
    except (OverflowError, FloatingPointError):
        raise InvalidRequest(f"input '{name}': a value is out of range for {dt.name}") from None


def _bfloat16_bits(name: str, values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even as torch and ml_dtypes do."""
    bits = values.view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    if np.any((rounded & 0x7FFF) == _BF16_INF):
        raise InvalidRequest(f"input '{name}': a value is out of range for BF16")
    return rounded


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """BF16 storage (``uint16`` bit patterns) as float32 values: the bits are the top half of a float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def bytes_array(items: Iterable[bytes]) -> np.ndarray:
    """A 1-D BYTES array (dtype object) of ``items``; ``np.array`` would make a fixed-width ``S`` array."""
    items = list(items)
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


# --- BYTES wire format -------------------------------------------------------------------------------------


def deserialize_bytes(buffer: bytes | memoryview, count: int, name: str) -> np.ndarray:
    """Split length-prefixed BYTES elements of input ``name``; the buffer must hold exactly ``count``."""
    return _split_bytes(buffer, count, f"input '{name}'", InvalidRequest)


def _split_bytes(buffer: bytes | memoryview, count: int, where: str, error: type[V2Error]) -> np.ndarray:
    view = memoryview(buffer)
    items: list[bytes] = []
    offset, end = 0, len(view)
    while offset < end:
        if offset + 4 > end:
            raise error(f"{where}: BYTES data ends inside an element's 4-byte length prefix")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise error(f"{where}: BYTES element {len(items)} claims {length} bytes but only {end - offset} remain")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise error(f"{where}: expected {count} BYTES elements for its shape, got {len(items)}")
    return bytes_array(items)


def count_bytes_elements(buffer: bytes | memoryview) -> int:
    """How many length-prefixed BYTES elements ``buffer`` holds (as far as its prefixes are whole)."""
    view = memoryview(buffer)
    count = offset = 0
    while offset + 4 <= len(view):
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4 + length
        count += 1
    return count


def serialize_bytes(array: np.ndarray) -> bytes:
    """Length-prefix every element of a BYTES (or str) array, in row-major order."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


# --- protobuf tensors <-> arrays ---------------------------------------------------------------------------


def from_raw(name: str, datatype_name: str, shape: Sequence[int], raw: bytes) -> Tensor:
    """A request input from its raw bytes; the byte size must match the shape exactly."""
    dt = datatype(datatype_name)
    _check_shape(name, shape)
    return Tensor(name, dt, _raw_array(dt, shape, raw, f"input '{name}'", InvalidRequest))


def output_array(name: str, datatype_name: str, shape: Sequence[int], raw: bytes) -> np.ndarray:
    """A response output's raw bytes as an array of its storage dtype, shaped.

    The core made them, so a mismatch (an unknown datatype, a size that does not fit the shape) is the
    server's error (500), not the client's.
    """
    dt = DATATYPES.get(datatype_name)
    if dt is None:
        raise V2Error(f"output '{name}': unknown datatype '{datatype_name}'")
    return _raw_array(dt, shape, raw, f"output '{name}'", V2Error)


def _raw_array(dt: DataType, shape: Sequence[int], raw: bytes, where: str, error: type[V2Error]) -> np.ndarray:
    count = element_count(shape)
    if dt.name == "BYTES":
        array = _split_bytes(raw, count, where, error)
    else:
        expected = count * dt.itemsize
        if len(raw) != expected:
            raise error(f"{where}: expected {expected} bytes for shape {list(shape)} of {dt.name}, got {len(raw)}")
        array = np.frombuffer(raw, dtype=dt.numpy)
    return array.reshape(tuple(shape))


def from_contents(name: str, datatype_name: str, shape: Sequence[int], contents: object) -> Tensor:
    """A request input from typed ``InferTensorContents``: the field must be the one of its datatype."""
    dt = datatype(datatype_name)
    _check_shape(name, shape)
    if dt.contents_field is None:
        raise InvalidRequest(f"input '{name}': datatype {dt.name} can only be sent as raw contents")
    values = getattr(contents, dt.contents_field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidRequest(
            f"input '{name}': expected {count} values in {dt.contents_field} for shape {list(shape)}, "
            f"got {len(values)}"
        )
    return Tensor(name, dt, storage_array(name, dt, values).reshape(tuple(shape)))


def to_raw(tensor: Tensor) -> bytes:
    """The raw wire bytes of a tensor (row-major, whatever the array's memory layout)."""
    if tensor.datatype.name == "BYTES":
        return serialize_bytes(tensor.array)
    return np.ascontiguousarray(tensor.array).tobytes()


def _check_shape(name: str, shape: Sequence[int]) -> None:
    for dim in shape:
        if dim < 0:
            raise InvalidRequest(f"input '{name}': shape {list(shape)} has a negative dimension")
