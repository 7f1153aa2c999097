"""``config.pbtxt``: parsing, Triton's defaults, and errors that name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from v2server._proto import model_config_pb2 as mc
from v2server.backends import resolve
from v2server.errors import ModelLoadError
from v2server.loading import ModelLoader
from v2server.repository.config import complete_config

TENSORS = """
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


def read_config(model_dir: Path) -> mc.ModelConfig:
    """What the loader makes of a model folder's config.pbtxt (backend resolved, validated, defaults filled)."""
    return ModelLoader().read_config(model_dir.name, model_dir, None)[0]


def _write(tmp_path: Path, text: str, model: str = "my_model") -> Path:
    model_dir = tmp_path / model
    model_dir.mkdir()
    (model_dir / "config.pbtxt").write_text(text)
    return model_dir


def test_defaults_are_filled(tmp_path: Path) -> None:
    config = read_config(_write(tmp_path, TENSORS))
    assert config.name == "my_model"
    assert (config.platform, config.backend) == ("pytorch_libtorch", "pytorch")
    assert config.default_model_filename == "model.pt"
    assert config.max_batch_size == 0
    assert config.version_policy.WhichOneof("policy_choice") == "latest"
    assert config.version_policy.latest.num_versions == 1
    assert [(g.name, g.kind, g.count) for g in config.instance_group] == [
        ("my_model_0", mc.ModelInstanceGroup.KIND_AUTO, 1)
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("INPUT0", mc.TYPE_FP32, [4])]


def test_given_values_are_kept(tmp_path: Path) -> None:
    text = TENSORS + """
    name: "my_model" backend: "pytorch" max_batch_size: 16 default_model_filename: "traced.pt"
    dynamic_batching { }
    version_policy { all { } }
    instance_group [ { kind: KIND_CPU count: 2 }, { name: "fast" kind: KIND_GPU gpus: [ 0 ] } ]
    """
    config = read_config(_write(tmp_path, text))
    assert (config.platform, config.backend, config.max_batch_size) == ("pytorch_libtorch", "pytorch", 16)
    assert config.default_model_filename == "traced.pt"
    assert config.version_policy.WhichOneof("policy_choice") == "all"
    assert [(g.name, g.kind, g.count) for g in config.instance_group] == [
        ("my_model_0", mc.ModelInstanceGroup.KIND_CPU, 2),
        ("fast", mc.ModelInstanceGroup.KIND_GPU, 1),
    ]


