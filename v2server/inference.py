"""``ModelInferRequest`` -> tensors -> ``ModelInferResponse``: the protobuf side of one inference.

The rules that tritonclient depends on live here: raw contents are indexed over the inputs that use them,
typed and raw contents never mix, and every output gets exactly one ``raw_output_contents`` entry, in the
order of ``outputs``. A request with no inputs and a single raw entry (REST's raw binary request) is
completed from the model's signature here, in the core, so that every transport sends one message for it.

Decoding checks every input's size against its shape (``check_contents``) before any per-element work, and
says how much per-element work follows, so that the caller can run a large one in a worker thread
(``OFFLOAD_STEPS``; the same for ``encode_response`` with ``encode_steps``).
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from v2server._proto import grpc_service_pb2 as pb
from v2server.datatypes import DATATYPES
from v2server.errors import InvalidRequest, V2Error
from v2server.shared_memory import SHM_PARAMETERS
from v2server.signature import Signature
from v2server.tensors import (
    Tensor,
    check_contents_size,
    check_raw_size,
    count_bytes_elements,
    element_count,
    from_checked_raw,
    from_contents,
    from_raw,
    raw_view,
)
from v2server.wire import Buffer, InferAnswer

__all__ = [
    "OFFLOAD_STEPS",
    "InputSizes",
    "check_contents",
    "complete_raw_binary",
    "decode_inputs",
    "encode_response",
    "encode_steps",
    "is_raw_binary",
    "requested_outputs",
    "response_id",
    "schedule_parameters",
]

_SHM_PARAMETER = "shared_memory_region"

#: Decoding a request or encoding a response that takes more per-element steps than this runs in a worker
#: thread (``asyncio.to_thread``), a smaller one inline on the event loop, where a thread hop (~50-100 us)
#: would cost more than the work. A step (walking a BYTES length prefix and building its ``bytes``, converting
#: one typed value, prefixing one BYTES output) costs 0.1-0.3 us, so the most done inline is a few ms of the
#: loop's time (design rule 13). Raw fixed-size tensors take no step per element: ``np.frombuffer`` in, one
#: copy out (a copy holds the GIL wherever it runs, so a thread would not spare the loop).
OFFLOAD_STEPS = 16_384
#: A vectorised pass over raw BYTES (checking that every length prefix is the same) costs about a step per
#: this many bytes.
_BYTES_PER_STEP = 1024


@dataclass(frozen=True, slots=True)
class InputSizes:
    """What ``check_contents`` learned of a request's inputs before decoding them."""

    #: per-element steps decoding will take (compare with ``OFFLOAD_STEPS``)
    steps: int
    #: bytes of input data the request holds (raw entries, and typed values at their datatype's size)
    nbytes: int


def is_raw_binary(request: pb.ModelInferRequest, raw: Sequence[Buffer] | None = None) -> bool:
    """Whether ``request`` is a raw binary request: no inputs described, one raw entry holding the input
    (``raw``: its raw entries, when they travel beside the message)."""
    return not request.inputs and len(request.raw_input_contents if raw is None else raw) == 1


def complete_raw_binary(request: pb.ModelInferRequest, signature: Signature, raw: bytes | None = None) -> None:
    """Describe the one input of a raw binary request (Triton's ``Inference-Header-Content-Length: 0``).

    The model must have exactly one input; its name and datatype come from the config and its shape is the
    config's dims, with batch 1 in front when the model batches and a single -1 dim derived from the byte
    count (the element count for BYTES). The request is completed in place, so the raw bytes are not copied.
    """
    if len(signature.inputs) != 1:
        raise InvalidRequest(
            f"a raw binary request (Inference-Header-Content-Length: 0) needs a model with exactly one input; "
            f"'{request.model_name}' has {len(signature.inputs)}"
        )
    spec = next(iter(signature.inputs.values()))
    dims = list(spec.dims)
    if dims.count(-1) == 1:
        raw = request.raw_input_contents[0] if raw is None else raw
        known = math.prod(d for d in dims if d != -1)
        count = count_bytes_elements(raw) if spec.datatype.name == "BYTES" else len(raw) // spec.datatype.itemsize
        dims[dims.index(-1)] = count // known if known else 0
    shape = ([1] if signature.max_batch_size > 0 else []) + dims
    request.inputs.add(name=spec.name, datatype=spec.datatype.name, shape=shape)


def check_contents(request: pb.ModelInferRequest, raw: Sequence[bytes] | None = None) -> InputSizes:
    """Every check of the inputs' contents that comes before per-element work: shared memory, raw indexing,
    typed and raw not mixed, each raw entry's byte count against its shape (exact for fixed-size datatypes,
    at least 4 bytes per BYTES element) and each typed field's number of values. Names, datatypes and shapes
    against the model were checked before (``Signature.check_inputs``).

    ``raw`` is ``request.raw_input_contents`` as a list, when the caller has it (protobuf makes a new copy of
    an entry at every access, so callers take them once).
    """
    raw = list(request.raw_input_contents) if raw is None else raw
    steps = nbytes = used = 0
    for tensor in request.inputs:
        if _SHM_PARAMETER in tensor.parameters:
            continue  # read from its region (shared_memory.bind_request checks it): no raw entry, no contents
        if raw:
            if tensor.HasField("contents"):
                raise InvalidRequest(
                    f"input '{tensor.name}': typed contents and raw_input_contents cannot be mixed in one request"
                )
            if used >= len(raw):
                raise InvalidRequest(
                    f"input '{tensor.name}': raw_input_contents has {len(raw)} entries, fewer than the inputs"
                )
            size = len(raw[used])
            check_raw_size(tensor.name, tensor.datatype, tensor.shape, size)
            if tensor.datatype == "BYTES":  # the walk never goes past one element more than the shape says
                steps += element_count(tensor.shape) + size // _BYTES_PER_STEP
            nbytes += size
            used += 1
        else:
            count = check_contents_size(tensor.name, tensor.datatype, tensor.shape, tensor.contents)
            steps += count
            nbytes += count * max(DATATYPES[tensor.datatype].itemsize, 1)  # BYTES: its elements at 1 byte
    if used != len(raw):
        raise InvalidRequest(f"raw_input_contents has {len(raw)} entries for {used} inputs")
    return InputSizes(steps, nbytes)


