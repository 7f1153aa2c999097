"""MLServer ``content_type`` codecs: how JSON ``data`` maps to a tensor's elements and back.

One small class per content type, registered by its ``name`` when the class is defined (MLServer's
``codecs/base.py`` idea), so adding a content type is adding a class. A codec only converts values: JSON
``data`` -> the flat element values of a V2 datatype (``decode``), and element values -> JSON-ready values
(``encode``). The request layout is the callers' job (:mod:`~v2server.rest_api.json_codec` for ``/v2``,
:mod:`~v2server.rest_api.simple_codec` for ``/v1`` and ``/predict``); the numeric narrowing rules (integer
range, FP16/FP32/BF16 overflow) are :func:`v2server.tensors.storage_array`'s, so every style shares them.

``np`` is also what the gateway uses when no content type is given: it is the plain V2 JSON mapping
(numbers for numeric types, booleans for BOOL, UTF-8 strings for BYTES). What this module adds to the
narrowing rules is the JSON side: one ``set(map(type, data))`` pass that catches what numpy would silently
coerce (``true`` into INT32, ``1.5`` into INT8, ``"3"`` into FP32); the conversion itself runs in numpy's C
loops. :class:`SimpleCodec` is ``np`` for the simple styles, which also take any JSON value as a BYTES element.
"""

from __future__ import annotations

import base64
import binascii
import collections
import datetime
import itertools
import math
import operator
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, cast

import numpy as np
import orjson

from v2server._proto import grpc_service_pb2 as pb
from v2server.datatypes import DATATYPES
from v2server.errors import InvalidRequest
from v2server.offload import CHUNK_ELEMENTS
from v2server.rest_api import chunked_json
from v2server.tensors import bfloat16_to_float32, bytes_array, storage_array

__all__ = [
    "Base64Codec",
    "Codec",
    "DatetimeCodec",
    "JsonCodec",
    "NumpyCodec",
    "PandasCodec",
    "PandasJsonCodec",
    "SimpleCodec",
    "StringCodec",
    "check_columns",
    "codec_names",
    "get_codec",
]

_CODECS: dict[str, Codec] = {}


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
        """JSON ``data`` -> flat element values: bytes for BYTES (a list or an object array), an array of the
        storage dtype otherwise."""
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
        return self.decode_nested(data, datatype, input_name).reshape(-1)

    def decode_nested(self, data: list[Any], datatype: str, input_name: str) -> np.ndarray:
        """JSON ``data`` -> an array of the storage dtype whose shape is the nesting of ``data``.

        The simple styles have no ``shape`` member: they read the shape from the nesting.
        """
        flat, types, shape = _flatten(data, input_name)
        try:
            return self._values(flat, types, datatype, input_name).reshape(shape)
        finally:
            if flat is not data:
                chunked_json.discard(flat)  # a large flat copy is freed in steps (see discard)

    def _values(self, flat: list[Any], types: set[type], datatype: str, input_name: str) -> np.ndarray:
        if datatype == "BYTES":
            return bytes_array(_utf8(flat, types, input_name))
        return _to_numeric(flat, types, datatype, input_name)

    def decode_pieces(
        self, pieces: Iterable[list[Any]], count: int, datatype: str, input_name: str
    ) -> np.ndarray:
        """Flat JSON values of a numeric ``datatype`` that arrive in pieces (``count`` in all) -> one array of
        its storage dtype, each piece checked and converted as it comes, so only one piece is ever held as
        Python objects."""
        array: np.ndarray | None = None
        filled = 0
        for piece in pieces:
            if list in (types := _types(piece)):
                raise InvalidRequest(f"input '{input_name}': nested data must be a rectangular array")
            part = self._values(piece, types, datatype, input_name)
            if array is None:
                array = np.empty(count, dtype=part.dtype)
            array[filled : filled + len(part)] = part
            filled += len(part)
        if array is None:
            array = self._values([], set(), datatype, input_name)
        if filled != count:
            raise InvalidRequest(
                f"input '{input_name}': data has {filled} elements, not the {count} its text holds"
            )
        return array

    def encode(self, values: np.ndarray, datatype: str, output_name: str) -> list[Any] | np.ndarray:
        if datatype == "BYTES":
            return _text(values, output_name)
        if datatype == "BF16":
            return bfloat16_to_float32(values)
        return values


class SimpleCodec(NumpyCodec):
    """The simple styles' mapping (``/v1``, ``/predict``; no ``content_type`` selects it, so it has no name).

    ``np``, except that a BYTES element may be any JSON value but null: a string travels as its UTF-8, any
    other value as its JSON text, so ``{"data": {"value": 10}}`` reaches a model that parses JSON.
    """

    name = ""  # not a content type a client can name: unregistered

    def _values(self, flat: list[Any], types: set[type], datatype: str, input_name: str) -> np.ndarray:
        if datatype != "BYTES":
            return super()._values(flat, types, datatype, input_name)
        _require(flat, types, {str, dict, int, float, bool}, input_name, "strings or JSON values for BYTES")
        return bytes_array(item.encode() if type(item) is str else orjson.dumps(item) for item in flat)


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
        flat, types, _ = _flatten(data, input_name)
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
        flat, types, _ = _flatten(data, input_name)
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
        flat, types, _ = _flatten(data, input_name)
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


