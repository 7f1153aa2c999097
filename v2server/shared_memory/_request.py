"""The tensors of one inference request that live in shared memory: find, lease, check, read, write.

A tensor names its region with three parameters (Triton's): ``shared_memory_region`` (string),
``shared_memory_byte_size`` (integer, required) and ``shared_memory_offset`` (integer, default 0). Such an
input carries no data (gRPC: no contents and no ``raw_input_contents`` entry; REST: no ``data``), and such an
output comes back without data (gRPC: an empty raw entry; REST: no ``data``), with its shape and datatype:
the client reads the region itself.

Every check comes before any work (design rule 13): the region exists and the span lies inside it, an input's
byte size fits its shape and datatype (exactly, or at least the 4-byte prefixes for BYTES), and an output's
byte size holds the output where its shape is known before the model runs. Inputs of fixed-size datatypes in
system shared memory are read in place (``np.frombuffer`` over the mapping, no copy); outputs are copied into
their region once.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from v2server._proto import grpc_service_pb2 as pb
from v2server.datatypes import datatype
from v2server.errors import InvalidRequest
from v2server.shared_memory._region import Region
from v2server.shared_memory._registry import SharedMemoryRegistry
from v2server.signature import Signature
from v2server.tensors import Tensor, deserialize_bytes, element_count, serialize_bytes

__all__ = [
    "SHM_BYTE_SIZE",
    "SHM_OFFSET",
    "SHM_PARAMETERS",
    "SHM_REGION",
    "Placement",
    "RequestMemory",
    "bind_request",
    "read_inputs",
    "uses_shared_memory",
    "write_outputs",
]

SHM_REGION = "shared_memory_region"
SHM_OFFSET = "shared_memory_offset"
SHM_BYTE_SIZE = "shared_memory_byte_size"
SHM_PARAMETERS = (SHM_REGION, SHM_OFFSET, SHM_BYTE_SIZE)

#: a BYTES walk costs about one step per this many bytes beside one per element (as ``inference`` counts)
_BYTES_PER_STEP = 1024
#: the cost reported for a region on a device: its copies block, so they always go to a worker thread
_ALWAYS_OFFLOAD = sys.maxsize


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one tensor lives: ``byte_size`` bytes at ``offset`` in ``region`` (leased by the request)."""

    region: Region
    offset: int
    byte_size: int


@dataclass(slots=True)
class RequestMemory:
    """The placements of one request's tensors, by tensor name; its leases end with :meth:`release`."""

    inputs: dict[str, Placement] = field(default_factory=dict)
    outputs: dict[str, Placement] = field(default_factory=dict)
    _leased: list[Region] = field(default_factory=list)

    def release(self) -> None:
        """End every lease the request took (once)."""
        leased, self._leased = self._leased, []
        for region in leased:
            region.release()

    def read_steps(self, request: pb.ModelInferRequest) -> int:
        """Per-element steps :func:`read_inputs` takes (compare with ``inference.OFFLOAD_STEPS``)."""
        steps = 0
        for tensor in request.inputs:
            placement = self.inputs.get(tensor.name)
            if placement is None:
                continue
            if not placement.region.zero_copy:
                return _ALWAYS_OFFLOAD
            if tensor.datatype == "BYTES":
                steps += element_count(tensor.shape) + placement.byte_size // _BYTES_PER_STEP
        return steps

    def write_size(self, outputs: Sequence[Tensor]) -> int:
        """Bytes :func:`write_outputs` copies (compare with ``offload.INLINE_BYTES``)."""
        size = 0
        for tensor in outputs:
            placement = self.outputs.get(tensor.name)
            if placement is None:
                continue
            if not placement.region.zero_copy:
                return _ALWAYS_OFFLOAD
            size += placement.byte_size if tensor.datatype.name == "BYTES" else tensor.array.nbytes
        return size


def uses_shared_memory(request: pb.ModelInferRequest) -> bool:
    """Whether any input or requested output of ``request`` names a region."""
    return any(SHM_REGION in t.parameters for t in request.inputs) or any(
        SHM_REGION in t.parameters for t in request.outputs
    )


def bind_request(
    registry: SharedMemoryRegistry, request: pb.ModelInferRequest, signature: Signature, batch_size: int
) -> RequestMemory | None:
    """Lease and check every region ``request`` names (None when it names none).

    Names, datatypes and shapes were checked against the model before (``Signature.check_inputs``); the
    caller must :meth:`~RequestMemory.release` the result when the request ends, however it ends.
    """
    if not uses_shared_memory(request):
        return None
    memory = RequestMemory()
    try:
        for tensor in request.inputs:
            where = f"input '{tensor.name}'"
            placement = _place(registry, memory, tensor.parameters, where)
            if placement is not None:
                _check_input_size(tensor, placement, signature.model_name)
                memory.inputs[tensor.name] = placement
        for output in request.outputs:
            where = f"output '{output.name}'"
            if SHM_REGION in output.parameters and "classification" in output.parameters:
                raise InvalidRequest(f"{where}: Output can't set both 'shared_memory_region' and 'classification'")
            placement = _place(registry, memory, output.parameters, where)
            if placement is not None:
                _check_output_size(output.name, placement, signature, batch_size)
                memory.outputs[output.name] = placement
    except BaseException:
        memory.release()
        raise
    return memory