def decode_inputs(
    request: pb.ModelInferRequest,
    raw: Sequence[Buffer] | None = None,
    in_memory: Mapping[str, Tensor] | None = None,
    checked: bool = False,
) -> list[Tensor]:
    """The request's input tensors, from raw or typed contents (names, datatypes and shapes checked before),
    or, for those that name a shared-memory region, from ``in_memory`` (``shared_memory.read_inputs``).

    Every input's size is checked (``check_contents``) before any input is decoded; ``checked``: the caller
    did that with these very ``raw`` entries. A large request takes ``check_contents(...).steps`` steps here,
    which the caller runs in a worker thread.
    """
    raw = list(request.raw_input_contents) if raw is None else raw
    if not checked:
        check_contents(request, raw)
    if in_memory is not None:
        return _decode_beside_memory(request, raw, in_memory)
    if raw:
        return [
            from_checked_raw(t.name, t.datatype, t.shape, data) for t, data in zip(request.inputs, raw, strict=True)
        ]
    return [from_contents(t.name, t.datatype, t.shape, t.contents) for t in request.inputs]


def _decode_beside_memory(
    request: pb.ModelInferRequest, raw: Sequence[bytes], in_memory: Mapping[str, Tensor]
) -> list[Tensor]:
    """Inputs when some live in shared memory: raw entries are indexed over the other inputs only."""
    entries = iter(raw)
    tensors = []
    for t in request.inputs:
        if _SHM_PARAMETER in t.parameters:
            if t.name not in in_memory:
                raise V2Error(f"input '{t.name}' names a shared-memory region that was not read")
            tensors.append(in_memory[t.name])
        elif raw:
            tensors.append(from_raw(t.name, t.datatype, t.shape, next(entries)))
        else:
            tensors.append(from_contents(t.name, t.datatype, t.shape, t.contents))
    return tensors


def requested_outputs(request: pb.ModelInferRequest, signature: Signature) -> list[str]:
    """Names of the outputs to return, in the order asked (all, in config order, when none are asked)."""
    if not request.outputs:
        return list(signature.outputs)
    names: list[str] = []
    for output in request.outputs:
        if output.name not in signature.outputs:
            raise InvalidRequest(
                f"unexpected inference output '{output.name}' for model '{signature.model_name}' "
                f"(it has {list(signature.outputs)})"
            )
        if output.name in names:
            raise InvalidRequest(f"output '{output.name}' is requested more than once")
        names.append(output.name)
    return names


def encode_steps(outputs: Sequence[Tensor]) -> int:
    """Per-element steps ``encode_response`` takes for ``outputs`` (compare with ``OFFLOAD_STEPS``)."""
    return sum(t.array.size for t in outputs if t.datatype.name == "BYTES")


# Response ids for requests that bring none: unique within this process (a counter) and across processes and
# restarts (a random prefix), without the cost of a uuid4 per request.
_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)


def response_id(request: pb.ModelInferRequest) -> str:
    """The request's ``id``, or a new one: KServe's data model (``InferenceResponse.id: str``) requires an id
    on every response, so a response never goes out without one (README, "Response ids")."""
    return request.id or f"{_ID_PREFIX}-{next(_ID_COUNTER)}"


def encode_response(
    request: pb.ModelInferRequest,
    model_name: str,
    version: int,
    outputs: Sequence[Tensor],
    in_memory: Collection[str] = (),
) -> InferAnswer:
    """The response with one raw entry per output, in order (the arrays themselves: ``InferAnswer``). An output written to shared memory (named in
    ``in_memory``) gets an empty entry, as from Triton, and the request's shared-memory parameters back."""
    response = pb.ModelInferResponse(
        model_name=model_name,
        model_version=str(version),
        id=response_id(request),
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(name=t.name, datatype=t.datatype.name, shape=t.shape)
            for t in outputs
        ],
    )
    answer = InferAnswer(response, [b"" if t.name in in_memory else raw_view(t) for t in outputs])
    if in_memory:
        asked = {output.name: output.parameters for output in request.outputs}
        for output in response.outputs:
            if output.name in in_memory:
                for key in SHM_PARAMETERS:
                    if key in asked[output.name]:
                        output.parameters[key].CopyFrom(asked[output.name][key])
    return answer


def schedule_parameters(request: pb.ModelInferRequest) -> tuple[int, int]:
    """The request's ``priority`` and queue ``timeout`` (microseconds), 0 when absent.

    tritonclient sends priority as ``uint64_param`` over gRPC; REST JSON integers arrive as ``int64_param``.
    """
    values = []
    for key in ("priority", "timeout"):
        parameter = request.parameters.get(key)
        kind = parameter.WhichOneof("parameter_choice") if parameter is not None else None
        if kind is None:
            values.append(0)
        elif kind in ("int64_param", "uint64_param") and getattr(parameter, kind) >= 0:
            values.append(getattr(parameter, kind))
        else:
            raise InvalidRequest(f"request parameter '{key}' must be a non-negative integer")
    return values[0], values[1]
