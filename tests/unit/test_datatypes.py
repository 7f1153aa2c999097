"""The datatype table: one row per V2 datatype, and the lookups that read it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from v2server.datatypes import (
    DATATYPES,
    datatype,
    from_config_type,
    from_numpy,
    from_torch,
    to_config_type,
)
from v2server.errors import InvalidRequest

# name, numpy storage dtype, torch dtype, ModelConfig type, InferTensorContents field
ROWS = [
    ("BOOL", np.bool_, torch.bool, "TYPE_BOOL", "bool_contents"),
    ("UINT8", np.uint8, torch.uint8, "TYPE_UINT8", "uint_contents"),
    ("UINT16", np.uint16, torch.uint16, "TYPE_UINT16", "uint_contents"),
    ("UINT32", np.uint32, torch.uint32, "TYPE_UINT32", "uint_contents"),
    ("UINT64", np.uint64, torch.uint64, "TYPE_UINT64", "uint64_contents"),
    ("INT8", np.int8, torch.int8, "TYPE_INT8", "int_contents"),
    ("INT16", np.int16, torch.int16, "TYPE_INT16", "int_contents"),
    ("INT32", np.int32, torch.int32, "TYPE_INT32", "int_contents"),
    ("INT64", np.int64, torch.int64, "TYPE_INT64", "int64_contents"),
    ("FP16", np.float16, torch.float16, "TYPE_FP16", None),
    ("FP32", np.float32, torch.float32, "TYPE_FP32", "fp32_contents"),
    ("FP64", np.float64, torch.float64, "TYPE_FP64", "fp64_contents"),
    ("BF16", np.uint16, torch.bfloat16, "TYPE_BF16", None),
    ("BYTES", np.object_, None, "TYPE_STRING", "bytes_contents"),
]
NAMES = [row[0] for row in ROWS]


def test_table_holds_exactly_the_v2_datatypes() -> None:
    assert sorted(DATATYPES) == sorted(NAMES)


@pytest.mark.parametrize(("name", "np_type", "torch_type", "config_type", "field"), ROWS, ids=NAMES)
def test_row(name: str, np_type: type, torch_type: torch.dtype | None, config_type: str, field: str | None) -> None:
    row = datatype(name)
    assert (row.name, row.numpy, row.torch, row.config_type, row.contents_field) == (
        name, np.dtype(np_type), torch_type, config_type, field,
    )
    assert row.itemsize == (0 if name == "BYTES" else np.dtype(np_type).itemsize)


@pytest.mark.parametrize(("name", "config_type"), [(row[0], row[3]) for row in ROWS], ids=NAMES)
def test_config_type_round_trip(name: str, config_type: str) -> None:
    assert to_config_type(name) == config_type
    assert from_config_type(config_type).name == name


@pytest.mark.parametrize(("name", "torch_type"), [(row[0], row[2]) for row in ROWS if row[2] is not None])
def test_from_torch(name: str, torch_type: torch.dtype) -> None:
    assert from_torch(torch_type).name == name


@pytest.mark.parametrize(
    ("dtype", "name"),
    [(np.dtype(row[1]), row[0]) for row in ROWS if row[0] != "BF16"]  # uint16 storage reads back as UINT16
    + [(np.dtype("S4"), "BYTES"), (np.dtype("<U3"), "BYTES")],
    ids=str,
)
def test_from_numpy(dtype: np.dtype, name: str) -> None:
    assert from_numpy(dtype).name == name


def test_unknown_request_datatype_is_the_clients_error() -> None:
    with pytest.raises(InvalidRequest, match="unknown datatype 'FP8'"):
        datatype("FP8")


@pytest.mark.parametrize(
    ("lookup", "argument", "message"),
    [
        (from_config_type, "TYPE_INVALID", "unsupported data_type TYPE_INVALID"),
        (from_torch, torch.complex64, "has no V2 datatype"),
        (from_numpy, np.dtype(np.complex64), "has no V2 datatype"),
    ],
    ids=["config", "torch", "numpy"],
)
def test_types_without_a_v2_datatype(lookup: object, argument: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lookup(argument)  # type: ignore[operator]


@pytest.mark.parametrize(("name", "kind"), [("BOOL", "bool"), ("UINT16", "int"), ("INT64", "int"), ("FP16", "float"),
                                            ("FP64", "float"), ("BF16", "float"), ("BYTES", "bytes")])
def test_kind_reads_bf16_as_a_float_despite_its_uint16_storage(name: str, kind: str) -> None:
    assert datatype(name).kind == kind
