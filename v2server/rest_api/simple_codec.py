"""The simple REST styles (``/v1/{model}/{selector}`` and ``/predict``) <-> the core's protobuf messages.

Pure functions: a body and the model's config in, ``ModelInferRequest`` messages out (datatypes from the
config); the responses in, a JSON document out. Inference itself is the core's. This module only knows the
styles' layouts: values become arrays through :class:`~v2server.rest_api.content_types.SimpleCodec` (the V2
``np`` mapping, so a bad value gets the error ``/v2`` gives it) and raw bytes through :mod:`v2server.tensors`.

``/v1`` reads ``data`` as a single request or as a batch from the model's inputs (see :func:`is_batch`):
a single request holds the arguments (one input: ``data`` itself; several: a list in input order); a batch
is a list of rows ``[ID, arg1, ..., argN]``. A scalar input (``dims: [1]``) takes a JSON scalar (or a
one-element list), a BYTES input a string (or a JSON object / number, sent as its JSON text), a tensor input
nested lists as deep as its ``dims``. Rows become one request per ``max_batch_size`` rows, stacked on the batch
dimension, when the model batches; one request per row when it does not.

``/predict`` maps input names to values; a value with one more dimension than the input's ``dims`` is a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import model_config_pb2 as mc
from v2server.datatypes import DataType, from_config_type
from v2server.errors import InvalidRequest, PayloadTooLarge
from v2server.rest_api import chunked_json
from v2server.rest_api.content_types import SimpleCodec
from v2server.tensors import Tensor, bfloat16_to_float32, output_array, to_raw

__all__ = [
    "RESPONSE_FORMATS",
    "Plan",
    "SimpleModel",
    "V1Options",
    "is_batch",
    "parse_alias_version",
    "parse_batch_flag",
    "parse_timeout",
    "predict_answer",
    "predict_plan",
    "selector_version",
    "v1_answer",
    "v1_options",
    "v1_plan",
]

_CODEC = SimpleCodec()

#: one input's values for every row of a request: one array, the rows first, or one array per row
_Column = np.ndarray | list[np.ndarray]


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str
    datatype: DataType
    dims: tuple[int, ...]

    @property
    def scalar(self) -> bool:
        """One element per row (``dims: [1]``): a JSON scalar stands for it."""
        return self.dims in ((1,), ())


@dataclass(frozen=True, slots=True)
class SimpleModel:
    """What the simple styles need of a model's config: its inputs, outputs and batching."""

    name: str
    max_batch_size: int
    inputs: tuple[_Spec, ...]
    outputs: tuple[_Spec, ...]

    @classmethod
    def from_config(cls, config: mc.ModelConfig) -> SimpleModel:
        def spec(tensor: mc.ModelInput | mc.ModelOutput) -> _Spec:
            return _Spec(tensor.name, from_config_type(mc.DataType.Name(tensor.data_type)), tuple(tensor.dims))

        return cls(config.name, config.max_batch_size, tuple(map(spec, config.input)), tuple(map(spec, config.output)))


@dataclass(frozen=True, slots=True)
class V1Options:
    """The fields of a ``/v1`` body beside ``data`` (Modelbit's names); a field we do not know is ignored.

    Attributes:
        response_webhook: the URL an asynchronous request's result is POSTed to (None: answer synchronously).
        response_webhook_ignore_timeout: an asynchronous job is not held to ``--max-response-timeout-secs``.
        response_timeout: seconds the request (or job) may run; past it 504, its queued work dropped.
        response_format: ``"links"``: answer ``{"data": URL}``, the answer stored (``v2server.results``).
    """

    response_webhook: str | None = None
    response_webhook_ignore_timeout: bool = False
    response_timeout: float | None = None
    response_format: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """The core requests for one simple-style request, and how to read their answers back."""

    model: SimpleModel
    requests: tuple[pb.ModelInferRequest, ...]
    rows_per_request: tuple[int, ...]  # 0: an unbatched request (the model has no batch dimension)
    ids: tuple[Any, ...] | None  # /v1 batch IDs in row order; None for a single request
    batch: bool
    options: V1Options = V1Options()  # /v1 only: the body's fields beside "data"


# --- small parsers ----------------------------------------------------------------------------------------


def selector_version(selector: str) -> str | None:
    """``latest`` -> "" (the highest ready version), digits -> themselves, anything else (an alias) -> None."""
    if selector == "latest":
        return ""
    return selector if selector.isascii() and selector.isdigit() else None