def test_scalar_through_an_empty_reshape(tmp_path: Path) -> None:
    text = """
    input [ { name: "INPUT0" data_type: TYPE_INT64 dims: [ 1 ] reshape: { shape: [ ] } } ]
    output [ { name: "OUTPUT0" data_type: TYPE_INT64 dims: [ ] reshape: { shape: [ ] } } ]
    """
    config = read_config(_write(tmp_path, text))
    assert list(config.output[0].dims) == [] and config.output[0].HasField("reshape")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("input [ { name: ", "Expected string"),
        (TENSORS + "bogus_field: 1", 'no field named "bogus_field"'),
        (TENSORS + 'name: "other"', "name 'other' does not match the model directory 'my_model'"),
        (TENSORS + 'platform: "onnxruntime_onnx"', "platform 'onnxruntime_onnx' / backend '' is not served here"),
        (TENSORS + 'backend: "onnxruntime"', "platform '' / backend 'onnxruntime' is not served here"),
        (TENSORS + "max_batch_size: -1", "max_batch_size must be >= 0, got -1"),
        ('output [ { name: "O" data_type: TYPE_FP32 dims: [ 1 ] } ]', "at least one input is required"),
        ('input [ { name: "I" data_type: TYPE_FP32 dims: [ 1 ] } ]', "at least one output is required"),
        (
            'input [ { data_type: TYPE_FP32 dims: [ 1 ] } ] output [ { name: "O" data_type: TYPE_FP32 dims: [ 1 ] } ]',
            "input[0]: name is required",
        ),
        (
            'input [ { name: "I" dims: [ 1 ] } ] output [ { name: "O" data_type: TYPE_FP32 dims: [ 1 ] } ]',
            "input 'I': data_type must be set to a TYPE_* value",
        ),
        (
            'input [ { name: "I" data_type: TYPE_FP32 dims: [ 1 ] } ] output [ { name: "O" data_type: TYPE_FP32 } ]',
            "output 'O': dims must not be empty",
        ),
        (
            (
                'input [ { name: "I" data_type: TYPE_FP32 dims: [ 2, 0 ] } ] '
                'output [ { name: "O" data_type: TYPE_FP32 dims: [ 1 ] } ]'
            ),
            "input 'I': dims [2, 0] may only hold positive sizes or -1",
        ),
        (
            (
                'input [ { name: "I" data_type: TYPE_FP32 dims: [ -2 ] } ] '
                'output [ { name: "O" data_type: TYPE_FP32 dims: [ 1 ] } ]'
            ),
            "input 'I': dims [-2] may only hold positive sizes or -1",
        ),
        (
            (
                'input [ { name: "I" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "I" data_type: TYPE_INT8 dims: [ 1 ] } ]'
                ' output [ { name: "O" data_type: TYPE_FP32 dims: [ 1 ] } ]'
            ),
            "input 'I': the name is used twice",
        ),
        (
            (
                'input [ { name: "I" data_type: TYPE_FP32 dims: [ 1 ] } ] output [ { name: "O" data_type: TYPE_FP32 '
                'dims: [ 1 ] }, { name: "O" data_type: TYPE_FP32 dims: [ 1 ] } ]'
            ),
            "output 'O': the name is used twice",
        ),
        (
            (
                'input [ { name: "I" data_type: TYPE_FP32 dims: [ 6 ] reshape: { shape: [ 4 ] } } ] '
                'output [ { name: "O" data_type: TYPE_FP32 dims: [ 1 ] } ]'
            ),
            "input 'I': reshape [4] does not hold the 6 elements of dims [6]",
        ),
        (TENSORS + "dynamic_batching { }", "dynamic_batching needs max_batch_size > 0"),
        (TENSORS + "version_policy { latest { num_versions: 0 } }", "version_policy.latest.num_versions must be >= 1"),
        (TENSORS + "instance_group [ { count: -1 } ]", "instance_group[0].count must be >= 1, got -1"),
        (
            TENSORS + "instance_group [ { kind: KIND_GPU }, { kind: KIND_CPU gpus: [ 0 ] } ]",
            "instance_group[1] lists gpus but its kind is not KIND_GPU",
        ),
    ],
    ids=[
        "bad-text", "unknown-field", "name-mismatch", "platform", "backend", "negative-max-batch", "no-input",
        "no-output", "unnamed", "missing-data-type", "empty-dims", "dims-0", "dims-below--1", "duplicate-input",
        "duplicate-output", "reshape-size", "dynamic-batching-without-batch", "latest-0", "negative-count",
        "gpus-on-cpu-group",
    ],
)
def test_invalid_config_names_the_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    model_dir = _write(tmp_path, text)
    with pytest.raises(ModelLoadError) as caught:
        read_config(model_dir)
    assert caught.value.message.startswith(f"{model_dir / 'config.pbtxt'}: ")
    assert message in caught.value.message


def test_missing_file(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelLoadError, match="config.pbtxt: cannot read model configuration: No such file"):
        read_config(tmp_path / "m")


def test_complete_config_names_its_source_and_does_not_need_a_file() -> None:
    config = text_format.Parse(TENSORS, mc.ModelConfig())
    assert complete_config(config, "in_memory", "<request>").name == "in_memory"
    config.platform = "tensorflow_savedmodel"
    with pytest.raises(ModelLoadError, match="^<request>: platform 'tensorflow_savedmodel'"):
        resolve(config, "<request>")
