"""``sequence_batching`` in ``config.pbtxt``: validation, Triton's defaults, and the parsed form the scheduler uses.

Validation follows Triton's ``ValidateModelConfig`` and ``GetBooleanSequenceControlProperties`` /
``GetTypedSequenceControlProperties`` (their messages, word for word, where Triton has one); the defaults
follow ``NormalizeModelConfig``: ``max_sequence_idle_microseconds`` 1,000,000 when unset, and an ``oldest``
strategy without ``preferred_batch_size`` prefers ``max_batch_size``.

Control inputs (START, END, READY, CORRID) and implicit state inputs are inputs of the *model* that the server
fills; they are not inputs of the *request*. So the client's signature (metadata, request checks) is the
config's ``input``/``output``, and :func:`backend_signature` adds the controls and the state tensors for the
backend, which binds them to the model's arguments by name like any other input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from v2server._proto import model_config_pb2 as mc
from v2server.datatypes import DataType, from_config_type
from v2server.errors import ModelLoadError
from v2server.signature import Signature, TensorSpec

__all__ = [
    "DEFAULT_IDLE_US",
    "BooleanControl",
    "CorridControl",
    "SequenceSpec",
    "StateSpec",
    "backend_signature",
    "complete_sequence_batching",
]

#: Triton's SEQUENCE_IDLE_DEFAULT_MICROSECONDS
DEFAULT_IDLE_US = 1_000_000

_Control = mc.ModelSequenceBatching.Control
_BOOLEAN_KINDS = (_Control.CONTROL_SEQUENCE_START, _Control.CONTROL_SEQUENCE_END, _Control.CONTROL_SEQUENCE_READY)
_FALSE_TRUE = ("int32_false_true", "fp32_false_true", "bool_false_true")
_CORRID_TYPES = (mc.TYPE_UINT64, mc.TYPE_INT64, mc.TYPE_UINT32, mc.TYPE_INT32, mc.TYPE_STRING)


@dataclass(frozen=True, slots=True)
class BooleanControl:
    """A START, END or READY control input: the values the model reads for false and true."""

    name: str
    kind: int  # ModelSequenceBatching.Control.Kind
    datatype: DataType
    false: Any
    true: Any

    def array(self, values: list[bool], batched: bool) -> np.ndarray:
        """One element per row (``[rows, 1]`` when the model batches, ``[1]`` when it does not)."""
        array: np.ndarray = np.where(np.array(values, dtype=bool), self.true, self.false).astype(self.datatype.numpy)
        return array.reshape(-1, 1) if batched else array.reshape(1)


@dataclass(frozen=True, slots=True)
class CorridControl:
    """The CORRID control input: each row's correlation id in the configured datatype."""

    name: str
    datatype: DataType

    def array(self, ids: list[int | str], batched: bool) -> np.ndarray:
        if self.datatype.name == "BYTES":
            array = np.empty(len(ids), dtype=object)
            array[:] = [value.encode("utf-8") if isinstance(value, str) else b"" for value in ids]
        else:
            # Triton copies the uint64 id's low bytes into a narrower type: the same wrap-around as astype
            unsigned = np.array([value if isinstance(value, int) else 0 for value in ids], dtype=np.uint64)
            array = unsigned.astype(self.datatype.numpy)
        return array.reshape(-1, 1) if batched else array.reshape(1)


@dataclass(frozen=True, slots=True)
class StateSpec:
    """One implicit state: the model reads it as ``input_name`` and writes its next value as ``output_name``."""

    input_name: str
    output_name: str
    datatype: DataType
    dims: tuple[int, ...]
    initial: np.ndarray  # one row's value at the start of a sequence (no batch dimension)


@dataclass(frozen=True, slots=True)
class SequenceSpec:
    """A model's ``sequence_batching``, parsed once (the config was validated by
    :func:`complete_sequence_batching`)."""

    model: str
    max_batch_size: int
    strategy: Literal["direct", "oldest"]
    idle_us: int
    slots_per_instance: int
    max_queue_delay_us: int
    minimum_slot_utilization: float
    preferred_batch_sizes: tuple[int, ...]
    controls: tuple[BooleanControl, ...]
    corrid: CorridControl | None
    states: tuple[StateSpec, ...]

    @classmethod
    def from_config(cls, config: mc.ModelConfig) -> SequenceSpec:
        batching = config.sequence_batching
        max_batch_size = config.max_batch_size
        controls: list[BooleanControl] = []
        corrid: CorridControl | None = None
        for control_input in batching.control_input:
            for control in control_input.control:
                if control.kind == _Control.CONTROL_SEQUENCE_CORRID:
                    corrid = CorridControl(control_input.name, _datatype(control.data_type))
                else:
                    controls.append(_boolean_control(control_input.name, control))
        oldest = batching.oldest if batching.HasField("oldest") else None
        slots = max(1, max_batch_size)
        if oldest is not None and oldest.max_candidate_sequences > 0:
            slots = oldest.max_candidate_sequences
        return cls(
            model=config.name,
            max_batch_size=max_batch_size,
            strategy="oldest" if oldest is not None else "direct",
            idle_us=batching.max_sequence_idle_microseconds or DEFAULT_IDLE_US,
            slots_per_instance=slots,
            max_queue_delay_us=(
                oldest.max_queue_delay_microseconds if oldest is not None
                else batching.direct.max_queue_delay_microseconds
            ),
            minimum_slot_utilization=0.0 if oldest is not None else batching.direct.minimum_slot_utilization,
            preferred_batch_sizes=(
                tuple(sorted(set(oldest.preferred_batch_size))) if oldest is not None else ()
            ),
            controls=tuple(controls),
            corrid=corrid,
            states=tuple(_state_spec(state) for state in batching.state),
        )


