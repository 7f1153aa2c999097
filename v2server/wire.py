"""Large tensors between the wire and the model without the protobuf runtime's copies.

Parsing a ``ModelInferRequest`` copies every raw input into the message, and reading an entry back copies it
again; building a ``ModelInferResponse`` copies every raw output into the message and serialising it copies
them once more. For 1 MiB tensors those four copies cost over a third of what gRPC itself does per request
(``python -m bench.breakdown``: docs/bench/breakdown/; docs/benchmark.md). So:

- ``split_infer_request`` parses a large request's small fields with protobuf and leaves its
  ``raw_input_contents`` (field 7) as views of the received bytes;
- ``InferAnswer`` is a response whose outputs stay the model's arrays until ``SerializeToString`` writes
  the message in one pass (its small fields by protobuf, then each output as field 6, which the wire format
  allows in any order).

Both fall back to plain protobuf where anything is unusual, so what a client sees never differs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from v2server._proto import grpc_service_pb2 as pb

__all__ = ["SPLIT_ABOVE_BYTES", "SPLIT_MAX_FIELDS", "Buffer", "InferAnswer", "SplitRequest", "serialize_answer", "split_infer_request"]

#: a raw tensor's bytes: ``bytes``, or a byte-format ``memoryview`` (``len`` is the size in bytes)
Buffer = bytes | memoryview

#: Requests smaller than this are parsed whole: their raw entries are too small for copies to matter, and
#: protobuf's own parser is faster than walking the fields here.
SPLIT_ABOVE_BYTES = 64 * 1024
#: The fields are walked in Python, on the event loop: a request with more top-level fields than this (a real
#: one has a few per input) is left to protobuf's parser, so that a body of millions of tiny fields costs what
#: it always did, not a Python step each.
SPLIT_MAX_FIELDS = 256

_RAW_INPUT_FIELD = 7  # ModelInferRequest.raw_input_contents
_RAW_OUTPUT_TAG = b"\x32"  # ModelInferResponse.raw_output_contents: field 6, length-delimited
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


@dataclass(frozen=True, slots=True)
class SplitRequest:
    """A parsed ``ModelInferRequest`` without its raw entries, and those entries as views of the wire bytes."""

    message: pb.ModelInferRequest
    raw: list[memoryview]


def split_infer_request(data: bytes) -> pb.ModelInferRequest | SplitRequest:
    """``ModelInferRequest.FromString(data)``, but for a large request with raw entries, a ``SplitRequest``.

    Malformed bytes are left to protobuf's parser, which raises what it always raises.
    """
    if len(data) <= SPLIT_ABOVE_BYTES:
        return pb.ModelInferRequest.FromString(data)
    view = memoryview(data)
    rest: list[memoryview] = []
    raw: list[memoryview] = []
    try:
        for field, start, value_start, end in _fields(view):
            if field == _RAW_INPUT_FIELD:
                raw.append(view[value_start:end])
            else:
                rest.append(view[start:end])
    except ValueError:
        return pb.ModelInferRequest.FromString(data)
    if not raw:
        return pb.ModelInferRequest.FromString(data)
    return SplitRequest(pb.ModelInferRequest.FromString(b"".join(rest)), raw)


def _fields(view: memoryview) -> Iterator[tuple[int, int, int, int]]:
    """Each top-level field of a message: its number, where its tag starts, where its value starts (after a
    length prefix) and where it ends. Raises ``ValueError`` on anything malformed or unusual (groups)."""
    position, size, count = 0, len(view), 0
    while position < size:
        count += 1
        if count > SPLIT_MAX_FIELDS:
            raise ValueError("too many fields to walk")
        start = position
        key, position = _varint(view, position)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise ValueError("field number 0")
        if wire_type == _VARINT:
            _, position = _varint(view, position)
            value_start = position
        elif wire_type == _LEN:
            length, value_start = _varint(view, position)
            position = value_start + length
        elif wire_type == _I64:
            value_start = position
            position += 8
        elif wire_type == _I32:
            value_start = position
            position += 4
        else:
            raise ValueError(f"wire type {wire_type}")
        if position > size:
            raise ValueError("truncated")
        yield field, start, value_start, position


def _varint(view: memoryview, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(view) or shift > 63:
            raise ValueError("bad varint")
        byte = view[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


_SMALL_VARINTS = [bytes([value]) for value in range(0x80)]


def _encode_varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class InferAnswer:
    """A ``ModelInferResponse`` whose raw outputs are still the model's buffers (bytes-like, ``len`` in bytes).

    It reads as the message does (``outputs``, ``id``, ``model_name``, ...; ``raw_output_contents`` is the list
    of buffers), ``SerializeToString`` writes the wire form with one copy of each output, and ``to_message``
    makes the protobuf message where one is needed (inside a stream response).
    """

    __slots__ = ("message", "raw_output_contents")

    def __init__(self, message: pb.ModelInferResponse, raw: Sequence[Any]) -> None:
        self.message = message  # every field but raw_output_contents
        self.raw_output_contents = list(raw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message, name)

    def SerializeToString(self) -> bytes:  # protobuf's name, so that gRPC serialises it as one
        parts: list[Any] = [self.message.SerializeToString()]
        for raw in self.raw_output_contents:
            parts += (_RAW_OUTPUT_TAG, _encode_varint(len(raw)), raw)
        return b"".join(parts)

    def to_message(self) -> pb.ModelInferResponse:
        """The whole response as a protobuf message (its outputs copied into it)."""
        message = pb.ModelInferResponse()
        message.CopyFrom(self.message)
        message.raw_output_contents.extend(bytes(raw) for raw in self.raw_output_contents)
        return message


def serialize_answer(answer: InferAnswer | pb.ModelInferResponse) -> bytes:
    """gRPC's response serialiser for ``ModelInfer``: either form."""
    return answer.SerializeToString()
