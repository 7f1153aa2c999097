"""tritonclient (http or grpc) against v2server: what Triton's own example clients do, as one JSON object.

Usage: ``tritonclient_probe.py http|grpc ADDRESS``. Standalone: imports only tritonclient, numpy and the
stdlib. Every call is recorded as what the client returned or the exception it raised (type and message), so the
pytest side decides what is right.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 3, dtype=np.int32)
WORDS = np.array([[b"hello", "grüße".encode(), b"", b"a b"]], dtype=np.object_)


def attempt(call: Callable[[], Any]) -> dict[str, Any]:
    """``{"value": ...}`` or ``{"error": type name, "message": ..., "status": ...}``."""
    try:
        return {"value": call()}
    except Exception as error:  # noqa: BLE001 (the observation is the exception)
        message = error.message() if hasattr(error, "message") and callable(error.message) else str(error)
        status = error.status() if hasattr(error, "status") and callable(error.status) else None
        return {"error": type(error).__name__, "message": message, "status": status}


def main(protocol: str, address: str) -> dict[str, Any]:
    if protocol == "http":
        import tritonclient.http as client_module
    else:
        import tritonclient.grpc as client_module  # type: ignore[no-redef]
    client = client_module.InferenceServerClient(address)

    def tensor(name: str, array: np.ndarray, datatype: str, binary: bool) -> Any:
        infer_input = client_module.InferInput(name, list(array.shape), datatype)
        if protocol == "http":
            infer_input.set_data_from_numpy(array, binary_data=binary)
        else:
            infer_input.set_data_from_numpy(array)
        return infer_input

    def outputs(names: list[str], binary: bool) -> list[Any]:
        if protocol == "http":
            return [client_module.InferRequestedOutput(name, binary_data=binary) for name in names]
        return [client_module.InferRequestedOutput(name) for name in names]

    def response_id(result: Any) -> str:
        response = result.get_response()
        return str(response.get("id", "")) if isinstance(response, dict) else str(response.id)

    def infer_simple(binary: bool, request_id: str = "") -> dict[str, Any]:
        inputs = [tensor("INPUT0", A, "INT32", binary), tensor("INPUT1", B, "INT32", binary)]
        result = client.infer("simple", inputs, outputs=outputs(["OUTPUT0", "OUTPUT1"], binary), request_id=request_id)
        return {
            "id": response_id(result),
            "OUTPUT0": result.as_numpy("OUTPUT0").tolist(),
            "OUTPUT1": result.as_numpy("OUTPUT1").tolist(),
            "dtype": str(result.as_numpy("OUTPUT0").dtype),
        }

    def infer_bytes(binary: bool) -> dict[str, Any]:
        inputs = [tensor("INPUT0", WORDS, "BYTES", binary)]
        result = client.infer("simple_identity", inputs, outputs=outputs(["OUTPUT0"], binary))
        values = result.as_numpy("OUTPUT0").tolist()
        # tritonclient.http decodes JSON BYTES to str, binary ones stay bytes: compare as UTF-8 hex.
        return {
            "OUTPUT0": [[(v.encode() if isinstance(v, str) else v).hex() for v in row] for row in values],
            "element_type": sorted({type(v).__name__ for row in values for v in row}),
        }

    def metadata(name: str) -> dict[str, Any]:
        found = client.get_model_metadata(name, as_json=True) if protocol == "grpc" else client.get_model_metadata(name)
        return {
            "name": found["name"],
            "inputs": [{k: item[k] for k in ("name", "datatype", "shape")} for item in found["inputs"]],
            "outputs": [{k: item[k] for k in ("name", "datatype", "shape")} for item in found["outputs"]],
        }

    def shapes(found: dict[str, Any]) -> None:  # grpc's as_json renders int64 dims as strings
        for item in (*found["inputs"], *found["outputs"]):
            item["shape"] = [int(dim) for dim in item["shape"]]

    def infer_unknown() -> Any:
        return client.infer("wrong_model_name", [tensor("INPUT0", A, "INT32", True)]).get_response()

    def infer_wrong_shape() -> Any:
        short = A[:, :8]
        return client.infer("simple", [tensor("INPUT0", short, "INT32", True), tensor("INPUT1", short, "INT32", True)])

    def infer_wrong_datatype() -> Any:
        floats = A.astype(np.float32)
        return client.infer("simple", [tensor("INPUT0", floats, "FP32", True), tensor("INPUT1", B, "INT32", True)])

    server_metadata = client.get_server_metadata(**({"as_json": True} if protocol == "grpc" else {}))
    simple = metadata("simple")
    shapes(simple)
    observed = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": {name: client.is_model_ready(name) for name in ("simple", "wrong_model_name")},
        "server_name": server_metadata["name"],
        "metadata": simple,
        "infer_json": attempt(lambda: infer_simple(binary=False, request_id="triton-json")),
        "infer_binary": attempt(lambda: infer_simple(binary=True, request_id="triton-binary")),
        "infer_no_id": attempt(lambda: infer_simple(binary=True)),
        "bytes_json": attempt(lambda: infer_bytes(binary=False)),
        "bytes_binary": attempt(lambda: infer_bytes(binary=True)),
        "metadata_unknown": attempt(lambda: metadata("wrong_model_name")),
        "infer_unknown": attempt(infer_unknown),
        "infer_wrong_shape": attempt(lambda: infer_wrong_shape().get_response()),
        "infer_wrong_datatype": attempt(lambda: infer_wrong_datatype().get_response()),
    }
    client.close()
    return observed


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2]), default=str))
