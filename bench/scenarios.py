"""What every server is asked: the same tensors, pre-encoded once per protocol so clients only replay bytes.

Each scenario is one inference request, encoded three ways: V2 REST with JSON tensors, V2 REST with Triton's
binary-tensor extension, and a serialised gRPC ``ModelInferRequest`` (tensors in ``raw_input_contents``).

``BATCHING_PAIRS`` are the scenarios measured on v2server alone, many batch-1 clients on the same model with and
without dynamic batching: the bundled 784-128-10 MLP, whose 34 us forward leaves little to amortise, and
``heavy_mlp`` (``bench.models``), whose forward is milliseconds at batch 1 and far less per row at batch 64.
``heavy-b64`` is there for the model's forward time at batch 64 (``bench.run`` times it in-process).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import orjson

from v2server._proto import grpc_service_pb2 as pb

__all__ = ["BATCHING_PAIRS", "PROTOCOLS", "SCENARIOS", "Scenario", "Tensor"]

#: rest-json, rest-binary and grpc, in the order tables show them
PROTOCOLS = ("grpc", "rest-binary", "rest-json")

_V2_TYPES = {np.dtype(np.int32): "INT32", np.dtype(np.float32): "FP32"}


@dataclass(frozen=True)
class Tensor:
    name: str
    array: np.ndarray

    @property
    def datatype(self) -> str:
        return _V2_TYPES[self.array.dtype]


@dataclass(frozen=True)
class Scenario:
    """One request to one model, and its encodings (bytes on the wire, excluding HTTP/2 or HTTP/1 framing)."""

    name: str
    model: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[str, ...]
    description: str
    encoded: dict[str, bytes] = field(default_factory=dict, compare=False)

    def body(self, protocol: str) -> bytes:
        if protocol not in self.encoded:
            self.encoded[protocol] = _ENCODERS[protocol](self)
        return self.encoded[protocol]

    def headers(self, protocol: str) -> dict[str, str]:
        """HTTP headers that go with :meth:`body` (none for gRPC)."""
        if protocol == "rest-json":
            return {"Content-Type": "application/json"}
        if protocol == "rest-binary":
            return {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(_binary_header(self))),
            }
        return {}

    @property
    def path(self) -> str:
        return f"/v2/models/{self.model}/infer"


def _tensor_header(tensor: Tensor) -> dict[str, object]:
    return {"name": tensor.name, "shape": list(tensor.array.shape), "datatype": tensor.datatype}


def _json_body(scenario: Scenario) -> bytes:
    inputs = [{**_tensor_header(t), "data": t.array.ravel()} for t in scenario.inputs]
    return orjson.dumps({"inputs": inputs}, option=orjson.OPT_SERIALIZE_NUMPY)


def _binary_header(scenario: Scenario) -> bytes:
    inputs = [
        {**_tensor_header(t), "parameters": {"binary_data_size": t.array.nbytes}} for t in scenario.inputs
    ]
    outputs = [{"name": name, "parameters": {"binary_data": True}} for name in scenario.outputs]
    return orjson.dumps({"inputs": inputs, "outputs": outputs})


def _binary_body(scenario: Scenario) -> bytes:
    return _binary_header(scenario) + b"".join(t.array.tobytes() for t in scenario.inputs)


def _grpc_body(scenario: Scenario) -> bytes:
    request = pb.ModelInferRequest(model_name=scenario.model)
    for tensor in scenario.inputs:
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.array.shape)
        request.raw_input_contents.append(tensor.array.tobytes())
    return request.SerializeToString()


_ENCODERS = {"rest-json": _json_body, "rest-binary": _binary_body, "grpc": _grpc_body}


def _build() -> dict[str, Scenario]:
    rng = np.random.default_rng(0)
    simple = rng.integers(-100, 100, size=(2, 1, 16), dtype=np.int32)
    scenarios = [
        Scenario(
            "simple", "simple", (Tensor("INPUT0", simple[0]), Tensor("INPUT1", simple[1])),
            ("OUTPUT0", "OUTPUT1"), "Triton's add/sub: two INT32 [1,16]",
        ),
        Scenario(
            "mlp-b1", "mlp_nobatch", (Tensor("INPUT__0", rng.standard_normal((1, 784), dtype=np.float32)),),
            ("OUTPUT__0",), "784-128-10 MLP, FP32 [1,784]",
        ),
        Scenario(
            "mlp-b8", "mlp_nobatch", (Tensor("INPUT__0", rng.standard_normal((8, 784), dtype=np.float32)),),
            ("OUTPUT__0",), "784-128-10 MLP, FP32 [8,784]",
        ),
        Scenario(
            "identity-1mib", "identity_fp32", (Tensor("INPUT0", rng.standard_normal(1 << 18, dtype=np.float32)),),
            ("OUTPUT0",), "identity, FP32 [262144] (1 MiB each way)",
        ),
        # v2server only: many batch-1 clients, with and without dynamic batching
        Scenario(
            "mlp-b1-batching", "mlp", (Tensor("INPUT__0", rng.standard_normal((1, 784), dtype=np.float32)),),
            ("OUTPUT__0",), "mlp-b1 on the dynamically batched copy of the model",
        ),
        # v2server only: a model whose forward costs milliseconds, and much less per row in a batch
        Scenario(
            "heavy-b1", "heavy_mlp", (Tensor("INPUT__0", rng.standard_normal((1, 1024), dtype=np.float32)),),
            ("OUTPUT__0",), "1024-2048-2048-16 MLP, FP32 [1,1024], no dynamic batching",
        ),
        Scenario(
            "heavy-b1-batching", "heavy_mlp_batching",
            (Tensor("INPUT__0", rng.standard_normal((1, 1024), dtype=np.float32)),),
            ("OUTPUT__0",), "heavy-b1 on the dynamically batched copy of the model",
        ),
        Scenario(
            "heavy-b64", "heavy_mlp", (Tensor("INPUT__0", rng.standard_normal((64, 1024), dtype=np.float32)),),
            ("OUTPUT__0",), "1024-2048-2048-16 MLP, FP32 [64,1024] (its forward time at batch 64)",
        ),
    ]
    return {s.name: s for s in scenarios}


SCENARIOS = _build()

#: (without, with dynamic batching): the same requests to a model and to its dynamically batched copy
BATCHING_PAIRS = (("mlp-b1", "mlp-b1-batching"), ("heavy-b1", "heavy-b1-batching"))