class PandasJsonCodec(Codec):
    """``pd_json``: each BYTES element is one JSON text, carried as a JSON string (MLServer's meaning).

    MLServer's ``PandasCodec`` labels a column of objects that are not all strings (dicts, lists, mixed
    values, missing values as ``null``) this way and writes every element through ``json.dumps``; its
    ``decode_response`` runs ``json.loads`` on each element of an output so labelled. ``json`` carries the
    values themselves: the element ``{"a": 1}`` of ``json`` is the string ``'{"a": 1}'`` of ``pd_json``, and
    both reach the model as JSON text. Each text must parse, on the way in and on the way out; it is kept as sent.
    """

    name = "pd_json"
    bytes_only = True

    def decode(self, data: list[Any], datatype: str, input_name: str) -> list[bytes] | np.ndarray:
        self._check(datatype, f"input '{input_name}'")
        flat, types, _ = _flatten(data, input_name)
        _require(flat, types, {str}, input_name, "JSON texts (strings)")
        encoded = [item.encode() for item in flat]
        bad = _first_not_json(encoded)
        if bad is not None:
            raise InvalidRequest(f"input '{input_name}': {_show(flat[bad])} is not a JSON text")
        return encoded

    def encode(self, values: np.ndarray, datatype: str, output_name: str) -> list[Any] | np.ndarray:
        self._check(datatype, f"output '{output_name}'")
        texts = _text(values, output_name)
        bad = _first_not_json(values)
        if bad is not None:
            raise InvalidRequest(
                f"output '{output_name}': element {bad} ({_show(texts[bad])}) is not a JSON text"
            )
        return texts


# --- shared conversions ------------------------------------------------------------------------------------


def _flatten(data: Any, name: str) -> tuple[list[Any], set[type], tuple[int, ...]]:
    """Row-major flat elements of flat or nested ``data``, the set of their Python types, and the nesting.

    Large data is handled in pieces of :data:`CHUNK_ELEMENTS` values (one C call each), so a worker thread
    doing this hands the GIL back to the event loop between them.
    """
    if not isinstance(data, list):
        raise InvalidRequest(f"input '{name}': data must be a JSON array")
    types = _types(data)
    if list not in types:
        return data, types, (len(data),)
    flat: list[Any] = []
    shape = _flatten_nested(data, flat, name)
    types = _types(flat)
    if list in types:
        raise _ragged(name)
    return flat, types, shape


def _types(values: list[Any]) -> set[type]:
    """The Python types of ``values``' elements."""
    if len(values) <= CHUNK_ELEMENTS:
        return set(map(type, values))
    types: set[type] = set()
    for start in range(0, len(values), CHUNK_ELEMENTS):
        types.update(map(type, values[start : start + CHUNK_ELEMENTS]))
    return types


def _ragged(name: str) -> InvalidRequest:
    return InvalidRequest(f"input '{name}': nested data must be a rectangular array")


