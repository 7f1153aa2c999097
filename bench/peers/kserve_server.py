"""The KServe Python server serving TorchScript files over the V2 protocol (REST and gRPC), for the benchmark.

Runs inside the KServe venv only::

    python kserve_server.py --models models.json --http_port 8080 --grpc_port 8081

``models.json`` is a list of ``{"name", "path", "inputs", "outputs", "datatypes"}`` objects (``envs.ModelSpec``).
Every other option is KServe's own (its parser is this one's parent) and stays at its default. ``predict`` is a
plain method, as in KServe's examples, so it runs on the server's event loop.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import kserve
import torch
from kserve import InferOutput, InferRequest, InferResponse
from kserve.errors import InvalidInput
from kserve.model_server import parser as kserve_parser
from kserve.utils.numpy_codec import from_np_dtype
from torchscript_call import forward, named_outputs

__all__ = ["TorchScriptModel", "main"]


class TorchScriptModel(kserve.Model):
    """One TorchScript file: inputs matched by name and passed in ``forward``'s order, outputs named in order."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec["name"])
        self._path = Path(spec["path"])
        self._inputs: list[str] = list(spec["inputs"])
        self._outputs: list[str] = list(spec["outputs"])
        self._datatypes: dict[str, str] = dict(spec.get("datatypes") or {})
        self._module: torch.jit.ScriptModule | None = None

    def load(self) -> bool:
        self._module = torch.jit.load(str(self._path), map_location="cpu").eval()
        self.ready = True
        return self.ready

    def predict(  # type: ignore[override]
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        assert self._module is not None, "predict before load"
        given = {infer_input.name: infer_input for infer_input in payload.inputs}
        missing = [name for name in self._inputs if name not in given]
        if missing:
            raise InvalidInput(f"model '{self.name}': missing inputs {missing}; expected {self._inputs}")
        results = forward(self._module, [given[name].as_numpy() for name in self._inputs])
        wanted = {output.name for output in payload.request_outputs or []}
        outputs = []
        for name, array in named_outputs(self._outputs, results, wanted, self._datatypes):
            output = InferOutput(name=name, shape=list(array.shape), datatype=from_np_dtype(array.dtype))
            # Always raw here: gRPC sends it as is, and REST re-encodes it once as the request asks (to_rest
            # reads it back with np.frombuffer). A numpy array in ``data`` breaks KServe 0.21's to_grpc.
            output.set_data_from_numpy(array, binary_data=True)
            outputs.append(output)
        return InferResponse(
            response_id=payload.id or "", model_name=self.name, infer_outputs=outputs,
            use_binary_outputs=payload.use_binary_outputs, requested_outputs=payload.request_outputs,
        )


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve_parser], description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="JSON list of model specs")
    args, _ = parser.parse_known_args()
    models = [TorchScriptModel(spec) for spec in json.loads(args.models.read_text())]
    for model in models:
        model.load()
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port).start(models)


if __name__ == "__main__":
    main()
