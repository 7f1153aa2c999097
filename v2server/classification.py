"""Triton's classification extension: an output asked for with ``classification: k`` comes back as its top k.

A requested output whose parameters hold ``classification`` (gRPC ``int64_param``, a JSON integer over REST;
tritonclient's ``InferRequestedOutput(name, class_count=k)``) is answered, instead of the model's tensor, by a
BYTES tensor of ``"<value>:<index>[:<label>]"`` strings: the k highest values of each batch row (of the whole
tensor for a model without a batch dimension), highest first, equal values in index order. Its shape is
``[batch, min(k, row elements)]``, or ``[min(k, elements)]`` without batching, as in Triton's frontends
(``classification.cc``: values as C's ``std::to_string`` writes them, ``%f`` for floats, integers plainly).
Labels come from the output's ``label_filename`` in ``config.pbtxt``, one per line, read once when the model
loads (``repository.read_labels``); an index without a label (or with an empty line) gives ``"value:index"``.

Any numeric datatype is classified (Triton refuses FP16 and BF16; they compare and print as floats here);
BOOL and BYTES outputs are refused before the model runs, as are a count that is not a positive integer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from v2server._proto import grpc_service_pb2 as pb
from v2server.datatypes import DATATYPES
from v2server.errors import InvalidRequest
from v2server.signature import Signature
from v2server.tensors import Tensor, bfloat16_to_float32, bytes_array

__all__ = ["CLASSIFICATION", "classify", "classify_steps", "requested_classes"]

#: the output parameter that asks for classification
CLASSIFICATION = "classification"

_BYTES = DATATYPES["BYTES"]


def requested_classes(request: pb.ModelInferRequest, signature: Signature) -> dict[str, int]:
    """Output name -> class count for every requested output that asks for classification (usually none).

    Checked before the model runs: the count is a positive integer and the output (as the config declares
    it) is numeric. Output names were checked against the signature before (``requested_outputs``).
    """
    counts: dict[str, int] = {}
    for output in request.outputs:
        parameter = output.parameters.get(CLASSIFICATION)
        if parameter is None:
            continue
        kind = parameter.WhichOneof("parameter_choice")
        count = getattr(parameter, kind) if kind in ("int64_param", "uint64_param") else None
        if count is None or count <= 0:
            shown = getattr(parameter, kind) if kind else "nothing"
            raise InvalidRequest(
                f"output '{output.name}': '{CLASSIFICATION}' must be a positive integer (the number of classes "
                f"to return), got {shown!r}"
            )
        spec = signature.outputs.get(output.name)
        if spec is not None and spec.datatype.kind not in ("int", "float"):
            raise InvalidRequest(
                f"output '{output.name}': '{CLASSIFICATION}' needs a numeric output; '{output.name}' is "
                f"{spec.datatype.name}"
            )
        counts[output.name] = count
    return counts


def classify_steps(outputs: Sequence[Tensor], counts: Mapping[str, int]) -> int:
    """Per-element steps ``classify`` takes (a string per class returned, a sort step per 64 values)."""
    steps = 0
    for tensor in outputs:
        count = counts.get(tensor.name)
        if count is not None:
            rows = tensor.array.shape[0] if tensor.array.ndim else 1
            steps += rows * min(count, tensor.array.size) + tensor.array.size // 64
    return steps


def classify(
    outputs: Sequence[Tensor],
    counts: Mapping[str, int],
    labels: Mapping[str, Sequence[str]],
    batched: bool,
) -> list[Tensor]:
    """``outputs`` with each one named in ``counts`` replaced by its top-k classification (see the module doc).

    ``batched``: the model has a batch dimension (``max_batch_size > 0``), so each row is classified alone.
    """
    return [
        _classify(tensor, counts[tensor.name], labels.get(tensor.name, ()), batched)
        if tensor.name in counts else tensor
        for tensor in outputs
    ]


def _classify(tensor: Tensor, count: int, labels: Sequence[str], batched: bool) -> Tensor:
    datatype = tensor.datatype
    if datatype.kind not in ("int", "float"):
        raise InvalidRequest(
            f"output '{tensor.name}': '{CLASSIFICATION}' needs a numeric output; the model returned {datatype.name}"
        )
    values = bfloat16_to_float32(tensor.array) if datatype.name == "BF16" else tensor.array
    if batched and values.ndim > 0:
        rows = values.reshape(values.shape[0], -1)
        shape: tuple[int, ...] = (values.shape[0],)
    else:
        rows = values.reshape(1, -1)
        shape = ()
    width = rows.shape[1]
    keep = min(count, width)
    # descending by value, equal values in index order: a stable ascending sort of the reversed row, reversed
    order = (width - 1) - np.argsort(rows[:, ::-1], axis=1, kind="stable")[:, ::-1][:, :keep]
    chosen = np.take_along_axis(rows, order, axis=1)
    floats = datatype.kind == "float"
    strings: list[bytes] = []
    for row_values, row_order in zip(chosen.tolist(), order.tolist(), strict=True):
        for value, index in zip(row_values, row_order, strict=True):
            text = f"{value:f}:{index}" if floats else f"{value}:{index}"
            label = labels[index] if index < len(labels) else ""
            strings.append((f"{text}:{label}" if label else text).encode())
    return Tensor(tensor.name, _BYTES, bytes_array(strings).reshape(*shape, keep))