def parse_batch_flag(text: str | None) -> bool | None:
    """``?batch=true|false`` forces a reading of ``data``; absent, the model's inputs decide."""
    if text is None:
        return None
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise InvalidRequest(f"query parameter 'batch' must be true or false, got '{text}'")


def parse_timeout(text: str | None) -> float | None:
    """``?timeout=SECONDS``: a positive number, or None when absent."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InvalidRequest(f"query parameter 'timeout' must be a positive number of seconds, got '{text}'")
    return value


def parse_alias_version(body: bytes) -> int:
    """The version of ``PUT /v1/{model}/aliases/{alias}``'s body ``{"version": 3}``."""
    document = _json(body)
    version = document.get("version") if isinstance(document, dict) else None
    if isinstance(version, str) and version.isascii() and version.isdigit():
        version = int(version)
    if type(version) is not int or version < 1:
        raise InvalidRequest('the body must be a JSON object such as {"version": 3} (a positive version number)')
    return version


def _json(body: bytes) -> Any:
    try:
        return chunked_json.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None


# --- /v1 ---------------------------------------------------------------------------------------------------


def is_batch(model: SimpleModel, data: Any) -> bool:
    """Whether ``data`` reads as a batch: a non-empty list whose every element is a row ``[ID, arg1, ...,
    argN]`` with a string or number ID and each argument shaped as its input takes it (nesting and fixed
    sizes, checked along the first element). Valid single-request data never has that form."""
    n = len(model.inputs)
    return (
        isinstance(data, list)
        and bool(data)
        and all(
            isinstance(row, list)
            and len(row) == n + 1
            and _is_id(row[0])
            and all(_fits(value, spec) for value, spec in zip(row[1:], model.inputs, strict=True))
            for row in data
        )
    )


def v1_plan(
    model: SimpleModel, version: str, body: bytes, batch: bool | None = None, max_rows: int = 0
) -> Plan:
    """The core requests for a ``/v1`` body ``{"data": ...}``; ``batch`` forces a reading when not None.

    A batch of more than ``max_rows`` rows (0: no limit) is refused before any row is read: its length and
    its first row say what it is.
    """
    document = _json(body)
    try:
        return _v1_plan(model, version, document, batch, max_rows)
    finally:
        chunked_json.discard(document)  # a large document is freed here, in steps (see discard)


def _v1_plan(model: SimpleModel, version: str, document: Any, batch: bool | None, max_rows: int) -> Plan:
    if not isinstance(document, dict) or "data" not in document:
        raise InvalidRequest("the body must be a JSON object with a 'data' member")
    options = v1_options(document)
    data = document["data"]
    if (
        max_rows
        and isinstance(data, list)
        and len(data) > max_rows
        and (batch or (batch is None and is_batch(model, data[:1])))
    ):
        raise _too_many_rows(len(data), max_rows)
    if batch is None:
        batch = is_batch(model, data)
    if not batch:
        row = _single_row(model, data)
        return _plan(model, version, [[array] for array in row], 1, None, batch=False, options=options)
    ids, columns = _batch_columns(model, data)
    return _plan(model, version, columns, len(ids), ids, batch=True, options=options)


def v1_options(document: dict[str, Any]) -> V1Options:
    """The known fields of a ``/v1`` body beside ``data``, checked (400 naming the field); others are ignored."""
    webhook = document.get("response_webhook")
    if webhook is not None and not (isinstance(webhook, str) and webhook):
        raise InvalidRequest("'response_webhook' must be a URL (a string), such as \"https://example.com/hook\"")
    ignore = document.get("response_webhook_ignore_timeout", False)
    if not isinstance(ignore, bool):
        raise InvalidRequest("'response_webhook_ignore_timeout' must be true or false")
    if ignore and webhook is None:
        raise InvalidRequest("'response_webhook_ignore_timeout' applies to asynchronous requests: add 'response_webhook'")
    timeout = document.get("response_timeout")
    if timeout is not None and not (
        isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and math.isfinite(timeout) and timeout > 0
    ):
        raise InvalidRequest(f"'response_timeout' must be a positive number of seconds, got {_text(timeout)}")
    response_format = _response_format(document)
    if response_format is not None and webhook is not None:
        # a webhook receives the result in its POST body; a link there would only add a second fetch
        raise InvalidRequest("'response_format' applies to synchronous requests: drop it or 'response_webhook'")
    return V1Options(webhook, ignore, None if timeout is None else float(timeout), response_format)


#: the values of a ``/v1`` body's ``response_format``: ``links`` answers ``{"data": URL}`` (absent: the answer)
RESPONSE_FORMATS = ("links",)


