"""The seam between the server and the code that runs models: what a backend and its instances provide.

The registry knows only these protocols. A backend is found by the config's ``platform`` or ``backend``
(``catalog.py``, filled from the ``v2server.backends`` entry points), so a third-party package adds one
without touching the server; TorchScript registers itself the same way (``backends/torchscript``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from v2server._proto import model_config_pb2 as mc
from v2server.signature import Signature
from v2server.tensors import Tensor

__all__ = ["ModelBackend", "ModelInstance", "StageTimes"]


@dataclass(frozen=True, slots=True)
class StageTimes:
    """Nanoseconds one execution spent in Triton's three compute stages (for statistics)."""

    input_ns: int
    infer_ns: int
    output_ns: int


@runtime_checkable
class ModelInstance(Protocol):
    """One loaded copy of a model version on one device."""

    #: executions started and not finished (the registry sends a request to the least busy instance). An
    #: execution counts until its work has finished, not until its caller stops waiting: a cancelled request
    #: whose work still runs on a thread keeps the instance busy.
    pending: int

    async def execute_timed(
        self, inputs: Sequence[Tensor], outputs: Sequence[str], batch_size: int
    ) -> tuple[list[Tensor], StageTimes]:
        """Run one batch; never block the event loop for long (use a worker thread).

        An instance that runs some executions on the event loop itself (short ones, as TorchScript's may)
        should also define ``warm_inline(inputs, outputs, batch_size) -> bool``: after an instance's warmup
        requests ran through ``execute_timed``, ``run_warmup`` calls it once per request, so that the loop's
        thread pays its one-time costs (an OpenMP team, allocator caches) at load rather than on a request.
        It runs the request on the calling thread when the instance may run inline and returns whether it did.
        """
        ...

    def close(self) -> None:
        """Release the instance (blocking: called from a worker thread)."""
        ...


@runtime_checkable
class ModelBackend(Protocol):
    """How one kind of model file is loaded, described and placed."""

    #: the config's ``backend`` value, e.g. ``pytorch``
    name: str
    #: the config ``platform`` values it serves, e.g. ``("pytorch_libtorch",)``; the first is reported
    platforms: tuple[str, ...]
    #: ``default_model_filename`` when the config sets none
    default_model_filename: str

    def devices(self, config: mc.ModelConfig) -> list[str]:
        """One device name per instance the config's ``instance_group`` asks for (e.g. ``cuda:0``, ``cpu``)."""
        ...

    def complete(self, config: mc.ModelConfig, path: Path) -> list[str]:
        """Auto-complete: fill missing inputs/outputs from the model file at ``path`` (blocking); return
        notes for the log; raise ``ModelLoadError`` when the file does not say enough."""
        ...

    def load(
        self, path: Path, device: str, signature: Signature, label: str, parameters: Mapping[str, str]
    ) -> ModelInstance:
        """Load the model file at ``path`` onto ``device`` (blocking: called from a worker thread).

        ``parameters`` are the config's string ``parameters``; errors are ``ModelLoadError``.
        """
        ...
