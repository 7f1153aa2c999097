"""MLServer runtime serving one TorchScript file, so MLServer runs the very ``model.pt`` v2server loads.

Runs inside the MLServer venv only (``bench/peers`` on ``PYTHONPATH``). ``model-settings.json`` gives the file
in ``parameters.uri`` and, in ``parameters.extra``, the input names in the order ``forward`` takes them, the
output names in the order it returns them and optional output datatypes. Tensors go through MLServer's own
codecs (what an MLServer user would write): ``NumpyCodec`` for numbers, ``StringCodec`` for BYTES.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse, RequestInput
from mlserver.utils import get_model_uri
from torchscript_call import forward, named_outputs

__all__ = ["TorchScriptRuntime"]


class TorchScriptRuntime(MLModel):
    """``torch.jit.load`` at load time; ``forward(*inputs)`` under ``inference_mode`` per request."""

    async def load(self) -> bool:
        extra: dict[str, Any] = dict(self.settings.parameters.extra or {}) if self.settings.parameters else {}
        self._inputs: list[str] = list(extra["inputs"])
        self._outputs: list[str] = list(extra["outputs"])
        self._datatypes: dict[str, str] = dict(extra.get("datatypes") or {})
        self._module = torch.jit.load(await get_model_uri(self.settings), map_location="cpu").eval()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        given = {request_input.name: request_input for request_input in payload.inputs}
        missing = [name for name in self._inputs if name not in given]
        if missing:
            raise InferenceError(f"model '{self.name}': missing inputs {missing}; expected {self._inputs}")
        results = forward(self._module, [_decode(given[name]) for name in self._inputs])
        wanted = {output.name for output in payload.outputs or []}
        outputs = []
        for name, array in named_outputs(self._outputs, results, wanted, self._datatypes):
            output = NumpyCodec.encode_output(name, array)
            output.shape = list(array.shape)  # the codec turns a 1-D [n] into [n, 1] ("batch dimension")
            outputs.append(output)
        return InferenceResponse(model_name=self.name, model_version=self.version, id=payload.id, outputs=outputs)


def _decode(request_input: RequestInput) -> np.ndarray:
    """NumpyCodec for numbers; StringCodec for BYTES, whose elements NumpyCodec reads as fixed-width records
    of ``shape[-1]`` bytes (it fails on Triton's length-prefixed raw gRPC strings)."""
    if request_input.datatype != "BYTES":
        return NumpyCodec.decode_input(request_input)
    strings = np.array(StringCodec.decode_input(request_input), dtype=np.object_)
    return strings.reshape(request_input.shape) if strings.size == int(np.prod(request_input.shape)) else strings