def _response_format(document: dict[str, Any]) -> str | None:
    value = document.get("response_format")
    if value is not None and value not in RESPONSE_FORMATS:
        raise InvalidRequest(
            f"'response_format' must be one of {list(RESPONSE_FORMATS)} (or absent), got {_text(value)}"
        )
    return value  # type: ignore[no-any-return]


def v1_answer(plan: Plan, responses: Sequence[pb.ModelInferResponse]) -> dict[str, Any]:
    """``{"data": result}`` or, for a batch, ``{"data": [[ID, result], ...]}`` sorted by ID."""
    results = _results(plan, responses)
    if not plan.batch:
        return {"data": results[0]}
    assert plan.ids is not None
    pairs = sorted(zip(plan.ids, results, strict=True), key=lambda pair: _id_key(pair[0]))
    return {"data": [[identifier, result] for identifier, result in pairs]}


def _too_many_rows(rows: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"a batch of {rows} rows exceeds the limit of {limit} rows per request (--max-batch-rows); "
        "send it as several requests"
    )


def _single_row(model: SimpleModel, data: Any) -> list[np.ndarray]:
    n = len(model.inputs)
    if n == 1:
        values = [data]
    elif isinstance(data, list) and len(data) == n:
        values = data
    else:
        names = ", ".join(spec.name for spec in model.inputs)
        raise InvalidRequest(
            f"model '{model.name}' takes {n} arguments ({names}): 'data' must be a list of {n} values in that "
            "order, or a batch of rows [ID, " + names + "]"
        )
    return [_argument(value, spec) for value, spec in zip(values, model.inputs, strict=True)]


def _batch_columns(model: SimpleModel, data: Any) -> tuple[tuple[Any, ...], list[_Column]]:
    """The IDs of a batch and, per input, its rows' values: one array for all rows where they convert as one
    (numpy does the loop), else one array per row."""
    form = "[ID, " + ", ".join(spec.name for spec in model.inputs) + "]"
    if not isinstance(data, list) or not data:
        raise InvalidRequest(f"a batch must be a non-empty list of rows {form}")
    ids: list[Any] = []
    seen: set[tuple[int, Any]] = set()
    for index, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(model.inputs) + 1:
            raise InvalidRequest(f"batch row {index} must be a list {form}")
        identifier = row[0]
        if not _is_id(identifier):
            raise InvalidRequest(f"batch row {index}: the ID must be a string or a number, got {_text(identifier)}")
        key = _id_key(identifier)
        if key in seen:
            raise InvalidRequest(f"batch ID {_text(identifier)} is used more than once")
        seen.add(key)
        ids.append(identifier)
    columns = [_column(data, position, spec) for position, spec in enumerate(model.inputs, start=1)]
    return tuple(ids), columns


def _column(data: list[list[Any]], position: int, spec: _Spec) -> _Column:
    """Every row's value of one input: one array shaped ``(rows, *dims)`` when the values convert as one
    rectangular array of the right depth; else one array per row, which also finds the row at fault."""
    values = [row[position] for row in data]
    if spec.dims:  # a scalar input's values may be JSON scalars: one array of shape (rows,), then (rows, 1)
        try:
            array = _array(values, spec)
        except InvalidRequest:
            array = None
        if array is not None:
            if spec.scalar and array.ndim == 1:
                array = array.reshape(-1, 1)
            if array.ndim == len(spec.dims) + 1:
                return array
    arrays: list[np.ndarray] = []
    for row, value in zip(data, values, strict=True):
        try:
            arrays.append(_argument(value, spec))
        except InvalidRequest as exc:
            raise InvalidRequest(f"row {_text(row[0])}, {exc.message}") from None
    return arrays


def _results(plan: Plan, responses: Sequence[pb.ModelInferResponse]) -> list[Any]:
    """Each row's result, in row order: the value of a single output, else an object by output name."""
    names = [spec.name for spec in plan.model.outputs]
    columns = _output_columns(plan, responses)
    results: list[Any] = []
    for count, outputs in zip(plan.rows_per_request, columns, strict=True):
        present = [name for name in names if name in outputs]
        rows = max(count, 1)
        if len(present) == 1:
            results.extend(outputs[present[0]])
        else:
            results.extend({name: outputs[name][j] for name in present} for j in range(rows))
    return results


def _is_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _id_key(value: Any) -> tuple[int, Any]:
    """Numbers sort before strings; 1 and 1.0 are the same ID."""
    return (1, value) if isinstance(value, str) else (0, value)


