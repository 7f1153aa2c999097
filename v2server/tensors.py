"""Protobuf tensors <-> numpy arrays, and the BYTES wire format.

Raw contents become arrays with ``np.frombuffer`` (no copy, no per-element loop). BYTES elements travel as a
4-byte little-endian length followed by the bytes; that is the only format that needs a pass per element.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from v2server.datatypes import DataType, datatype
from v2server.errors import InvalidRequest

__all__ = [
    "Tensor",
    "count_bytes_elements",
    "deserialize_bytes",
    "element_count",
    "from_contents",
    "from_raw",
    "serialize_bytes",
    "to_raw",
]

_LENGTH = struct.Struct("<I")


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


def deserialize_bytes(buffer: bytes | memoryview, count: int, name: str) -> np.ndarray:
    """Split length-prefixed BYTES elements; the buffer must hold exactly ``count`` of them."""
    view = memoryview(buffer)
    items: list[bytes] = []
    offset, end = 0, len(view)
    while offset < end:
        if offset + 4 > end:
            raise InvalidRequest(f"input '{name}': BYTES data ends inside an element's 4-byte length prefix")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidRequest(
                f"input '{name}': BYTES element {len(items)} claims {length} bytes but only {end - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidRequest(f"input '{name}': expected {count} BYTES elements for its shape, got {len(items)}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


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


def from_raw(name: str, datatype_name: str, shape: Sequence[int], raw: bytes) -> Tensor:
    """A request input from its raw bytes; the byte size must match the shape exactly."""
    dt = datatype(datatype_name)
    _check_shape(name, shape)
    count = element_count(shape)
    if dt.name == "BYTES":
        array = deserialize_bytes(raw, count, name)
    else:
        expected = count * dt.itemsize
        if len(raw) != expected:
            raise InvalidRequest(
                f"input '{name}': expected {expected} bytes for shape {list(shape)} of {dt.name}, got {len(raw)}"
            )
        array = np.frombuffer(raw, dtype=dt.numpy)
    return Tensor(name, dt, array.reshape(tuple(shape)))


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
    if dt.name == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
    else:
        try:
            array = np.array(values, dtype=dt.numpy)
        except OverflowError:
            raise InvalidRequest(f"input '{name}': a value in {dt.contents_field} does not fit {dt.name}") from None
    return Tensor(name, dt, array.reshape(tuple(shape)))


def to_raw(tensor: Tensor) -> bytes:
    """The raw wire bytes of an output tensor."""
    if tensor.datatype.name == "BYTES":
        return serialize_bytes(tensor.array)
    return np.ascontiguousarray(tensor.array).tobytes()


def _check_shape(name: str, shape: Sequence[int]) -> None:
    for dim in shape:
        if dim < 0:
            raise InvalidRequest(f"input '{name}': shape {list(shape)} has a negative dimension")
