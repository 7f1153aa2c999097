"""One transport-parity suite: every case runs over REST (plain HTTP JSON) and gRPC (the generated stub) against one
server, and must give the same outcome on both: the same HTTP status (gRPC codes mapped through ``http_status``),
the same error message, the same output values.

Each case is written once; ``call`` is the small adapter per transport that sends it and returns an ``Outcome``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import grpc
import numpy as np
import pytest

from tests.assets.test_models import NUMERIC_DATATYPES
from tests.conftest import RunningServer, http_call
from v2server._proto import grpc_service_pb2 as pb
from v2server._proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from v2server.datatypes import datatype
from v2server.errors import http_status

TRANSPORTS = ("rest", "grpc")


@dataclass(frozen=True)
class Input:
    name: str
    datatype: str
    shape: list[int]
    values: list[Any]  # flat, as JSON would carry them (str for BYTES)


@dataclass(frozen=True)
class Outcome:
    """What a client sees: HTTP status (200 on success), the error message ("" on success), and the outputs by
    name as (datatype, shape, flat values)."""

    status: int
    message: str = ""
    outputs: dict[str, tuple[str, list[int], list[Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    model: str
    inputs: list[Input]
    status: int
    message: str
    version: str = ""
    outputs: tuple[str, ...] = ()


# -- the two adapters ---------------------------------------------------------------------------------------


#: float datatypes are compared at their own precision: REST JSON renders a float32 as the shortest decimal that
#: reads back as the same float32 (3.25e38), raw bytes give its exact double (3.249999972151886e38)
_PRECISION = {"FP16": np.float16, "FP32": np.float32, "BF16": np.float32, "FP64": np.float64}


def _canonical(dtype: str, values: list[Any]) -> list[Any]:
    if dtype in _PRECISION:
        return np.array(values, dtype=_PRECISION[dtype]).tolist()  # type: ignore[no-any-return]
    return values


def _model_path(model: str, version: str) -> str:
    """``/v2/models/{model}[/versions/{version}]``, each quoted whole (``a/b`` travels as ``a%2Fb``)."""
    return f"/v2/models/{quote(model, safe='')}" + (f"/versions/{quote(version, safe='')}" if version else "")


def _rest(server: RunningServer, model: str, version: str, inputs: list[Input], outputs: tuple[str, ...]) -> Outcome:
    body: dict[str, Any] = {
        "inputs": [{"name": i.name, "datatype": i.datatype, "shape": i.shape, "data": i.values} for i in inputs]
    }
    if outputs:
        body["outputs"] = [{"name": name} for name in outputs]
    path = _model_path(model, version) + "/infer"
    status, headers, payload = http_call(
        server, "POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    assert headers["content-type"] == "application/json", payload
    document = json.loads(payload)
    if status != 200:
        return Outcome(status, document["error"])
    return Outcome(200, outputs={
        o["name"]: (o["datatype"], o["shape"], _canonical(o["datatype"], o["data"])) for o in document["outputs"]
    })


def _raw(tensor: Input) -> bytes:
    """The raw wire bytes of an input, as a client encodes them (little-endian, BYTES length-prefixed)."""
    if tensor.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in tensor.values)
    if tensor.datatype == "BF16":  # the top half of a float32 (the test values are exact in BF16)
        return (np.array(tensor.values, dtype="<f4").view("<u4") >> 16).astype("<u2").tobytes()
    return np.array(tensor.values, dtype=datatype(tensor.datatype).numpy).tobytes()


def _values(dtype: str, raw: bytes) -> list[Any]:
    if dtype == "BYTES":
        values, offset = [], 0
        while offset < len(raw):
            (length,) = struct.unpack_from("<I", raw, offset)
            values.append(raw[offset + 4 : offset + 4 + length].decode())
            offset += 4 + length
        return values
    if dtype == "BF16":
        return (np.frombuffer(raw, "<u2").astype("<u4") << 16).view("<f4").tolist()  # type: ignore[no-any-return]
    return np.frombuffer(raw, datatype(dtype).numpy).tolist()  # type: ignore[no-any-return]


def _grpc(
    stub: GRPCInferenceServiceStub, model: str, version: str, inputs: list[Input], outputs: tuple[str, ...]
) -> Outcome:
    request = pb.ModelInferRequest(
        model_name=model,
        model_version=version,
        inputs=[pb.ModelInferRequest.InferInputTensor(name=i.name, datatype=i.datatype, shape=i.shape) for i in inputs],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in outputs],
        raw_input_contents=[_raw(i) for i in inputs],
    )
    try:
        response = stub.ModelInfer(request, timeout=60)
    except grpc.RpcError as error:
        return Outcome(http_status(error.code()), error.details() or "")
    return Outcome(200, outputs={
        o.name: (o.datatype, list(o.shape), _canonical(o.datatype, _values(o.datatype, raw)))
        for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    })


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield GRPCInferenceServiceStub(channel)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def call(transport: str, server: RunningServer, stub: GRPCInferenceServiceStub) -> Any:
    """``call(model, inputs, version="", outputs=())``: one inference over the transport under test."""

    def send(model: str, inputs: list[Input], version: str = "", outputs: tuple[str, ...] = ()) -> Outcome:
        if transport == "rest":
            return _rest(server, model, version, inputs, outputs)
        return _grpc(stub, model, version, inputs, outputs)

    return send


@pytest.fixture
def metadata(transport: str, server: RunningServer, stub: GRPCInferenceServiceStub) -> Any:
    """``metadata(model, version="")``: model metadata over the transport under test, as an ``Outcome`` whose
    outputs hold (name, versions, platform) under "model" and each input's (datatype, shape) by name."""

    def send(model: str, version: str = "") -> Outcome:
        if transport == "rest":
            status, _, payload = http_call(server, "GET", _model_path(model, version))
            document = json.loads(payload)
            if status != 200:
                return Outcome(status, document["error"])
            name, versions, platform = document["name"], document["versions"], document["platform"]
            inputs = [(t["name"], t["datatype"], t["shape"]) for t in document["inputs"]]
        else:
            try:
                response = stub.ModelMetadata(pb.ModelMetadataRequest(name=model, version=version), timeout=60)
            except grpc.RpcError as error:
                return Outcome(http_status(error.code()), error.details() or "")
            name, versions, platform = response.name, list(response.versions), response.platform
            inputs = [(t.name, t.datatype, list(t.shape)) for t in response.inputs]
        return Outcome(200, outputs={
            "model": ("", [], [name, versions, platform]), **{n: (d, shape, []) for n, d, shape in inputs}
        })

    return send


