"""One table for every V2 datatype: its numpy, torch and protobuf forms.

Everything that converts between representations looks the datatype up here, so adding or fixing a type is a
change in one row. BF16 has no numpy type; its tensors travel through numpy as ``uint16`` storage and are
viewed as ``torch.bfloat16`` at the model boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from v2server.errors import InvalidRequest

__all__ = ["DATATYPES", "DataType", "datatype", "from_config_type", "from_numpy", "from_torch", "to_config_type"]


@dataclass(frozen=True, slots=True)
class DataType:
    """Facts about one V2 datatype."""

    name: str
    numpy: np.dtype  # storage dtype (object for BYTES, uint16 for BF16)
    torch: torch.dtype | None  # None for BYTES (TorchScript sees List[str])
    contents_field: str | None  # InferTensorContents field; None where only raw contents can carry it
    config_type: str  # ModelConfig DataType enum name

    @property
    def itemsize(self) -> int:
        """Bytes per element on the wire (0 for BYTES, whose elements vary)."""
        return 0 if self.name == "BYTES" else self.numpy.itemsize

    @property
    def kind(self) -> str:
        """What its elements are: ``"bool"``, ``"int"``, ``"float"`` or ``"bytes"``.

        Read this rather than ``numpy.kind``: BF16 is a float stored as ``uint16`` bits.
        """
        if self.name in ("BOOL", "BYTES"):
            return self.name.lower()
        return "float" if self.name == "BF16" or self.numpy.kind == "f" else "int"


def _row(name: str, np_type: type | str, torch_type: torch.dtype | None, field: str | None) -> DataType:
    config_type = "TYPE_STRING" if name == "BYTES" else f"TYPE_{name}"
    return DataType(name, np.dtype(np_type), torch_type, field, config_type)


DATATYPES: dict[str, DataType] = {
    row.name: row
    for row in (
        _row("BOOL", np.bool_, torch.bool, "bool_contents"),
        _row("UINT8", np.uint8, torch.uint8, "uint_contents"),
        _row("UINT16", np.uint16, torch.uint16, "uint_contents"),
        _row("UINT32", np.uint32, torch.uint32, "uint_contents"),
        _row("UINT64", np.uint64, torch.uint64, "uint64_contents"),
        _row("INT8", np.int8, torch.int8, "int_contents"),
        _row("INT16", np.int16, torch.int16, "int_contents"),
        _row("INT32", np.int32, torch.int32, "int_contents"),
        _row("INT64", np.int64, torch.int64, "int64_contents"),
        _row("FP16", np.float16, torch.float16, None),
        _row("FP32", np.float32, torch.float32, "fp32_contents"),
        _row("FP64", np.float64, torch.float64, "fp64_contents"),
        _row("BF16", np.uint16, torch.bfloat16, None),
        _row("BYTES", np.object_, None, "bytes_contents"),
    )
}

_BY_CONFIG_TYPE = {row.config_type: row for row in DATATYPES.values()}
_BY_TORCH = {row.torch: row for row in DATATYPES.values() if row.torch is not None}
_BY_NUMPY = {row.numpy: row for row in DATATYPES.values() if row.name != "BF16"}


def datatype(name: str) -> DataType:
    """The datatype called ``name`` in a request; an unknown name is the client's error."""
    try:
        return DATATYPES[name]
    except KeyError:
        raise InvalidRequest(f"unknown datatype '{name}'") from None


def from_config_type(config_type: str) -> DataType:
    """The datatype of a ``TYPE_*`` name from ``config.pbtxt``."""
    try:
        return _BY_CONFIG_TYPE[config_type]
    except KeyError:
        raise ValueError(f"unsupported data_type {config_type}") from None


def to_config_type(name: str) -> str:
    """``TYPE_*`` name for a V2 datatype name."""
    return DATATYPES[name].config_type


def from_torch(dtype: torch.dtype) -> DataType:
    """The V2 datatype of a torch dtype a model returned."""
    try:
        return _BY_TORCH[dtype]
    except KeyError:
        raise ValueError(f"torch dtype {dtype} has no V2 datatype") from None


def from_numpy(dtype: np.dtype) -> DataType:
    """The V2 datatype of a numpy dtype (numpy strings and bytes are BYTES)."""
    if dtype.kind in "OSU":
        return DATATYPES["BYTES"]
    try:
        return _BY_NUMPY[dtype]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no V2 datatype") from None
