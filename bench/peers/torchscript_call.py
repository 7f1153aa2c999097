"""numpy in, numpy out around a TorchScript ``forward``: the part both peer wrappers share (numpy and torch only).

Numeric arrays become tensors without a copy (``torch.from_numpy``); BYTES arrays (numpy ``object`` or ``S``)
become a flat ``List[str]``, the convention v2server uses for TorchScript string arguments, and returned string
lists come back as ``object`` arrays of ``bytes`` shaped like the first string input when the sizes agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["NUMPY_DATATYPES", "forward", "named_outputs"]

NUMPY_DATATYPES = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}


def forward(module: torch.jit.ScriptModule, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``module(*arrays)`` under ``inference_mode``; a single returned value becomes a one-element list."""
    arguments = [_argument(array) for array in arrays]
    with torch.inference_mode():
        result = module(*arguments)
    values = result if isinstance(result, tuple) else (result,)
    strings = [array for array in arrays if _is_bytes(array)]
    return [_array(value, strings[0].shape if strings else None) for value in values]


def named_outputs(
    names: Sequence[str], results: Sequence[np.ndarray], wanted: set[str], datatypes: dict[str, str]
) -> list[tuple[str, np.ndarray]]:
    """``forward``'s results under their output names: only the ``wanted`` ones (all when empty), cast where
    ``datatypes`` names a datatype."""
    named = []
    for name, array in zip(names, results, strict=False):
        if wanted and name not in wanted:
            continue
        if name in datatypes:
            array = array.astype(NUMPY_DATATYPES[datatypes[name]], copy=False)
        named.append((name, array))
    return named


def _is_bytes(array: np.ndarray) -> bool:
    return array.dtype.kind in "OSU"


def _argument(array: np.ndarray) -> Any:
    if _is_bytes(array):
        return [item.decode() if isinstance(item, bytes) else str(item) for item in array.ravel().tolist()]
    if not array.flags.writeable:  # a view of the request's bytes: torch refuses to share read-only memory
        array = array.copy()
    return torch.from_numpy(array)


def _array(value: Any, string_shape: tuple[int, ...] | None) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, list):
        array = np.array([str(item).encode() for item in value], dtype=np.object_)
        if string_shape is not None and int(np.prod(string_shape)) == array.size:
            array = array.reshape(string_shape)
        return array
    return np.asarray(value)