def _place(
    registry: SharedMemoryRegistry, memory: RequestMemory, parameters: Mapping[str, pb.InferParameter], where: str
) -> Placement | None:
    if SHM_REGION not in parameters:
        for name in (SHM_OFFSET, SHM_BYTE_SIZE):
            if name in parameters:
                raise InvalidRequest(f"{where}: '{name}' is set but 'shared_memory_region' is not")
        return None
    region_parameter = parameters[SHM_REGION]
    if region_parameter.WhichOneof("parameter_choice") != "string_param" or not region_parameter.string_param:
        raise InvalidRequest(f"{where}: 'shared_memory_region' must be the name of a region (a string)")
    if SHM_BYTE_SIZE not in parameters:
        raise InvalidRequest(f"{where}: 'shared_memory_byte_size' is required with 'shared_memory_region'")
    byte_size = _integer(parameters[SHM_BYTE_SIZE], SHM_BYTE_SIZE, where)
    offset = _integer(parameters[SHM_OFFSET], SHM_OFFSET, where) if SHM_OFFSET in parameters else 0
    region = registry.lease(region_parameter.string_param)
    memory._leased.append(region)
    region.check_span(offset, byte_size)
    return Placement(region, offset, byte_size)


def _integer(parameter: pb.InferParameter, name: str, where: str) -> int:
    kind = parameter.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param") or getattr(parameter, kind) < 0:
        raise InvalidRequest(f"{where}: '{name}' must be a non-negative integer")
    value: int = getattr(parameter, kind)
    return value


def _check_input_size(tensor: pb.ModelInferRequest.InferInputTensor, placement: Placement, model: str) -> None:
    where = f"input '{tensor.name}'"
    if tensor.HasField("contents"):
        raise InvalidRequest(f"{where}: an input in shared memory carries no contents")
    dt = datatype(tensor.datatype)
    count = element_count(tensor.shape)
    if dt.name == "BYTES":
        if placement.byte_size < 4 * count:
            raise InvalidRequest(
                f"{where}: shared_memory_byte_size {placement.byte_size} cannot hold {count} BYTES elements "
                "(each has a 4-byte length prefix)"
            )
    elif placement.byte_size != count * dt.itemsize:
        raise InvalidRequest(
            f"input byte size mismatch for input '{tensor.name}' for model '{model}'. "
            f"Expected {count * dt.itemsize}, got {placement.byte_size}"
        )


def _check_output_size(name: str, placement: Placement, signature: Signature, batch_size: int) -> None:
    """Refuse before the model runs when the output's size is known and will not fit."""
    spec = signature.outputs[name]
    if spec.datatype.name == "BYTES":
        return
    shape = signature.full_shape(spec)
    if signature.max_batch_size > 0:
        shape[0] = batch_size
    if any(dim < 0 for dim in shape):
        return  # known only once the model has answered: write_outputs checks it then
    _check_fits(name, placement, math.prod(shape) * spec.datatype.itemsize)


def _check_fits(name: str, placement: Placement, needed: int) -> None:
    if needed > placement.byte_size:
        raise InvalidRequest(
            f"shared memory size specified with the request for output '{name}' ({placement.byte_size} bytes) "
            f"should be at least {needed} bytes to hold the results"
        )


def read_inputs(memory: RequestMemory, request: pb.ModelInferRequest) -> dict[str, Tensor]:
    """The inputs that live in shared memory, by name (sizes checked by :func:`bind_request`).

    Fixed-size inputs in system shared memory are read-only views of the mapping; a view that would not be
    aligned for its datatype is copied (torch wants aligned storage).
    """
    tensors: dict[str, Tensor] = {}
    for tensor in request.inputs:
        placement = memory.inputs.get(tensor.name)
        if placement is None:
            continue
        dt = datatype(tensor.datatype)
        shape = tuple(tensor.shape)
        data = placement.region.read(placement.offset, placement.byte_size)
        if dt.name == "BYTES":
            array = deserialize_bytes(memoryview(data), element_count(shape), tensor.name).reshape(shape)
        else:
            if data.ctypes.data % dt.numpy.itemsize:
                data = data.copy()
            array = data.view(dt.numpy).reshape(shape)
            array.flags.writeable = False  # the client's memory: a model must not write into it
        tensors[tensor.name] = Tensor(tensor.name, dt, array)
    return tensors


def write_outputs(memory: RequestMemory, outputs: Sequence[Tensor]) -> None:
    """Copy each output that was asked into a region there; every size is checked before the first copy."""
    pending: list[tuple[Placement, np.ndarray]] = []
    for tensor in outputs:
        placement = memory.outputs.get(tensor.name)
        if placement is None:
            continue
        if tensor.datatype.name == "BYTES":
            data = np.frombuffer(serialize_bytes(tensor.array), dtype=np.uint8)
        else:
            data = np.ascontiguousarray(tensor.array).reshape(-1).view(np.uint8)
        _check_fits(tensor.name, placement, data.size)
        pending.append((placement, data))
    for placement, data in pending:
        placement.region.write(placement.offset, data)
