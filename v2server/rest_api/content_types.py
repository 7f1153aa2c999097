"""MLServer ``content_type`` codecs: how JSON ``data`` maps to a tensor's elements and back.

One small class per content type, registered by its ``name`` when the class is defined (MLServer's
``codecs/base.py`` idea), so adding a content type is adding a class. A codec only converts values: JSON
``data`` -> the flat element values of a V2 datatype (``decode``), and element values -> JSON-ready values
(``encode``). Shapes, raw bytes and the request layout are :mod:`v2server.rest_api.json_codec`'s job.

``np`` is also what the gateway uses when no content type is given: it is the plain V2 JSON mapping
(numbers for numeric types, booleans for BOOL, UTF-8 strings for BYTES). Numeric data is converted with numpy
in C loops, after one ``set(map(type, data))`` pass that catches what numpy would silently coerce (``true``
into INT32, ``1.5`` into INT8, ``"3"`` into FP32).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
from typing import Any, ClassVar

import numpy as np
import orjson

from v2server._proto import grpc_service_pb2 as pb
from v2server.datatypes import DATATYPES
from v2server.errors import InvalidRequest

__all__ = [
    "Base64Codec",
    "Codec",
    "DatetimeCodec",
    "JsonCodec",
    "NumpyCodec",
    "PandasCodec",
    "StringCodec",
    "check_columns",
    "codec_names",
    "get_codec",
]

_CODECS: dict[str, Codec] = {}

# float16 and bfloat16 are narrowed from float32/float64 under errstate(over="raise"): a finite JSON number
# that would become inf is the client's error, not a silent inf.
_BF16_INF = 0x7F80


class Codec:
    """Base of the content-type codecs; a subclass with a ``name`` registers itself.

    Attributes:
        name: the ``content_type`` value that selects the codec.
        bytes_only: the codec only makes sense for BYTES tensors.
        request_only: the codec names a request-level encoding (``pd``) and may not be set on a tensor.
    """

    name: ClassVar[str] = ""
    bytes_only: ClassVar[bool] = False
    request_only: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            _CODECS[cls.name] = cls()

    def supports(self, datatype: str) -> bool:
        """Whether the codec can carry tensors of ``datatype``."""
        return datatype == "BYTES" or not self.bytes_only

    def decode(self, data: list[Any], datatype: str, input_name: str) -> list[bytes] | np.ndarray:
        """JSON ``data`` -> flat element values: bytes for BYTES, an array of the storage dtype otherwise."""
        raise NotImplementedError

    def encode(self, values: np.ndarray, datatype: str, output_name: str) -> list[Any] | np.ndarray:
        """Flat element values -> JSON-ready values (a list, or a numeric array for orjson's numpy support)."""
        raise NotImplementedError

    def _check(self, datatype: str, where: str) -> None:
        if not self.supports(datatype):
            raise InvalidRequest(f"{where}: content_type '{self.name}' needs datatype BYTES, got {datatype}")


def codec_names() -> list[str]:
    """The registered content types, sorted."""
    return sorted(_CODECS)


def get_codec(name: str, where: str) -> Codec:
    """The codec registered as ``name``; ``where`` ("input 'A'", "the request") names the place for errors."""
    try:
        return _CODECS[name]
    except KeyError:
        raise InvalidRequest(
            f"unknown content_type '{name}' on {where}; known: {', '.join(codec_names())}"
        ) from None


def check_columns(request: pb.ModelInferRequest) -> None:
    """With request-level ``pd`` every input is a DataFrame column, so all must share ``shape[0]`` (the rows)."""
    first: pb.ModelInferRequest.InferInputTensor | None = None
    for tensor in request.inputs:
        if not tensor.shape:
            raise InvalidRequest(
                f"input '{tensor.name}': content_type 'pd' makes inputs columns, which need a first "
                "dimension (the rows), but its shape is []"
            )
        if first is None:
            first = tensor
        elif tensor.shape[0] != first.shape[0]:
            raise InvalidRequest(
                f"content_type 'pd': input '{tensor.name}' has {tensor.shape[0]} rows but input "
                f"'{first.name}' has {first.shape[0]}; every column needs the same shape[0]"
            )


class NumpyCodec(Codec):
    """``np``: the plain V2 mapping, and the default: numbers as is, booleans, BYTES as UTF-8 strings."""

    name = "np"

    def decode(self, data: list[Any], datatype: str, input_name: str) -> list[bytes] | np.ndarray:
        flat, types = _flatten(data, input_name)
        if datatype == "BYTES":
            return _utf8(flat, types, input_name)
        return _to_numeric(flat, types, datatype, input_name)

    def encode(self, values: np.ndarray, datatype: str, output_name: str) -> list[Any] | np.ndarray:
        if datatype == "BYTES":
            return _text(values, output_name)
        if datatype == "BF16":  # the bfloat16 bits are the top half of a float32
            return (values.astype(np.uint32) << 16).view(np.float32)
        return values


class PandasCodec(NumpyCodec):
    """``pd`` (request level only): inputs are DataFrame columns, each decoded by its own content type or
    ``np``; :func:`check_columns` checks the row counts."""

    name = "pd"
    request_only = True


class StringCodec(Codec):
    """``str``: BYTES elements as UTF-8 strings (what ``np`` does for BYTES, but refusing other datatypes)."""

    name = "str"
    bytes_only = True

    def decode(self, data: list[Any], datatype: str, input_name: str) -> list[bytes] | np.ndarray:
        self._check(datatype, f"input '{input_name}'")
        flat, types = _flatten(data, input_name)
        return _utf8(flat, types, input_name)

    def encode(self, values: np.ndarray, datatype: str, output_name: str) -> list[Any] | np.ndarray:
        self._check(datatype, f"output '{output_name}'")
        return _text(values, output_name)


class Base64Codec(Codec):
    """``base64``: arbitrary bytes travel as base64 text, the way to put non-UTF-8 BYTES in JSON."""

    name = "base64"
    bytes_only = True

    def decode(self, data: list[Any], datatype: str, input_name: str) -> list[bytes] | np.ndarray:
        self._check(datatype, f"input '{input_name}'")
        flat, types = _flatten(data, input_name)
        _require(flat, types, {str}, input_name, "base64 strings")
        try:
            return [base64.b64decode(item, validate=True) for item in flat]
        except (binascii.Error, ValueError):
            bad = next(item for item in flat if not _is_base64(item))
            raise InvalidRequest(f"input '{input_name}': {_show(bad)} is not valid base64") from None

    def encode(self, values: np.ndarray, datatype: str, output_name: str) -> list[Any] | np.ndarray:
        self._check(datatype, f"output '{output_name}'")
        return [base64.b64encode(item).decode("ascii") for item in values]


class DatetimeCodec(Codec):
    """``datetime``: ISO 8601 text, checked on the way in and kept as its UTF-8 bytes (models see text)."""

    name = "datetime"
    bytes_only = True

    def decode(self, data: list[Any], datatype: str, input_name: str) -> list[bytes] | np.ndarray:
        self._check(datatype, f"input '{input_name}'")
        flat, types = _flatten(data, input_name)
        _require(flat, types, {str}, input_name, "ISO 8601 strings")
        for item in flat:
            try:
                datetime.datetime.fromisoformat(item)
            except ValueError:
                raise InvalidRequest(
                    f"input '{input_name}': {_show(item)} is not an ISO 8601 datetime"
                ) from None
        return [item.encode() for item in flat]

    def encode(self, values: np.ndarray, datatype: str, output_name: str) -> list[Any] | np.ndarray:
        self._check(datatype, f"output '{output_name}'")
        return _text(values, output_name)


class JsonCodec(Codec):
    """``json``: each BYTES element holds one JSON value (of any type), stored as its serialized JSON.

    ``data`` is not flattened here: a nested list is one element's value, not more rows.
    """

    name = "json"
    bytes_only = True

    def decode(self, data: list[Any], datatype: str, input_name: str) -> list[bytes] | np.ndarray:
        self._check(datatype, f"input '{input_name}'")
        if not isinstance(data, list):
            raise InvalidRequest(f"input '{input_name}': data must be a JSON array")
        return [orjson.dumps(item) for item in data]

    def encode(self, values: np.ndarray, datatype: str, output_name: str) -> list[Any] | np.ndarray:
        self._check(datatype, f"output '{output_name}'")
        try:
            return [orjson.loads(item) for item in values]
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"output '{output_name}': an element is not valid JSON ({exc})") from None