# -- errors ---------------------------------------------------------------------------------------------------

FP32_1x2 = Input("INPUT0", "FP32", [1, 2], [1.0, 2.0])
INT32_4 = Input("INPUT0", "INT32", [4], [1, 2, 3, 4])
INTS_3 = [1, 2, 3]

CASES = {
    "unknown-model": Case("no_such_model", [FP32_1x2], 404, "Request for unknown model: 'no_such_model' is not found"),
    "unknown-version": Case(
        "versioned", [INT32_4], 404, "Request for unknown model: 'versioned' version 9 is not found (serving [1, 2, 3])", version="9"
    ),
    "bad-version-string": Case(
        "versioned", [INT32_4], 400, "model 'versioned': version 'v1' is not a number", version="v1"
    ),
    "malformed-model-name": Case(
        "a/b", [FP32_1x2], 400, "invalid model name 'a/b': a model name must not contain '/' or '\\'"
    ),
    "wrong-datatype": Case(
        "identity_fp32", [Input("INPUT0", "INT32", [1, 2], [1, 2])], 400,
        "inference input 'INPUT0' data-type is 'INT32', but model 'identity_fp32' expects 'FP32'",
    ),
    "wrong-shape": Case(
        "versioned", [Input("INPUT0", "INT32", [5], [1, 2, 3, 4, 5])], 400,
        "unexpected shape for input 'INPUT0' for model 'versioned'. Expected [4], got [5] (-1 is any size)",
    ),
    "no-batch-dimension": Case(
        "identity_fp32", [Input("INPUT0", "FP32", [], [1.0])], 400, "input 'INPUT0': shape [] has no batch dimension"
    ),
    "missing-input": Case(
        "dict_output", [Input("a", "INT32", [1, 3], INTS_3)], 400,
        "expected 2 inputs but got 1 inputs for model 'dict_output'. Got input(s) ['a'], but missing required input(s) ['b']. Please provide all required input(s).",
    ),
    "unknown-input": Case(
        "identity_fp32", [FP32_1x2, Input("EXTRA", "FP32", [1, 2], [1.0, 2.0])], 400,
        "unexpected inference input 'EXTRA' for model 'identity_fp32' (it takes ['INPUT0'])",
    ),
    "duplicate-input": Case(
        "identity_fp32", [FP32_1x2, FP32_1x2], 400, "input 'INPUT0' is given more than once"
    ),
    "batch-sizes-differ": Case(
        "dict_output", [Input("a", "INT32", [1, 3], INTS_3), Input("b", "INT32", [2, 3], INTS_3 * 2)], 400,
        "input 'b': batch size 2 differs from the other inputs' batch size 1",
    ),
    "unknown-output": Case(
        "identity_fp32", [FP32_1x2], 400,
        "unexpected inference output 'NOPE' for model 'identity_fp32' (it has ['OUTPUT0'])",
        outputs=("NOPE",),
    ),
    "output-twice": Case(
        "identity_fp32", [FP32_1x2], 400, "output 'OUTPUT0' is requested more than once", outputs=("OUTPUT0", "OUTPUT0")
    ),
    "batch-over-max": Case(
        "identity_fp32", [Input("INPUT0", "FP32", [9, 1], [1.0] * 9)], 400,
        "inference request batch-size must be <= 8 for 'identity_fp32' (and at least 1; input 'INPUT0' has 9)",
    ),
    "model-raises": Case(
        "failing", [Input("INPUT0", "FP32", [1, 2], [1.0, -1.0])], 500,
        "model 'failing' failed: builtins.RuntimeError: negative input is not allowed",
    ),
    "bytes-not-a-json-object": Case(
        "example_dict_doubler", [Input("d", "BYTES", [1], ["[1]"])], 400,
        "input 'd': forward argument 'd' is Dict[str, int], but the element holds a JSON list, not an object",
    ),
    "bytes-not-json": Case(
        "example_dict_doubler", [Input("d", "BYTES", [1], ["{oops"])], 400,
        "input 'd': forward argument 'd' is Dict[str, int], but the element is not valid JSON: unexpected character, "
        "expected a string key: line 1 column 2 (char 1)",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_same_error_over_both_transports(call: Any, case: Case) -> None:
    outcome = call(case.model, case.inputs, case.version, case.outputs)
    assert (outcome.status, outcome.message) == (case.status, case.message)


def test_too_many_elements_for_the_shape(call: Any, transport: str) -> None:
    """The same status, naming the input and the shape; the wording is the encoding's own (REST counts JSON
    values, gRPC counts raw bytes), so it is checked per transport."""
    outcome = call("identity_fp32", [Input("INPUT0", "FP32", [1, 2], [1.0, 2.0, 3.0])])
    assert outcome.status == 400
    assert outcome.message == {
        "rest": "input 'INPUT0': data has 3 elements but shape [1, 2] needs 2",
        "grpc": "input 'INPUT0': expected 8 bytes for shape [1, 2] of FP32, got 12",
    }[transport]


def test_bytes_elements_that_do_not_fit_the_shape(call: Any, transport: str) -> None:
    """As above, for BYTES: three strings for a shape of two (each transport counts in its own encoding)."""
    outcome = call("simple_identity", [Input("INPUT0", "BYTES", [1, 2], ["a", "b", "c"])])
    assert outcome.status == 400
    assert outcome.message == {
        "rest": "input 'INPUT0': data has 3 elements but shape [1, 2] needs 2",
        "grpc": "input 'INPUT0': expected 2 BYTES elements for its shape, got 3",
    }[transport]


# -- successful round trips -----------------------------------------------------------------------------------

#: per datatype, values that survive the trip exactly, extremes included
VALUES: dict[str, list[Any]] = {
    "BOOL": [True, False, True],
    "UINT8": [0, 1, 255],
    "UINT16": [0, 1, 65535],
    "UINT32": [0, 1, 2**32 - 1],
    "UINT64": [0, 1, 2**64 - 1],
    "INT8": [-128, 0, 127],
    "INT16": [-32768, 0, 32767],
    "INT32": [-(2**31), 0, 2**31 - 1],
    "INT64": [-(2**63), 0, 2**63 - 1],
    "FP16": [-1.5, 0.0, 65504.0],
    "FP32": [-1.5, 0.0, 3.25e38],
    "FP64": [-1.5, 0.0, 1e300],
    "BF16": [-1.5, 0.0, 2.0**100],
}


def test_every_numeric_datatype_is_listed() -> None:
    assert tuple(VALUES) == NUMERIC_DATATYPES


@pytest.mark.parametrize("dtype", NUMERIC_DATATYPES)
def test_a_numeric_round_trip_gives_the_same_values(call: Any, dtype: str) -> None:
    values = VALUES[dtype]
    outcome = call(f"identity_{dtype.lower()}", [Input("INPUT0", dtype, [1, 3], values)])
    assert outcome == Outcome(200, outputs={"OUTPUT0": (dtype, [1, 3], _canonical(dtype, values))})


def test_a_bytes_round_trip_gives_the_same_strings(call: Any) -> None:
    strings = ["", "plain", "with space", "\u00e9t\u00e9 \u2603"]
    outcome = call("simple_identity", [Input("INPUT0", "BYTES", [1, 4], strings)])
    assert outcome == Outcome(200, outputs={"OUTPUT0": ("BYTES", [1, 4], strings)})


def test_a_version_in_the_request_selects_it(call: Any) -> None:
    for version, factor in (("1", 1), ("3", 3), ("", 3)):
        outcome = call("versioned", [INT32_4], version)
        assert outcome == Outcome(200, outputs={"OUTPUT0": ("INT32", [4], [factor * v for v in INT32_4.values])})


def test_requested_outputs_come_back_in_the_order_asked(call: Any) -> None:
    a, b = Input("a", "INT32", [1, 3], [1, 2, 3]), Input("b", "INT32", [1, 3], [4, 5, 6])
    outcome = call("dict_output", [a, b], outputs=("sum", "product"))
    assert list(outcome.outputs) == ["sum", "product"]
    assert outcome == Outcome(200, outputs={
        "sum": ("INT32", [1, 3], [5, 7, 9]), "product": ("INT32", [1, 3], [4, 10, 18])
    })


def test_typed_contents_give_the_same_values_as_raw(stub: GRPCInferenceServiceStub) -> None:
    """gRPC's other encoding: typed ``InferTensorContents`` (FP16 and BF16 have no field: raw only)."""
    for dtype in NUMERIC_DATATYPES:
        field_name = datatype(dtype).contents_field
        request = pb.ModelInferRequest(
            model_name=f"identity_{dtype.lower()}",
            inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype=dtype, shape=[1, 3])],
        )
        if field_name is None:
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(request, timeout=60)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT, dtype
            assert caught.value.details() == f"input 'INPUT0': datatype {dtype} can only be sent as raw contents"
            continue
        getattr(request.inputs[0].contents, field_name).extend(VALUES[dtype])
        response = stub.ModelInfer(request, timeout=60)
        assert _canonical(dtype, _values(dtype, response.raw_output_contents[0])) == _canonical(dtype, VALUES[dtype])


