"""A request's sequence parameters (``sequence_id``, ``sequence_start``, ``sequence_end``), read once.

tritonclient sends them only when its ``sequence_id`` is not 0 or ``""``, and then always both flags: over
gRPC the id is an ``int64_param`` (a Python int) or a ``string_param`` (a str), the flags ``bool_param``; over
REST they are JSON values, which the gateway turns into the same parameters (a JSON integer above int64
becomes ``uint64_param``). Triton reads the id as an unsigned 64-bit correlation id, so a negative
``int64_param`` means its two's complement, as in Triton.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from v2server._proto import grpc_service_pb2 as pb
from v2server.errors import InvalidRequest

__all__ = ["SequenceControl", "SequenceId", "sequence_control"]

SequenceId = int | str
"""A correlation id: an unsigned 64-bit integer or a string (0 and "" mean "not in a sequence")."""

_ID_KINDS = ("int64_param", "uint64_param", "string_param")


@dataclass(frozen=True, slots=True)
class SequenceControl:
    """What a request says about the sequence it belongs to."""

    id: SequenceId
    start: bool = False
    end: bool = False

    @property
    def in_sequence(self) -> bool:
        return self.id not in (0, "")


def sequence_control(request: pb.ModelInferRequest) -> SequenceControl | None:
    """The request's sequence parameters, or None when it has none.

    Raises:
        InvalidRequest: a parameter of the wrong type, with Triton's message.
    """
    parameters = request.parameters
    if "sequence_id" not in parameters and "sequence_start" not in parameters and "sequence_end" not in parameters:
        return None
    sequence_id: SequenceId = 0
    if "sequence_id" in parameters:
        parameter = parameters["sequence_id"]
        kind = parameter.WhichOneof("parameter_choice")
        if kind not in _ID_KINDS:
            raise InvalidRequest(
                "invalid value type for 'sequence_id' parameter, expected int64_param or string_param."
            )
        sequence_id = getattr(parameter, kind)
        if kind == "int64_param":
            sequence_id = int(sequence_id) % (1 << 64)
    return SequenceControl(sequence_id, _flag(parameters, "sequence_start"), _flag(parameters, "sequence_end"))


def _flag(parameters: Mapping[str, pb.InferParameter], key: str) -> bool:
    if key not in parameters:
        return False
    parameter = parameters[key]
    if parameter.WhichOneof("parameter_choice") != "bool_param":
        raise InvalidRequest(f"invalid value type for '{key}' parameter, expected bool_param.")
    return bool(parameter.bool_param)