# --- shared conversions ------------------------------------------------------------------------------------


def _flatten(data: Any, name: str) -> tuple[list[Any], set[type]]:
    """Row-major flat elements of flat or nested ``data``, and the set of their Python types."""
    if not isinstance(data, list):
        raise InvalidRequest(f"input '{name}': data must be a JSON array")
    types = set(map(type, data))
    if list not in types:
        return data, types
    ragged = InvalidRequest(f"input '{name}': nested data must be a rectangular array")
    try:
        flat: list[Any] = np.asarray(data, dtype=object).reshape(-1).tolist()
    except ValueError:  # numpy refuses some ragged nestings outright and keeps others as list elements
        raise ragged from None
    types = set(map(type, flat))
    if list in types:
        raise ragged
    return flat, types


_JSON_TYPE = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    dict: "object",
    type(None): "null",
}


def _show(value: Any) -> str:
    """A value as it looked in JSON, for messages."""
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


def _require(flat: list[Any], types: set[type], allowed: set[type], name: str, what: str) -> None:
    """Refuse elements whose JSON type is not ``allowed``, naming the first one."""
    if not types <= allowed:
        bad = next(item for item in flat if type(item) not in allowed)
        raise InvalidRequest(
            f"input '{name}': data must be {what}, got {_JSON_TYPE.get(type(bad), '?')} {_show(bad)}"
        )