def _flatten_nested(data: list[Any], flat: list[Any], name: str) -> tuple[int, ...]:
    """Append the elements of nested ``data`` to ``flat`` in row-major order and return its shape: numpy
    takes as many rows at a time as make about :data:`CHUNK_ELEMENTS` values, and a row larger than that is
    flattened the same way, on its own."""
    if not data:
        return (0,)
    row_size = _size(data[0])
    if row_size > CHUNK_ELEMENTS and isinstance(data[0], list):
        shapes = set()
        for row in data:
            if not isinstance(row, list):
                raise _ragged(name)
            if row and isinstance(row[0], list):
                shapes.add(_flatten_nested(row, flat, name))
            else:
                flat.extend(row)
                shapes.add((len(row),))
            if len(shapes) > 1:
                raise _ragged(name)
        return (len(data), *shapes.pop())
    step = max(1, CHUNK_ELEMENTS // max(1, row_size))
    inner: tuple[int, ...] | None = None
    for start in range(0, len(data), step):
        try:
            nested = np.asarray(data[start : start + step], dtype=object)
        except ValueError:  # numpy refuses some ragged nestings outright and keeps others as list elements
            raise _ragged(name) from None
        if inner is None:
            inner = nested.shape[1:]
        elif nested.shape[1:] != inner:
            raise _ragged(name)
        flat.extend(nested.reshape(-1).tolist())
    assert inner is not None
    return (len(data), *inner)


def _size(value: Any) -> int:
    """How many elements nested lists hold, judged along their first elements."""
    size = 1
    while isinstance(value, list):
        size *= len(value)
        if not value:
            break
        value = value[0]
    return size


_JSON_KINDS: dict[str, tuple[set[type], str]] = {  # a numeric datatype's kind -> the JSON types it takes
    "bool": ({bool}, "booleans"),
    "int": ({int, float}, "integers"),  # a float only when integral (_integral_floats)
    "float": ({int, float}, "numbers"),
}

_EXACT_FLOAT_INTEGERS = 2.0**53  # beyond it neighbouring integers share a float64: which one was meant?

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
    if type(value) is float and not math.isfinite(value):
        return repr(value)  # no JSON text gives one, but orjson would show it as null
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


def _require(flat: list[Any], types: set[type], allowed: set[type], name: str, what: str) -> None:
    """Refuse elements whose JSON type is not ``allowed``, naming the first one."""
    if not types <= allowed:
        raise _refused(next(item for item in flat if type(item) not in allowed), name, what)


def _refused(bad: Any, name: str, what: str) -> InvalidRequest:
    kind = _JSON_TYPE.get(type(bad), "?")
    return InvalidRequest(f"input '{name}': data must be {what}, got {kind} {_show(bad)}")


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
    """JSON numbers/booleans of the right JSON kind -> an array of ``datatype``'s storage dtype.

    The kind is checked here (JSON's business; an integer datatype also takes integral floats, see
    :func:`_integral_floats`); the range and narrowing rules are :func:`v2server.tensors.storage_array`'s.
    """
    row = DATATYPES[datatype]
    allowed, what = _JSON_KINDS[row.kind]
    _require(flat, types, allowed, name, f"{what} for {datatype}")
    floats = row.kind == "int" and float in types  # all-int data (the usual case) goes straight to numpy
    if len(flat) <= CHUNK_ELEMENTS:
        return _numeric_part(flat, types, floats, datatype, name)
    array: np.ndarray | None = None
    for start in range(0, len(flat), CHUNK_ELEMENTS):  # one bounded numpy call at a time (see _flatten)
        part = _numeric_part(flat[start : start + CHUNK_ELEMENTS], types, floats, datatype, name)
        if array is None:
            array = np.empty(len(flat), dtype=part.dtype)
        array[start : start + len(part)] = part
    assert array is not None
    return array


def _numeric_part(values: list[Any], types: set[type], floats: bool, datatype: str, name: str) -> np.ndarray:
    """One bounded piece of :func:`_to_numeric`: integral floats of an integer datatype become integers,
    then :func:`~v2server.tensors.storage_array` converts and range-checks."""
    row = DATATYPES[datatype]
    if not floats:
        return storage_array(name, row, values)
    integers = _integral_floats(values, types == {float}, datatype, name)
    if integers is None:
        return storage_array(name, row, values)
    return storage_array(name, row, cast(Sequence[int], integers))  # it reads any sequence numpy reads


def _integral_floats(values: list[Any], all_floats: bool, datatype: str, name: str) -> np.ndarray | None:
    """Check that the floats among ``values`` (elements of an integer datatype) are integers; when all of
    ``values`` are floats, return them as int64, else None (numpy converts the mixed list exactly).

    Generated clients (``open-inference-openapi``) write an INT32 tensor as ``[0.0, 1.0]``, which MLServer and
    KServe take, so ``3.0`` and ``-0.0`` are integers here. ``3.5`` is not; neither is a float beyond 2**53,
    where JSON parsing may already have rounded the integer the client wrote (``9007199254740993.0`` reads as
    ``...992``), so which one was meant is unknown. The checks run in numpy on the float64 values; only the
    floats of a mixed piece are picked out, in C (``map``/``compress``), never by a Python loop.
    """
    if all_floats:
        picked = values
    else:
        is_float = map(operator.is_, map(type, values), itertools.repeat(float))
        picked = list(itertools.compress(values, is_float))
    numbers = np.asarray(picked, dtype=np.float64)
    exact = np.isfinite(numbers) & (numbers == np.floor(numbers)) & (np.abs(numbers) <= _EXACT_FLOAT_INTEGERS)
    if not exact.all():
        raise _refused(picked[int(np.argmin(exact))], name, f"integers for {datatype}")
    return numbers.astype(np.int64) if all_floats else None


def _first_not_json(items: list[bytes] | np.ndarray) -> int | None:
    """The index of the first element that is not one JSON text (``orjson``'s grammar), or None.

    The common case, all valid, is one pass in C (``deque(maxlen=0)`` drains ``map`` without keeping the
    parsed values); only a failure looks again for the index.
    """
    try:
        collections.deque(map(orjson.loads, items), maxlen=0)
    except orjson.JSONDecodeError:
        for index, item in enumerate(items):
            try:
                orjson.loads(item)
            except orjson.JSONDecodeError:
                return index
    return None


def _is_base64(item: str) -> bool:
    try:
        base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True