def _fits(value: Any, spec: _Spec) -> bool:
    if spec.scalar and not isinstance(value, list):
        return _is_leaf(value, spec)
    for dim in spec.dims:
        if not isinstance(value, list) or (dim != -1 and len(value) != dim):
            return False
        if not value:
            return True
        value = value[0]
    return _is_leaf(value, spec)


def _is_leaf(value: Any, spec: _Spec) -> bool:
    if spec.datatype.name == "BYTES":
        return not isinstance(value, list) and value is not None
    return isinstance(value, (int, float, bool))


# --- /predict ----------------------------------------------------------------------------------------------


def predict_plan(model: SimpleModel, version: str, body: bytes, max_rows: int = 0) -> Plan:
    """The core requests for a ``/predict`` body mapping input names to values; a batch of more than
    ``max_rows`` rows (0: no limit) is refused before any value is converted."""
    document = _json(body)
    try:
        return _predict_plan(model, version, document, max_rows)
    finally:
        chunked_json.discard(document)


def _predict_plan(model: SimpleModel, version: str, document: Any, max_rows: int) -> Plan:
    if not isinstance(document, dict):
        raise InvalidRequest("the body must be a JSON object mapping input names to values")
    for spec in model.inputs:
        if spec.name not in document:
            raise InvalidRequest(f"Missing required input: '{spec.name}'")
    unknown = [name for name in document if name not in {spec.name for spec in model.inputs}]
    if unknown:
        raise InvalidRequest(f"Unknown input: '{unknown[0]}' (model '{model.name}' takes {[s.name for s in model.inputs]})")
    if max_rows:
        for spec in model.inputs:
            value = document[spec.name]
            if isinstance(value, list) and len(value) > max_rows and _depth(value) == len(spec.dims) + 1:
                raise _too_many_rows(len(value), max_rows)
    arrays: list[np.ndarray] = []
    batched: list[bool] = []
    for spec in model.inputs:
        value = document[spec.name]
        if not spec.scalar and not isinstance(value, list):
            raise InvalidRequest(f"Invalid input type for '{spec.name}': expected array")
        array = _array(value, spec)
        if spec.scalar and array.ndim == 0:
            array = array.reshape(1)
        if array.ndim not in (len(spec.dims), len(spec.dims) + 1):
            raise InvalidRequest(
                f"Invalid input shape for '{spec.name}': {array.ndim} dimensions, expected {len(spec.dims)} "
                f"(dims {list(spec.dims)}) or {len(spec.dims) + 1} for a batch"
            )
        arrays.append(array)
        batched.append(array.ndim == len(spec.dims) + 1)
    if any(batched) and not all(batched):
        names = [spec.name for spec, b in zip(model.inputs, batched, strict=True) if not b]
        raise InvalidRequest(f"some inputs are batches and {names} are not: send every input as a batch or none")
    batch = bool(batched) and all(batched)
    if batch:
        counts = {len(array) for array in arrays}
        if len(counts) != 1:
            raise InvalidRequest(f"the batched inputs have different numbers of rows: {sorted(counts)}")
        return _plan(model, version, list(arrays), counts.pop(), None, batch=True)
    return _plan(model, version, [[array] for array in arrays], 1, None, batch=False)


def predict_answer(plan: Plan, responses: Sequence[pb.ModelInferResponse]) -> dict[str, Any]:
    """Output names to values; for a batch, each value is the list of the rows' values."""
    columns = _output_columns(plan, responses)
    answer: dict[str, Any] = {}
    for spec in plan.model.outputs:
        values = [value for outputs in columns if spec.name in outputs for value in outputs[spec.name]]
        if values:
            answer[spec.name] = values if plan.batch else values[0]
    return answer


def _depth(value: Any) -> int:
    """How deep lists nest, judged along their first elements."""
    depth = 0
    while isinstance(value, list):
        depth += 1
        if not value:
            break
        value = value[0]
    return depth


# --- shared: arrays, requests, responses -------------------------------------------------------------------


def _argument(value: Any, spec: _Spec) -> np.ndarray:
    """One row's value of an input, shaped as its ``dims`` (a scalar input's JSON scalar becomes ``[x]``)."""
    array = _array(value, spec)
    if spec.scalar and array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != len(spec.dims):
        raise InvalidRequest(
            f"argument '{spec.name}': expected {_describe(spec)}, got a value nested {array.ndim} deep"
        )
    return array


def _describe(spec: _Spec) -> str:
    if spec.scalar:
        return "a string or JSON object" if spec.datatype.name == "BYTES" else "a number"
    return f"lists nested {len(spec.dims)} deep (dims {list(spec.dims)}) of {spec.datatype.name}"


