"""Protobuf tensors <-> numpy arrays: the numeric narrowing rules, raw bytes and the BYTES wire format.

Every path that turns values into a tensor goes through here, so each rule is written once and is strict the
same way for every transport and style (gRPC typed contents, V2 JSON, ``/v1``, ``/predict``):

- an integer outside its datatype's range is the client's error (never wrapped, never clipped);
- a float that FP16, FP32 or BF16 cannot hold (it would become inf) is the client's error, not a silent inf;
- BF16 is stored as its ``uint16`` bit pattern, rounded to nearest even as torch does.

Raw contents become arrays with ``np.frombuffer`` (no copy, no per-element loop). BYTES elements travel as a
4-byte little-endian length followed by the bytes; that is the only format that needs a pass per element, and
it is kept small (design rule 13, the event loop's budget):

- the byte count is checked against the shape first (at least 4 bytes per element), before any element;
- when every element has the same length (empty strings, fixed-width ids) the prefixes are checked with one
  strided numpy view and the elements built without a Python loop; otherwise one tight loop walks the
  prefixes, counts them against the shape (never past one element more than it declares) and only then
  builds the ``bytes`` objects;
- work over many elements is done in slices of ``CHUNK`` elements, so that no single C call holds the GIL for
  long: the caller (``inference``) runs large tensors in a worker thread, and the event loop gets the GIL
  back between slices.
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
    "CHUNK",
    "Tensor",
    "bfloat16_to_float32",
    "bytes_array",
    "check_contents_size",
    "check_raw_size",
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
#: Elements per C call when many are converted, built or joined (about 1-5 ms of GIL each): a worker thread
#: doing a large tensor lets the event loop's thread in between slices.
CHUNK = 65_536
#: Below this many bytes a BYTES buffer is split by the plain loop: numpy's fixed cost (~10 us) is more than
#: the loop's for a few dozen elements.
_SMALL_BYTES = 512
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
    items = items if isinstance(items, list) else list(items)
    array = np.empty(len(items), dtype=object)
    if len(items) <= CHUNK:
        array[:] = items
    else:
        for start in range(0, len(items), CHUNK):
            array[start : start + CHUNK] = items[start : start + CHUNK]
    return array


# --- BYTES wire format -------------------------------------------------------------------------------------


def deserialize_bytes(buffer: bytes | memoryview, count: int, name: str) -> np.ndarray:
    """Split length-prefixed BYTES elements of input ``name``; the buffer must hold exactly ``count``."""
    return _split_bytes(buffer, count, f"input '{name}'", InvalidRequest)


def _split_bytes(buffer: bytes | memoryview, count: int, where: str, error: type[V2Error]) -> np.ndarray:
    data = buffer if isinstance(buffer, bytes) else memoryview(buffer).cast("B").tobytes()
    _check_bytes_size(count, len(data), where, error)
    uniform = _uniform_layout(data) if len(data) > _SMALL_BYTES else None
    if uniform is not None:
        found, length = uniform
        if found != count:
            raise error(f"{where}: expected {count} BYTES elements for its shape, got {found}")
        return _uniform_elements(data, count, length)
    # never walk past one element more than the shape declares (a small buffer is walked whole, to say how many)
    ends, truncated = _element_ends(data, count + 1 if len(data) > _SMALL_BYTES else len(data))
    if truncated:
        raise error(f"{where}: BYTES data ends inside an element's 4-byte length prefix")
    if ends and ends[-1] > len(data):
        start = ends[-2] + 4 if len(ends) > 1 else 4
        raise error(
            f"{where}: BYTES element {len(ends) - 1} claims {ends[-1] - start} bytes but only "
            f"{len(data) - start} remain"
        )
    if len(ends) != count:
        stopped = ends and ends[-1] < len(data)  # at the walk's limit: there are more elements still
        got = f"more than {count}" if stopped else str(len(ends))
        raise error(f"{where}: expected {count} BYTES elements for its shape, got {got}")
    return bytes_array(_slices(data, ends))


def _check_bytes_size(count: int, size: int, where: str, error: type[V2Error]) -> None:
    """The check before any element is read: ``count`` elements need at least their 4-byte prefixes."""
    if 4 * count > size:
        raise error(
            f"{where}: expected {count} BYTES elements for its shape, got at most {size // 4} "
            f"({size} bytes, and each element has a 4-byte length prefix)"
        )


def _uniform_layout(data: bytes) -> tuple[int, int] | None:
    """``(count, length)`` when every element of ``data`` has the same length, checked with one strided view
    of the prefixes (no Python loop); ``None`` when they differ or the data is malformed."""
    if not data:
        return 0, 0
    if len(data) < 4:
        return None
    (length,) = _LENGTH.unpack_from(data, 0)
    stride = 4 + length
    if len(data) % stride:
        return None
    count = len(data) // stride
    prefixes = np.ndarray((count,), dtype="<u4", buffer=data, strides=(stride,))
    for start in range(0, count, CHUNK * 16):  # a compare releases the GIL; the slices bound each call anyway
        if not (prefixes[start : start + CHUNK * 16] == length).all():
            return None
    return count, length


def _uniform_elements(data: bytes, count: int, length: int) -> np.ndarray:
    """The ``count`` elements of ``length`` bytes each, built in slices without a Python loop per element."""
    array = np.empty(count, dtype=object)
    if length == 0:
        for start in range(0, count, CHUNK):
            array[start : start + CHUNK] = b""
        return array
    # a void view keeps every byte (a fixed-width ``S`` view would drop trailing NULs) and lists as bytes
    values = np.ndarray((count,), dtype=np.dtype((np.void, length)), buffer=data, offset=4, strides=(4 + length,))
    for start in range(0, count, CHUNK):
        array[start : start + CHUNK] = values[start : start + CHUNK].tolist()
    return array


def _element_ends(data: bytes, limit: int) -> tuple[list[int], bool]:
    """Walk the length prefixes: the offset just past each element (at most ``limit`` of them), and whether
    the data ends inside a prefix. The last end may lie past the data (that element claims too much): no
    other can, since the walk stops there. This is the one sequential pass of the format, kept tight."""
    unpack = _LENGTH.unpack_from
    ends: list[int] = []
    append = ends.append
    offset, size = 0, len(data)
    try:
        for _ in range(limit):
            if offset >= size:
                break
            offset += 4 + unpack(data, offset)[0]
            append(offset)
    except struct.error:  # fewer than 4 bytes left for a prefix
        return ends, True
    return ends, False


def _slices(data: bytes, ends: list[int]) -> list[bytes]:
    starts = [4, *(end + 4 for end in ends[:-1])]
    return [data[start:end] for start, end in zip(starts, ends)]


def count_bytes_elements(buffer: bytes | memoryview) -> int:
    """How many length-prefixed BYTES elements ``buffer`` holds (as far as its prefixes are whole)."""
    data = buffer if isinstance(buffer, bytes) else memoryview(buffer).cast("B").tobytes()
    uniform = _uniform_layout(data) if len(data) > _SMALL_BYTES else None
    if uniform is not None:
        return uniform[0]
    return len(_element_ends(data, len(data))[0])


def serialize_bytes(array: np.ndarray) -> bytes:
    """Length-prefix every element of a BYTES (or str) array, in row-major order.

    The elements are joined by ``bytes.join`` and the prefixes put between them by numpy, a slice of ``CHUNK``
    elements at a time; only ``str`` elements (or other non-bytes objects) take a Python pass, to encode them.
    """
    flat = array.reshape(-1)
    if flat.size <= 16:
        return b"".join(_LENGTH.pack(len(data)) + data for data in map(_as_bytes, flat.tolist()))
    parts = [_serialize_slice(flat[start : start + CHUNK].tolist()) for start in range(0, flat.size, CHUNK)]
    return parts[0].tobytes() if len(parts) == 1 else b"".join(part.data for part in parts)


def _as_bytes(item: object) -> bytes:
    return item.encode() if isinstance(item, str) else bytes(item)  # type: ignore[call-overload]


def _serialize_slice(items: list[Any]) -> np.ndarray:
    try:
        payload = b"".join(items)
    except TypeError:  # str elements (or objects bytes() converts)
        items = [_as_bytes(item) for item in items]
        payload = b"".join(items)
    if not payload:  # all empty (padding): no lengths to take
        return np.zeros(4 * len(items), dtype=np.uint8)
    lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
    if int(lengths.sum()) != len(payload):  # a buffer whose len() is not its byte count (a memoryview of ints)
        items = [bytes(item) for item in items]
        payload = b"".join(items)
        lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
    count = len(items)
    out = np.empty(4 * count + len(payload), dtype=np.uint8)
    data = np.frombuffer(payload, dtype=np.uint8)
    prefixes = lengths.astype("<u4").view(np.uint8).reshape(count, 4)
    if lengths.min() == lengths.max():
        rows = out.reshape(count, -1)
        rows[:, :4] = prefixes
        rows[:, 4:] = data.reshape(count, -1)
    else:
        at = np.arange(0, 4 * count, 4) + np.cumsum(lengths) - lengths  # where each prefix goes
        index = (at[:, None] + np.arange(4)).reshape(-1)
        out[index] = prefixes.reshape(-1)
        payload_at = np.ones(out.size, dtype=np.bool_)
        payload_at[index] = False
        out[payload_at] = data
    return out


# --- protobuf tensors <-> arrays ---------------------------------------------------------------------------


def from_raw(name: str, datatype_name: str, shape: Sequence[int], raw: bytes) -> Tensor:
    """A request input from its raw bytes; the byte size must match the shape exactly."""
    dt = datatype(datatype_name)
    _check_shape(name, shape)
    return Tensor(name, dt, _raw_array(dt, shape, raw, f"input '{name}'", InvalidRequest))


def from_checked_raw(name: str, datatype_name: str, shape: Sequence[int], raw: bytes | memoryview) -> Tensor:
    """``from_raw`` for an input that ``check_raw_size`` passed: its datatype, shape and byte count are not
    checked again (a BYTES input's elements still are, as they are read)."""
    dt = DATATYPES[datatype_name]
    if dt.name == "BYTES":
        return from_raw(name, datatype_name, shape, raw)
    return Tensor(name, dt, np.frombuffer(raw, dtype=dt.numpy).reshape(tuple(shape)))


def check_raw_size(name: str, datatype_name: str, shape: Sequence[int], size: int) -> None:
    """The checks of a raw input that come before any per-element work: its datatype, its shape, and its byte
    count against the shape (exact for fixed-size datatypes; at least 4 bytes per BYTES element)."""
    dt = datatype(datatype_name)
    _check_shape(name, shape)
    _check_size(dt, shape, size, f"input '{name}'", InvalidRequest)


def _check_size(dt: DataType, shape: Sequence[int], size: int, where: str, error: type[V2Error]) -> None:
    count = element_count(shape)
    if dt.name == "BYTES":
        _check_bytes_size(count, size, where, error)
    elif size != count * dt.itemsize:
        raise error(f"{where}: expected {count * dt.itemsize} bytes for shape {list(shape)} of {dt.name}, got {size}")


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
    _check_size(dt, shape, len(raw), where, error)
    if dt.name == "BYTES":
        array = _split_bytes(raw, element_count(shape), where, error)
    else:
        array = np.frombuffer(raw, dtype=dt.numpy)
    return array.reshape(tuple(shape))


def from_contents(name: str, datatype_name: str, shape: Sequence[int], contents: object) -> Tensor:
    """A request input from typed ``InferTensorContents``: the field must be the one of its datatype."""
    dt, values = _checked_contents(name, datatype_name, shape, contents)
    return Tensor(name, dt, _storage_in_slices(name, dt, values).reshape(tuple(shape)))


def check_contents_size(name: str, datatype_name: str, shape: Sequence[int], contents: object) -> int:
    """The checks of a typed input that come before any value is converted (datatype, field, the number of
    values against the shape); returns that number."""
    return len(_checked_contents(name, datatype_name, shape, contents)[1])


def _checked_contents(
    name: str, datatype_name: str, shape: Sequence[int], contents: object
) -> tuple[DataType, Sequence[Any]]:
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
    return dt, values


def _storage_in_slices(name: str, dt: DataType, values: Sequence[Any]) -> np.ndarray:
    """``storage_array`` a slice of ``CHUNK`` values at a time: converting a repeated protobuf field makes a
    Python object per value inside one C call, which would hold the GIL for the whole field."""
    if len(values) <= CHUNK:
        return storage_array(name, dt, values)
    first = storage_array(name, dt, values[:CHUNK])
    array = np.empty(len(values), dtype=first.dtype)
    array[:CHUNK] = first
    for start in range(CHUNK, len(values), CHUNK):
        array[start : start + CHUNK] = storage_array(name, dt, values[start : start + CHUNK])
    return array


def raw_view(tensor: Tensor) -> bytes | memoryview:
    """The raw wire bytes of a tensor without copying them where its array is already row-major: a byte view
    (``len`` is its size in bytes) that keeps the array alive."""
    if tensor.datatype.name == "BYTES":
        return serialize_bytes(tensor.array)
    array = np.ascontiguousarray(tensor.array)
    return memoryview(array.reshape(-1).view(np.uint8))


def to_raw(tensor: Tensor) -> bytes:
    """The raw wire bytes of a tensor (row-major, whatever the array's memory layout)."""
    if tensor.datatype.name == "BYTES":
        return serialize_bytes(tensor.array)
    return np.ascontiguousarray(tensor.array).tobytes()


def _check_shape(name: str, shape: Sequence[int]) -> None:
    for dim in shape:
        if dim < 0:
            raise InvalidRequest(f"input '{name}': shape {list(shape)} has a negative dimension")
