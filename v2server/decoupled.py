"""Decoupled models: several responses to one request, sent on a ``ModelStreamInfer`` stream.

A model whose config says ``model_transaction_policy { decoupled: true }`` (Triton's decoupled transaction
policy) answers a request with any number of responses, zero included. Our backends compute a request in one
execution, so a decoupled model returns all of them at once: **every output has one more leading dimension
than the config's full shape, the response dimension**, of the same size R for every output, and response
``i`` carries slice ``i`` of every requested output. ``IN [n] -> OUT [n, 1]`` is ``n`` responses of
``OUT [1]``.

Then, as Triton does for a decoupled model, the stream marks every data response
``triton_final_response: false`` and ends the request with the completion flag, which travels only when the
request asked for it (``triton_enable_empty_final_response``, tritonclient's ``enable_empty_final_response``):
an empty response marked ``triton_final_response: true``.

Pacing: a config parameter ``response_delay_input`` may name one of the model's integer inputs holding one
delay in milliseconds per response (R values); the stream waits that long before sending each response (on the
event loop, ``asyncio.sleep``; the delays of one request add up to at most ``MAX_DELAY_S``). Triton's
``repeat_int32`` names its ``DELAY`` input this way.

Bounds: at most ``MAX_RESPONSES`` responses per request; a stream holds at most one unsent response of each
decoupled request (the next is made once the transport took the last), and a request counts against the
stream's ``--grpc-max-stream-pending`` until its last response is sent. Unary inference (gRPC ``ModelInfer``,
REST ``infer``) refuses a decoupled model with Triton's message, as UNIMPLEMENTED / 501.
"""

from __future__ import annotations

import numpy as np

from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import model_config_pb2 as mc
from v2server.datatypes import DATATYPES
from v2server.errors import InferenceFailed, InvalidRequest, Unsupported
from v2server.repository.config import RESPONSE_DELAY_PARAMETER
from v2server.signature import Signature
from v2server.tensors import Tensor, element_count, from_contents, from_raw, output_array, to_raw

__all__ = [
    "FINAL_RESPONSE",
    "MAX_DELAY_S",
    "MAX_RESPONSES",
    "check_stream_request",
    "final_response",
    "is_decoupled",
    "refusal",
    "response_delays",
    "split_response",
    "split_steps",
    "wants_empty_final",
]

#: The response parameter that says whether a response is its request's last.
FINAL_RESPONSE = "triton_final_response"
_EMPTY_FINAL = "triton_enable_empty_final_response"
_SHM_PARAMETER = "shared_memory_region"

#: Most responses one request of a decoupled model may have.
MAX_RESPONSES = 4096
#: Most seconds the ``response_delay_input`` delays of one request may add up to.
MAX_DELAY_S = 60.0


def is_decoupled(config: mc.ModelConfig) -> bool:
    """Whether the model answers with any number of responses per request (streams only)."""
    return config.model_transaction_policy.decoupled


def refusal(model: str) -> Unsupported:
    """The error of unary inference on a decoupled model: Triton's words, then ours."""
    return Unsupported(
        "ModelInfer RPC doesn't support models with decoupled transaction policy "
        f"(model '{model}' answers only on a ModelStreamInfer stream; REST has no stream)"
    )


def wants_empty_final(request: pb.ModelInferRequest) -> bool:
    """Whether the request asked for the empty final response of a decoupled model."""
    parameter = request.parameters.get(_EMPTY_FINAL)
    return (
        parameter is not None
        and parameter.WhichOneof("parameter_choice") == "bool_param"
        and parameter.bool_param
    )


def check_stream_request(request: pb.ModelInferRequest, model: str) -> None:
    """What a decoupled model cannot do, refused before it runs: outputs into shared memory (each response
    would overwrite the last one's)."""
    for output in request.outputs:
        if _SHM_PARAMETER in output.parameters:
            raise Unsupported(
                f"output '{output.name}': decoupled model '{model}' cannot write its responses to "
                "shared memory"
            )


def split_steps(response: pb.ModelInferResponse) -> int:
    """Per-element steps ``split_response`` takes (BYTES outputs are walked element by element)."""
    return sum(element_count(o.shape) for o in response.outputs if o.datatype == "BYTES")