def _array(value: Any, spec: _Spec) -> np.ndarray:
    """A JSON value as an array of the input's storage dtype, shaped as its nesting (a JSON scalar: shape ()).

    The value rules (JSON kinds, integer range, FP16/BF16 narrowing) and their messages are the ones ``/v2``
    applies: the same codec and :func:`v2server.tensors.storage_array` do the work.
    """
    if isinstance(value, list):
        return _CODEC.decode_nested(value, spec.datatype.name, spec.name)
    return _CODEC.decode_nested([value], spec.datatype.name, spec.name).reshape(())


def _plan(
    model: SimpleModel, version: str, columns: list[_Column], rows: int, ids: tuple[Any, ...] | None, batch: bool,
    options: V1Options = V1Options(),
) -> Plan:
    """One request per ``max_batch_size`` rows, stacked on the batch dimension, when the model batches; one
    request per row when it does not. ``columns`` holds each input's rows (see :func:`_column`)."""
    requests: list[pb.ModelInferRequest] = []
    counts: list[int] = []
    size = model.max_batch_size
    if size > 0:
        for start in range(0, rows, size):
            arrays = [_rows_of(column, start, size, spec) for column, spec in zip(columns, model.inputs, strict=True)]
            requests.append(_request(model, version, arrays))
            counts.append(min(size, rows - start))
    else:
        for row in range(rows):
            requests.append(_request(model, version, [column[row] for column in columns]))
            counts.append(0)
    return Plan(model, tuple(requests), tuple(counts), ids, batch, options)


def _rows_of(column: _Column, start: int, size: int, spec: _Spec) -> np.ndarray:
    """Rows ``start`` to ``start + size`` of an input as one array with the batch dimension first."""
    if isinstance(column, np.ndarray):
        return column[start : start + size]
    rows = column[start : start + size]
    shapes = {row.shape for row in rows}
    if len(shapes) > 1:
        raise InvalidRequest(
            f"argument '{spec.name}': the rows have different shapes {sorted(list(s) for s in shapes)}, which one "
            "batch cannot hold; send them as separate requests"
        )
    return np.stack(rows)


def _request(model: SimpleModel, version: str, arrays: Sequence[np.ndarray]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model.name, model_version=version)
    for spec, array in zip(model.inputs, arrays, strict=True):
        request.inputs.add(name=spec.name, datatype=spec.datatype.name, shape=array.shape)
        request.raw_input_contents.append(to_raw(Tensor(spec.name, spec.datatype, array)))
    return request


def _output_columns(plan: Plan, responses: Sequence[pb.ModelInferResponse]) -> list[dict[str, list[Any]]]:
    """Per response, each output's values as JSON, one per row (an unbatched response: one row)."""
    specs = {spec.name: spec for spec in plan.model.outputs}
    columns: list[dict[str, list[Any]]] = []
    for count, response in zip(plan.rows_per_request, responses, strict=True):
        outputs: dict[str, list[Any]] = {}
        for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
            spec = specs.get(output.name)
            if spec is None:
                continue
            array = _output(output, raw)
            outputs[output.name] = [_value(array, spec)] if count == 0 else _row_values(array, count, spec)
        columns.append(outputs)
    return columns


def _row_values(array: np.ndarray, count: int, spec: _Spec) -> list[Any]:
    """The values of the first ``count`` rows of a batched output, as :func:`_value` gives each, in one pass."""
    rows = array[:count]
    if rows.dtype == object:
        return [_value(row, spec) for row in rows]
    if spec.scalar and math.prod(rows.shape[1:]) == 1:
        return rows.reshape(-1).tolist()  # type: ignore[no-any-return]
    return rows.tolist()  # type: ignore[no-any-return]


def _output(output: pb.ModelInferResponse.InferOutputTensor, raw: bytes) -> np.ndarray:
    array = output_array(output.name, output.datatype, output.shape, raw)
    return bfloat16_to_float32(array) if output.datatype == "BF16" else array


def _value(array: np.ndarray, spec: _Spec) -> Any:
    """An output value as JSON: a scalar for ``dims: [1]``, else nested lists; BYTES as UTF-8 text."""
    if array.dtype == object:
        array = np.array([_decode(item) for item in array.reshape(-1)], dtype=object).reshape(array.shape)
    if spec.scalar and array.size == 1:
        return array.reshape(-1)[0].item() if array.dtype != object else array.reshape(-1)[0]
    return array.tolist()


def _decode(item: bytes) -> str:
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError:
        return item.decode("latin-1")


def _text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)