def _datatype(data_type: int) -> DataType:
    return from_config_type(mc.DataType.Name(data_type))


def _boolean_control(name: str, control: mc.ModelSequenceBatching.Control) -> BooleanControl:
    if control.int32_false_true:
        datatype, (false, true) = _datatype(mc.TYPE_INT32), control.int32_false_true
    elif control.fp32_false_true:
        datatype, (false, true) = _datatype(mc.TYPE_FP32), control.fp32_false_true
    else:
        datatype, (false, true) = _datatype(mc.TYPE_BOOL), control.bool_false_true
    return BooleanControl(name, control.kind, datatype, false, true)


def _state_spec(state: mc.ModelSequenceBatching.State) -> StateSpec:
    datatype = _datatype(state.data_type)
    if state.initial_state:
        shape = tuple(state.initial_state[0].dims)
    else:  # as Triton: zeros, a variable dimension starting at 1
        shape = tuple(1 if dim == -1 else dim for dim in state.dims)
    initial = np.full(shape, b"", dtype=object) if datatype.name == "BYTES" else np.zeros(shape, datatype.numpy)
    return StateSpec(state.input_name, state.output_name, datatype, tuple(state.dims), initial)


def backend_signature(config: mc.ModelConfig, signature: Signature) -> Signature:
    """The signature the backend binds: the client's, plus the control and state inputs and the state outputs
    of a sequence model (the same signature for any other model)."""
    if not config.HasField("sequence_batching"):
        return signature
    spec = SequenceSpec.from_config(config)
    inputs = dict(signature.inputs)
    outputs = dict(signature.outputs)
    for control in spec.controls:
        inputs[control.name] = TensorSpec(control.name, control.datatype, (1,), None)
    if spec.corrid is not None:
        inputs[spec.corrid.name] = TensorSpec(spec.corrid.name, spec.corrid.datatype, (1,), None)
    for state in spec.states:
        inputs[state.input_name] = TensorSpec(state.input_name, state.datatype, state.dims, None)
        outputs[state.output_name] = TensorSpec(state.output_name, state.datatype, state.dims, None)
    return Signature(signature.model_name, signature.max_batch_size, inputs, outputs)


def complete_sequence_batching(config: mc.ModelConfig) -> None:
    """Check ``config.sequence_batching`` and fill Triton's defaults (nothing to do without one).

    Raises:
        ModelLoadError: a setting Triton refuses, or one this server does not support; the message says which.
    """
    if not config.HasField("sequence_batching"):
        return
    name = config.name
    batching = config.sequence_batching
    if batching.max_sequence_idle_microseconds == 0:
        batching.max_sequence_idle_microseconds = DEFAULT_IDLE_US
    if batching.iterative_sequence:
        raise ModelLoadError(f"sequence batching 'iterative_sequence' is not supported for {name}")
    if config.response_cache.enable:
        raise ModelLoadError(
            f"Response Cache does not currently support model {name} with sequence batching scheduler. "
            "Please disable the response cache."
        )
    if config.model_warmup:
        raise ModelLoadError(f"model_warmup is not supported with sequence batching for {name}")
    taken = {tensor.name for tensor in config.input}
    _check_controls(batching, name, taken)
    _check_states(config, name, taken)
    if batching.HasField("oldest"):
        oldest = batching.oldest
        if oldest.max_candidate_sequences < 0:
            raise ModelLoadError(f"sequence batching max_candidate_sequences must be >= 0 for {name}")
        if not oldest.preferred_batch_size and config.max_batch_size > 0:
            oldest.preferred_batch_size.append(config.max_batch_size)
        for size in oldest.preferred_batch_size:
            if size <= 0:
                raise ModelLoadError(f"sequence batching preferred batch size must be positive for {name}")
            if size > config.max_batch_size:
                raise ModelLoadError(f"sequence batching preferred batch size must be <= max batch size for {name}")
    else:
        utilization = batching.direct.minimum_slot_utilization
        if not 0.0 <= utilization <= 1.0:
            raise ModelLoadError(f"sequence batching minimum slot utilization must be in range (0.0, 1.0] for {name}")


