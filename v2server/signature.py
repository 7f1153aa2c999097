"""A model's tensor signature from its config, and the checks every request passes against it.

The checks run on names, datatypes and shapes before any tensor bytes are touched, so the error a client
sees names the real problem (a wrong datatype, not the byte count that follows from it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from v2server._proto import model_config_pb2 as mc
from v2server.datatypes import DataType, from_config_type
from v2server.errors import InvalidRequest

__all__ = ["Signature", "TensorSpec"]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output as the config declares it (``dims`` exclude the batch dimension)."""

    name: str
    datatype: DataType
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None
    optional: bool = False

    @classmethod
    def from_config(cls, tensor: mc.ModelInput | mc.ModelOutput) -> TensorSpec:
        return cls(
            name=tensor.name,
            datatype=from_config_type(mc.DataType.Name(tensor.data_type)),
            dims=tuple(tensor.dims),
            reshape=tuple(tensor.reshape.shape) if tensor.HasField("reshape") else None,
            optional=isinstance(tensor, mc.ModelInput) and tensor.optional,
        )


@dataclass(frozen=True, slots=True)
class Signature:
    """Inputs and outputs of a model version, in config order, with its batching rule."""

    model_name: str
    max_batch_size: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    @classmethod
    def from_config(cls, config: mc.ModelConfig) -> Signature:
        return cls(
            model_name=config.name,
            max_batch_size=config.max_batch_size,
            inputs={t.name: TensorSpec.from_config(t) for t in config.input},
            outputs={t.name: TensorSpec.from_config(t) for t in config.output},
        )

    def full_shape(self, spec: TensorSpec) -> list[int]:
        """The shape clients see in metadata: ``[-1] + dims`` when the model batches."""
        return [-1, *spec.dims] if self.max_batch_size > 0 else list(spec.dims)

    def check_inputs(self, inputs: Iterable[tuple[str, str, tuple[int, ...]]]) -> int:
        """Check ``(name, datatype, shape)`` of every request input; return the batch size (0: no batching)."""
        seen: set[str] = set()
        batch_size: int | None = None
        for name, datatype_name, shape in inputs:
            if name in seen:
                raise InvalidRequest(f"input '{name}' is given more than once")
            seen.add(name)
            spec = self.inputs.get(name)
            if spec is None:
                raise InvalidRequest(
                    f"unexpected inference input '{name}' for model '{self.model_name}' "
                    f"(it takes {list(self.inputs)})"
                )
            if datatype_name != spec.datatype.name:
                raise InvalidRequest(
                    f"inference input '{name}' data-type is '{datatype_name}', "
                    f"but model '{self.model_name}' expects '{spec.datatype.name}'"
                )
            batch = self._check_shape(spec, shape)
            if batch_size is None:
                batch_size = batch
            elif batch != batch_size:
                raise InvalidRequest(
                    f"input '{name}': batch size {batch} differs from the other inputs' batch size {batch_size}"
                )
        missing = [spec.name for spec in self.inputs.values() if spec.name not in seen and not spec.optional]
        if missing:
            required = sum(not spec.optional for spec in self.inputs.values())
            expected = (
                f"{len(self.inputs)} inputs" if required == len(self.inputs)
                else f"number of inputs between {required} and {len(self.inputs)}"
            )
            raise InvalidRequest(
                f"expected {expected} but got {len(seen)} inputs for model '{self.model_name}'. "
                f"Got input(s) {sorted(seen)}, but missing required input(s) {missing}. "
                "Please provide all required input(s)."
            )
        return batch_size or 0

    def _check_shape(self, spec: TensorSpec, shape: tuple[int, ...]) -> int:
        dims = shape
        batch = 0
        if self.max_batch_size > 0:
            if not shape:
                raise InvalidRequest(f"input '{spec.name}': shape [] has no batch dimension")
            batch, dims = shape[0], shape[1:]
            if not 1 <= batch <= self.max_batch_size:
                raise InvalidRequest(
                    f"inference request batch-size must be <= {self.max_batch_size} for '{self.model_name}' "
                    f"(and at least 1; input '{spec.name}' has {batch})"
                )
        if len(dims) != len(spec.dims) or any(d != want and want != -1 for d, want in zip(dims, spec.dims, strict=False)):
            raise InvalidRequest(
                f"unexpected shape for input '{spec.name}' for model '{self.model_name}'. "
                f"Expected {_dims(self.full_shape(spec))}, got {_dims(shape)} (-1 is any size)"
            )
        if any(d < 0 for d in shape):
            raise InvalidRequest(f"input '{spec.name}': shape {list(shape)} has a negative dimension")
        return batch


def _dims(shape: Iterable[int]) -> str:
    """A shape as Triton prints it in messages: ``[-1,16]``."""
    return "[" + ",".join(map(str, shape)) + "]"
