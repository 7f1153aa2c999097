"""``sequence_batching`` in config.pbtxt (Triton's checks and defaults, the backend's signature) and a request's
sequence parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from v2server._proto import grpc_service_pb2 as pb
from v2server._proto import model_config_pb2 as mc
from v2server.errors import InvalidRequest, ModelLoadError
from v2server.repository import complete_config
from v2server.sequences import (
    SequenceControl,
    SequenceSpec,
    backend_signature,
    complete_sequence_batching,
    sequence_control,
)
from v2server.signature import Signature

_BASE = """
    name: "seq" max_batch_size: 8
    input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
    output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""


def _config(batching: str, base: str = _BASE) -> mc.ModelConfig:
    return text_format.Parse(base + f"sequence_batching {{ {batching} }}", mc.ModelConfig())


def _control(name: str, kind: str, setting: str = "int32_false_true: [ 0, 1 ]") -> str:
    return f'control_input [ {{ name: "{name}" control [ {{ kind: CONTROL_SEQUENCE_{kind} {setting} }} ] }} ]'


def test_defaults_are_tritons() -> None:
    config = _config("oldest { max_candidate_sequences: 4 }")
    complete_config(config, "seq", "config.pbtxt")
    assert config.sequence_batching.max_sequence_idle_microseconds == 1_000_000
    assert list(config.sequence_batching.oldest.preferred_batch_size) == [8]
    spec = SequenceSpec.from_config(config)
    assert (spec.strategy, spec.slots_per_instance, spec.idle_us) == ("oldest", 4, 1_000_000)
    direct = SequenceSpec.from_config(_config(""))
    assert (direct.strategy, direct.slots_per_instance) == ("direct", 8)


@pytest.mark.parametrize(
    ("batching", "message"),
    [
        (_control("", "START"), "sequence batching control tensor must have a name for seq"),
        (_control("S", "START") + _control("S", "END"),
         "sequence batching control tensor 'S' is specified for multiple control kinds for seq"),
        (_control("S", "START") + _control("T", "START"),
         "sequence batching specifies multiple CONTROL_SEQUENCE_START tensors for seq"),
        (_control("S", "START", ""), "sequence batching must specify either 'int32_false_true', 'fp32_false_true' "
         "or 'bool_false_true' for CONTROL_SEQUENCE_START for seq"),
        (_control("S", "READY", "int32_false_true: [ 0, 1 ] fp32_false_true: [ 0, 1 ]"),
         "sequence batching specifies more than one from"),
        (_control("S", "END", "int32_false_true: [ 1 ]"),
         "sequence batching control 'int32_false_true' must have exactly 2 entries for CONTROL_SEQUENCE_END for seq"),
        (_control("C", "CORRID", "data_type: TYPE_FP32"),
         "unexpected data type for control CONTROL_SEQUENCE_CORRID for seq. Allowed data types are TYPE_UINT64"),
        (_control("C", "CORRID", "data_type: TYPE_UINT64 int32_false_true: [ 0, 1 ]"),
         "sequence batching must not specify either"),
        (_control("INPUT", "START"), "control tensor 'INPUT' is also a model input"),
        ("oldest { preferred_batch_size: [ 9 ] }", "sequence batching preferred batch size must be <= max batch size"),
        ("oldest { preferred_batch_size: [ 0 ] }", "sequence batching preferred batch size must be positive"),
        ("direct { minimum_slot_utilization: 1.5 }", "minimum slot utilization must be in range (0.0, 1.0]"),
        ("iterative_sequence: true", "'iterative_sequence' is not supported"),
        ('state [ { input_name: "S" output_name: "T" data_type: TYPE_INT32 dims: [ 1 ] '
         "initial_state [ { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true }, "
         "{ data_type: TYPE_INT32 dims: [ 1 ] zero_data: true } ] } ]",
         "initial_state field for state input 'S' must contain exactly one or zero element. Found '2' elements."),
        ('state [ { input_name: "S" output_name: "T" data_type: TYPE_INT32 dims: [ 1 ] '
         'initial_state { data_type: TYPE_INT32 dims: [ 1 ] data_file: "f" } } ]', "'data_file' is not"),
        ('state [ { input_name: "S" output_name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]',
         "state output 'OUTPUT' is also a model output"),
        ('state [ { input_name: "S" output_name: "T" dims: [ 1 ] } ]', "data_type must be set"),
    ],
)
def test_tritons_checks(batching: str, message: str) -> None:
    with pytest.raises(ModelLoadError) as caught:
        complete_sequence_batching(_config(batching))
    assert message in caught.value.message