def _check_controls(batching: mc.ModelSequenceBatching, name: str, taken: set[str]) -> None:
    seen_kinds: set[int] = set()
    seen_names: set[str] = set()
    for control_input in batching.control_input:
        tensor = control_input.name
        if not tensor:
            raise ModelLoadError(f"sequence batching control tensor must have a name for {name}")
        if tensor in seen_names:
            raise ModelLoadError(
                f"sequence batching control tensor '{tensor}' is specified for multiple control kinds for {name}"
            )
        seen_names.add(tensor)
        if tensor in taken:
            raise ModelLoadError(
                f"sequence batching control tensor '{tensor}' is also a model input for {name}; "
                "the server fills control inputs, so they must not be listed in 'input'"
            )
        if len(control_input.control) != 1:
            raise ModelLoadError(
                f"sequence batching control tensor '{tensor}' must have exactly one control for {name}"
            )
        for control in control_input.control:
            kind = _Control.Kind.Name(control.kind)
            if control.kind in seen_kinds:
                raise ModelLoadError(f"sequence batching specifies multiple {kind} tensors for {name}")
            seen_kinds.add(control.kind)
            given = [field for field in _FALSE_TRUE if getattr(control, field)]
            if control.kind == _Control.CONTROL_SEQUENCE_CORRID:
                if given:
                    raise ModelLoadError(
                        "sequence batching must not specify either 'int32_false_true', 'fp32_false_true' or "
                        f"'bool_false_true' for {kind} for {name}"
                    )
                if control.data_type not in _CORRID_TYPES:
                    raise ModelLoadError(
                        f"unexpected data type for control {kind} for {name}. Allowed data types are "
                        "TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING"
                    )
                continue
            if not given:
                raise ModelLoadError(
                    "sequence batching must specify either 'int32_false_true', 'fp32_false_true' or "
                    f"'bool_false_true' for {kind} for {name}"
                )
            if len(given) > 1:
                raise ModelLoadError(
                    "sequence batching specifies more than one from 'int32_false_true', 'fp32_false_true' and "
                    f"'bool_false_true' for {kind} for {name}"
                )
            if len(getattr(control, given[0])) != 2:
                raise ModelLoadError(
                    f"sequence batching control '{given[0]}' must have exactly 2 entries for {kind} for {name}"
                )
    taken |= seen_names


def _check_states(config: mc.ModelConfig, name: str, taken: set[str]) -> None:
    outputs = {tensor.name for tensor in config.output}
    for state in config.sequence_batching.state:
        where = f"state input '{state.input_name}'"
        if not state.input_name or not state.output_name:
            raise ModelLoadError(f"sequence batching state must have an input_name and an output_name for {name}")
        if state.input_name in taken:
            raise ModelLoadError(f"{where} is also a model input or control tensor for {name}")
        taken.add(state.input_name)
        if state.output_name in outputs:
            raise ModelLoadError(f"state output '{state.output_name}' is also a model output for {name}")
        outputs.add(state.output_name)
        try:
            _datatype(state.data_type)
        except ValueError:
            raise ModelLoadError(f"{where}: data_type must be set to a TYPE_* value for {name}") from None
        if any(dim < -1 or dim == 0 for dim in state.dims):
            raise ModelLoadError(f"{where}: dims {list(state.dims)} may only hold positive sizes or -1 for {name}")
        if state.use_growable_memory:
            raise ModelLoadError(f"{where}: 'use_growable_memory' is not supported for {name}")
        if len(state.initial_state) > 1:
            raise ModelLoadError(
                f"initial_state field for state input '{state.input_name}' must contain exactly one or zero "
                f"element. Found '{len(state.initial_state)}' elements."
            )
        for initial in state.initial_state:
            if initial.WhichOneof("state_data") != "zero_data":
                raise ModelLoadError(
                    f"{where}: only 'zero_data' initial states are supported for {name} ('data_file' is not)"
                )
            if initial.data_type != state.data_type:
                raise ModelLoadError(f"{where}: initial_state data_type differs from the state's for {name}")
            dims = list(initial.dims)
            if any(dim < 1 for dim in dims) or len(dims) != len(state.dims) or any(
                want not in (-1, dim) for dim, want in zip(dims, state.dims, strict=True)
            ):
                raise ModelLoadError(
                    f"{where}: initial_state dims {dims} must be positive and fit the state's dims "
                    f"{list(state.dims)} for {name}"
                )