def split_response(response: pb.ModelInferResponse, signature: Signature) -> list[pb.ModelInferResponse]:
    """One response per slice of the outputs' leading (response) dimension; each keeps the model name,
    version and id. A model whose outputs break the rule fails the request (InferenceFailed, naming it)."""
    model = signature.model_name
    count: int | None = None
    tensors: list[Tensor] = []
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        shape = list(output.shape)
        expected = signature.full_shape(signature.outputs[output.name])
        if len(shape) != len(expected) + 1 or any(
            d != e and e != -1 for d, e in zip(shape[1:], expected, strict=True)
        ):
            raise InferenceFailed(
                f"decoupled model '{model}' output '{output.name}' has shape {shape}; a decoupled model "
                f"returns [responses] + {expected} (one leading dimension more than the config's shape)"
            )
        if count is None:
            count = shape[0]
        elif shape[0] != count:
            raise InferenceFailed(
                f"decoupled model '{model}': output '{output.name}' holds {shape[0]} responses, "
                f"the other outputs {count}"
            )
        array = output_array(output.name, output.datatype, shape, raw)
        tensors.append(Tensor(output.name, DATATYPES[output.datatype], array))  # known: output_array checked
    count = count or 0
    if count > MAX_RESPONSES:
        raise InferenceFailed(
            f"decoupled model '{model}' returned {count} responses for one request; "
            f"the most is {MAX_RESPONSES}"
        )
    return [
        pb.ModelInferResponse(
            model_name=response.model_name,
            model_version=response.model_version,
            id=response.id,
            outputs=[
                pb.ModelInferResponse.InferOutputTensor(
                    name=t.name, datatype=t.datatype.name, shape=t.array.shape[1:]
                )
                for t in tensors
            ],
            raw_output_contents=[to_raw(Tensor(t.name, t.datatype, t.array[index])) for t in tensors],
        )
        for index in range(count)
    ]


def response_delays(request: pb.ModelInferRequest, config: mc.ModelConfig, count: int) -> list[float]:
    """Seconds to wait before each of the ``count`` responses: from the input the config's
    ``response_delay_input`` names (milliseconds, one per response), else none. The request's inputs were
    checked against the model before (names, datatypes, shapes, sizes)."""
    parameter = config.parameters.get(RESPONSE_DELAY_PARAMETER)
    if parameter is None or not parameter.string_value:
        return [0.0] * count
    name = parameter.string_value
    values = _input_values(request, name)
    if values is None:
        return [0.0] * count
    if values.size != count:
        raise InvalidRequest(
            f"input '{name}' holds {values.size} delays for the {count} responses of model '{config.name}' "
            "(one delay in milliseconds per response)"
        )
    milliseconds = values.astype(np.int64).ravel()
    if (milliseconds < 0).any():
        raise InvalidRequest(f"input '{name}': a delay cannot be negative")
    total = float(milliseconds.sum()) / 1000
    if total > MAX_DELAY_S:
        raise InvalidRequest(
            f"input '{name}': the delays add up to {total:g} s, more than the {MAX_DELAY_S:g} s this server "
            "waits for one request"
        )
    return [float(ms) / 1000 for ms in milliseconds]


def _input_values(request: pb.ModelInferRequest, name: str) -> np.ndarray | None:
    """The values of input ``name`` (None when the request leaves out an optional one): raw entries are
    indexed over the inputs that use them (not in shared memory, no typed contents)."""
    raw = request.raw_input_contents
    index = 0
    for tensor in request.inputs:
        uses_raw = bool(raw) and _SHM_PARAMETER not in tensor.parameters and not tensor.HasField("contents")
        if tensor.name == name:
            if _SHM_PARAMETER in tensor.parameters:
                raise Unsupported(f"input '{name}': response delays cannot come from shared memory")
            if uses_raw:
                return from_raw(name, tensor.datatype, tensor.shape, raw[index]).array
            return from_contents(name, tensor.datatype, tensor.shape, tensor.contents).array
        index += uses_raw
    return None


def final_response(model: str, version: str, response_id: str) -> pb.ModelStreamInferResponse:
    """The empty response that ends a decoupled request, when the request asked for one."""
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=response_id)
    response.parameters[FINAL_RESPONSE].bool_param = True
    return pb.ModelStreamInferResponse(infer_response=response)
