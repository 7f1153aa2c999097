"""Reading ``config.pbtxt`` into ``ModelConfig``, validating it and filling Triton's defaults.

Errors name the file and the field, because an operator reads them in a log far from the file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path

from google.protobuf import json_format, text_format

from v2server._proto import model_config_pb2 as mc
from v2server.datatypes import from_config_type
from v2server.errors import InvalidRequest, ModelLoadError
from v2server.names import check_file_name, check_relative_path
from v2server.sequences import complete_sequence_batching

__all__ = [
    "CONFIG_FILENAME",
    "RESPONSE_DELAY_PARAMETER",
    "apply_override",
    "complete_config",
    "default_config",
    "read_raw_config",
]

CONFIG_FILENAME = "config.pbtxt"
#: A decoupled model's config parameter naming the input that paces its responses (``v2server/decoupled.py``).
RESPONSE_DELAY_PARAMETER = "response_delay_input"


def default_config(model_name: str) -> mc.ModelConfig:
    """The configuration to auto-complete when a model directory has no ``config.pbtxt`` at all."""
    return mc.ModelConfig(name=model_name)


def read_raw_config(model_dir: Path, missing_ok: bool = False) -> mc.ModelConfig:
    """``config.pbtxt`` as written, before validation (an empty config if absent and ``missing_ok``)."""
    path = model_dir / CONFIG_FILENAME
    config = mc.ModelConfig()
    try:
        text = path.read_text()
    except FileNotFoundError:
        if missing_ok:
            return config
        raise ModelLoadError(f"{path}: cannot read model configuration: No such file") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read model configuration: {exc.strerror}") from None
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    return config


def apply_override(config: mc.ModelConfig, override_json: str) -> mc.ModelConfig:
    """Merge a load request's partial config (ModelConfig JSON, proto3 rules) over ``config``.

    Each top-level field the override sets replaces the file's field whole (a repeated ``input`` list is
    replaced, not appended to), which is what a partial override means to a Triton user.
    """
    override = mc.ModelConfig()
    try:
        document = json.loads(override_json)
        if not isinstance(document, dict):
            raise ValueError("it must be a JSON object")
        json_format.ParseDict(document, override)
    except (json_format.ParseError, ValueError, RecursionError) as exc:
        raise ModelLoadError(f"config override is not valid ModelConfig JSON: {exc}") from None
    merged = mc.ModelConfig()
    merged.CopyFrom(config)
    for field, _ in override.ListFields():
        merged.ClearField(field.name)
    merged.MergeFrom(override)
    return merged


def complete_config(config: mc.ModelConfig, model_name: str, source: Path | str) -> mc.ModelConfig:
    """Validate ``config`` for ``model_name`` and fill the defaults Triton reports back in ``ModelConfig``.

    The backend (``platform``, ``backend``, ``default_model_filename``) is the backend catalog's business
    (``backends.resolve``), called before this.
    """

    def fail(message: str) -> ModelLoadError:
        return ModelLoadError(f"{source}: {message}")

    if config.name and config.name != model_name:
        raise fail(f"name '{config.name}' does not match the model directory '{model_name}'")
    config.name = model_name
    # File names in a config (an override comes from a client) name files inside the version folder only.
    file_fields = [("default_model_filename", config.default_model_filename)] if config.default_model_filename else []
    file_fields += [(f"cc_model_filenames['{k}']", v) for k, v in config.cc_model_filenames.items()]
    for field, value in file_fields:
        try:
            check_file_name(value, field)
        except InvalidRequest as exc:
            raise fail(exc.message) from None
    # Classification labels live in the model's folder, below it at most (repository/labels.py reads them).
    for output in config.output:
        if output.label_filename:
            try:
                check_relative_path(output.label_filename, f"output '{output.name}': label_filename")
            except InvalidRequest as exc:
                raise fail(exc.message) from None
    if config.max_batch_size < 0:
        raise fail(f"max_batch_size must be >= 0, got {config.max_batch_size}")
    if not config.input:
        raise fail("at least one input is required (the PyTorch backend cannot derive them)")
    if not config.output:
        raise fail("at least one output is required (the PyTorch backend cannot derive them)")
    _check_tensors("input", config.input, fail)
    _check_tensors("output", config.output, fail)
    if config.HasField("dynamic_batching") and config.max_batch_size == 0:
        raise fail("dynamic_batching needs max_batch_size > 0")
    try:  # sequence_batching: Triton's checks and defaults (v2server/sequences)
        complete_sequence_batching(config)
    except ModelLoadError as exc:
        raise fail(exc.message) from None
    _check_decoupled(config, fail)
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    elif config.version_policy.HasField("latest") and config.version_policy.latest.num_versions < 1:
        raise fail("version_policy.latest.num_versions must be >= 1")
    if not config.instance_group:
        config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_AUTO, count=1)
    for index, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{model_name}_{index}"
        if group.count == 0:
            group.count = 1
        if group.count < 0:
            raise fail(f"instance_group[{index}].count must be >= 1, got {group.count}")
        if group.gpus and group.kind not in (mc.ModelInstanceGroup.KIND_GPU, mc.ModelInstanceGroup.KIND_AUTO):
            raise fail(f"instance_group[{index}] lists gpus but its kind is not KIND_GPU")
    return config


def _check_decoupled(config: mc.ModelConfig, fail: Callable[[str], ModelLoadError]) -> None:
    """A decoupled model (``model_transaction_policy { decoupled: true }``) answers each request from one
    execution of its own, its outputs with a leading response dimension (``v2server/decoupled.py``): no batcher
    may merge its requests, and no output reshape (it would drop that dimension)."""
    delay = config.parameters.get(RESPONSE_DELAY_PARAMETER)
    if not config.model_transaction_policy.decoupled:
        if delay is not None:
            raise fail(f"parameter '{RESPONSE_DELAY_PARAMETER}' is for decoupled models only")
        return
    for scheduler in ("dynamic_batching", "sequence_batching"):
        if config.HasField(scheduler):
            raise fail(f"a decoupled model runs each request on its own here: remove {scheduler}")
    for output in config.output:
        if output.HasField("reshape"):
            raise fail(f"output '{output.name}': a decoupled model's outputs cannot use reshape")
    if delay is not None:
        inputs = {t.name: mc.DataType.Name(t.data_type) for t in config.input}
        kind = inputs.get(delay.string_value, "")
        if not kind.startswith(("TYPE_INT", "TYPE_UINT")):
            raise fail(
                f"parameter '{RESPONSE_DELAY_PARAMETER}' must name an integer input (milliseconds per response); "
                f"'{delay.string_value}' is {'a ' + kind if kind else 'not an input'}"
            )


def _check_tensors(
    kind: str,
    tensors: Iterable[mc.ModelInput | mc.ModelOutput],
    fail: Callable[[str], ModelLoadError],
) -> None:
    seen: set[str] = set()
    for index, tensor in enumerate(tensors):
        if not tensor.name:
            raise fail(f"{kind}[{index}]: name is required")
        where = f"{kind} '{tensor.name}'"
        if tensor.name in seen:
            raise fail(f"{where}: the name is used twice")
        seen.add(tensor.name)
        try:
            from_config_type(mc.DataType.Name(tensor.data_type))
        except ValueError:
            raise fail(f"{where}: data_type must be set to a TYPE_* value") from None
        dims = list(tensor.dims)
        if not dims and not tensor.HasField("reshape"):
            raise fail(f"{where}: dims must not be empty (use reshape: {{ shape: [ ] }} for a scalar)")
        if any(dim < -1 or dim == 0 for dim in dims):
            raise fail(f"{where}: dims {dims} may only hold positive sizes or -1")
        if tensor.HasField("reshape"):
            shape = list(tensor.reshape.shape)
            if -1 not in dims and -1 not in shape and math.prod(dims) != math.prod(shape):
                raise fail(f"{where}: reshape {shape} does not hold the {math.prod(dims)} elements of dims {dims}")