# -- model metadata -------------------------------------------------------------------------------------------

METADATA_ERRORS = {
    "unknown-model": ("no_such_model", "", 404, "Request for unknown model: 'no_such_model' is not found"),
    "unknown-version": ("versioned", "9", 404, "Request for unknown model: 'versioned' version 9 is not found (serving [1, 2, 3])"),
    "bad-version-string": ("versioned", "latest", 400, "model 'versioned': version 'latest' is not a number"),
    "malformed-model-name": (
        "a/b", "", 400, "invalid model name 'a/b': a model name must not contain '/' or '\\'"
    ),
}


@pytest.mark.parametrize(
    ("model", "version", "status", "message"), METADATA_ERRORS.values(), ids=METADATA_ERRORS.keys()
)
def test_the_same_metadata_error_over_both_transports(
    metadata: Any, model: str, version: str, status: int, message: str
) -> None:
    assert metadata(model, version) == Outcome(status, message)


@pytest.mark.parametrize("version", ["", "2"])
def test_the_same_metadata_over_both_transports(metadata: Any, version: str) -> None:
    assert metadata("versioned", version) == Outcome(200, outputs={
        "model": ("", [], ["versioned", ["1", "2", "3"], "pytorch_libtorch"]), "INPUT0": ("INT32", [4], [])
    })