def _utf8(flat: list[Any], types: set[type], name: str) -> list[bytes]:
    _require(flat, types, {str}, name, "strings for BYTES")
    return [item.encode() for item in flat]


def _text(values: np.ndarray, name: str) -> list[str]:
    """BYTES elements as JSON strings; bytes that are not UTF-8 cannot be JSON strings."""
    try:
        return [item.decode() for item in values]
    except UnicodeDecodeError:
        raise InvalidRequest(
            f"output '{name}': BYTES data is not valid UTF-8 and cannot be returned as JSON; request the output "
            "with parameters.binary_data = true (or content_type 'base64')"
        ) from None


def _to_numeric(flat: list[Any], types: set[type], datatype: str, name: str) -> np.ndarray:
    """Validated JSON numbers/booleans -> an array of ``datatype``'s storage dtype, with numpy doing the loop."""
    storage = DATATYPES[datatype].numpy
    if datatype == "BOOL":
        _require(flat, types, {bool}, name, "booleans for BOOL")
        return np.asarray(flat, dtype=np.bool_)
    if storage.kind in "iu" and datatype != "BF16":
        _require(flat, types, {int}, name, f"integers for {datatype}")
        return _to_integers(flat, storage, datatype, name)
    _require(flat, types, {int, float}, name, f"numbers for {datatype}")
    try:
        wide = np.asarray(flat, dtype=np.float64)
        with np.errstate(over="raise"):
            if datatype == "BF16":
                return _to_bfloat16_bits(wide.astype(np.float32), name)
            return wide.astype(storage)
    except (OverflowError, FloatingPointError):
        raise InvalidRequest(f"input '{name}': a value is out of range for {datatype}") from None


@functools.cache
def _integer_range(storage: np.dtype) -> np.iinfo:
    return np.iinfo(storage)  # building an iinfo costs more than checking a small tensor


def _to_integers(flat: list[int], storage: np.dtype, datatype: str, name: str) -> np.ndarray:
    info = _integer_range(storage)
    try:
        if datatype == "UINT64":  # wider than int64; a negative is refused in Python, as older numpy wraps it
            if flat and min(flat) < 0:
                raise OverflowError
            wide = np.asarray(flat, dtype=np.uint64)
        else:
            wide = np.asarray(flat, dtype=np.int64)
            if wide.size and (wide.min() < info.min or wide.max() > info.max):
                raise OverflowError
    except OverflowError:
        bad = next(item for item in flat if not info.min <= item <= info.max)
        raise InvalidRequest(f"input '{name}': value {bad} is out of range for {datatype}") from None
    return wide.astype(storage, copy=False)


def _to_bfloat16_bits(values: np.ndarray, name: str) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even as torch and ml_dtypes do."""
    bits = values.view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    if np.any((rounded & 0x7FFF) == _BF16_INF):
        raise InvalidRequest(f"input '{name}': a value is out of range for BF16")
    return rounded


def _is_base64(item: str) -> bool:
    try:
        base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True
