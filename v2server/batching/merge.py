"""Pure functions that turn several requests into one batch and one batch's outputs back into responses.

They hold no state and know nothing of asyncio, so the rules (what may share a batch, how rows are joined and
cut) are tested on their own, away from the scheduler's timing.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from itertools import accumulate, pairwise

import numpy as np

from v2server.errors import InferenceFailed
from v2server.tensors import Tensor

__all__ = ["batch_key", "merge", "split"]


def batch_key(inputs: Sequence[Tensor], outputs: Sequence[str]) -> Hashable:
    """What requests must have in common to share a batch.

    Concatenating along the batch dimension needs the same input names, datatypes and non-batch dimensions;
    one model call answers one list of requested outputs, so those must match too (in order, as the runner
    returns them in that order). The order of the inputs in a request does not matter.

    Args:
        inputs: the request's input tensors, each with its batch dimension first.
        outputs: the names of the outputs the request asked for.

    Returns:
        A hashable value; two requests may be batched together exactly when their keys are equal.
    """
    signature = sorted((tensor.name, tensor.datatype.name, tensor.shape[1:]) for tensor in inputs)
    return (tuple(signature), tuple(outputs))


def merge(requests: Sequence[Sequence[Tensor]]) -> list[Tensor]:
    """Concatenate the inputs of requests that share a :func:`batch_key`, along axis 0.

    The merged inputs follow the first request's input order; the others are matched by name. A single
    request is returned as is, without a copy. BYTES (object) arrays and BF16 (``uint16`` storage) arrays
    concatenate like any other.

    Args:
        requests: each request's input tensors.

    Returns:
        One tensor per input whose first dimension is the sum of the requests' batch sizes.
    """
    if not requests:
        raise ValueError("merge needs at least one request")
    first, *others = requests
    if not others:
        return list(first)
    by_name = [{tensor.name: tensor for tensor in request} for request in others]
    return [
        Tensor(
            tensor.name,
            tensor.datatype,
            np.concatenate([tensor.array, *(request[tensor.name].array for request in by_name)], axis=0),
        )
        for tensor in first
    ]


def split(outputs: Sequence[Tensor], batch_sizes: Sequence[int]) -> list[list[Tensor]]:
    """Cut a batch's outputs back into one list of outputs per request, in the order the requests were merged.

    The slices are views of the batch's arrays (no copy).

    Args:
        outputs: the model's outputs for the merged batch.
        batch_sizes: the batch size of each merged request, in merge order.

    Returns:
        For each request, its rows of every output, in the order of ``outputs``.

    Raises:
        InferenceFailed: an output's first dimension is not the batch's total size, so it cannot be divided.
    """
    total = sum(batch_sizes)
    for tensor in outputs:
        rows = tensor.array.shape[0] if tensor.array.ndim else "no"
        if rows != total:
            raise InferenceFailed(f"model output '{tensor.name}' has {rows} rows for a batch of {total}")
    return [
        [Tensor(tensor.name, tensor.datatype, tensor.array[start:stop]) for tensor in outputs]
        for start, stop in pairwise(accumulate(batch_sizes, initial=0))
    ]