def test_complete_config_names_the_file() -> None:
    with pytest.raises(ModelLoadError, match=r"^m/config.pbtxt: sequence batching control tensor must have a name"):
        complete_config(_config(_control("", "START")), "seq", "m/config.pbtxt")


def test_the_backend_binds_controls_and_states_the_client_never_sees() -> None:
    config = _config(
        _control("START", "START") + _control("CORRID", "CORRID", "data_type: TYPE_STRING")
        + 'state [ { input_name: "S_IN" output_name: "S_OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]'
    )
    complete_sequence_batching(config)
    client = Signature.from_config(config)
    bound = backend_signature(config, client)
    assert list(client.inputs) == ["INPUT"] and list(client.outputs) == ["OUTPUT"]
    assert {name: spec.datatype.name for name, spec in bound.inputs.items()} == {
        "INPUT": "INT32", "START": "INT32", "CORRID": "BYTES", "S_IN": "FP32",
    }
    assert list(bound.outputs) == ["OUTPUT", "S_OUT"]
    [state] = SequenceSpec.from_config(config).states
    assert state.initial.shape == (1,) and state.initial.tolist() == [0.0]  # a variable dimension starts at 1
    plain = text_format.Parse(_BASE, mc.ModelConfig())
    assert backend_signature(plain, Signature.from_config(plain)) == Signature.from_config(plain)


def _request(**parameters: pb.InferParameter) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    for key, value in parameters.items():
        request.parameters[key].CopyFrom(value)
    return request


def test_sequence_parameters_from_grpc_and_rest() -> None:
    assert sequence_control(_request()) is None
    control = sequence_control(_request(
        sequence_id=pb.InferParameter(int64_param=1000), sequence_start=pb.InferParameter(bool_param=True),
        sequence_end=pb.InferParameter(bool_param=False),
    ))
    assert control == SequenceControl(1000, True, False)
    assert sequence_control(_request(sequence_id=pb.InferParameter(string_param="a-b"))) == SequenceControl("a-b")
    assert sequence_control(_request(sequence_id=pb.InferParameter(uint64_param=2**64 - 1))) == SequenceControl(
        2**64 - 1
    )
    assert sequence_control(_request(sequence_id=pb.InferParameter(int64_param=-1))) == SequenceControl(2**64 - 1)
    assert not SequenceControl(0).in_sequence and not SequenceControl("").in_sequence


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"sequence_id": pb.InferParameter(bool_param=True)},
         "invalid value type for 'sequence_id' parameter, expected int64_param or string_param."),
        ({"sequence_id": pb.InferParameter(int64_param=1), "sequence_start": pb.InferParameter(int64_param=1)},
         "invalid value type for 'sequence_start' parameter, expected bool_param."),
        ({"sequence_end": pb.InferParameter(string_param="yes")},
         "invalid value type for 'sequence_end' parameter, expected bool_param."),
    ],
)
def test_sequence_parameters_of_the_wrong_type(parameters: dict[str, pb.InferParameter], message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        sequence_control(_request(**parameters))
    assert caught.value.message == message


def test_auto_complete_leaves_out_the_inputs_the_server_fills(tmp_path: Path) -> None:
    import torch

    from v2server.backends.torchscript.autocomplete import autocomplete_config

    def forward(value: int, START: int, STATE: int) -> int:  # noqa: N803 (control and state names)
        return value + START + STATE

    config = text_format.Parse(
        'name: "seq" sequence_batching { ' + _control("START", "START")
        + ' state [ { input_name: "STATE" output_name: "NEXT" data_type: TYPE_INT64 dims: [ 1 ] } ] }',
        mc.ModelConfig(),
    )
    torch.jit.script(forward).save(str(tmp_path / "model.pt"))
    autocomplete_config(config, torch.jit.load(str(tmp_path / "model.pt")))
    assert [tensor.name for tensor in config.input] == ["value"]
