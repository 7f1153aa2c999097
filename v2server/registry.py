"""Loaded models in memory: one ``ModelHandle`` per served version, with its state.

A handle is a unit (config, signature, instances); loading builds a new one beside any old one and swaps a
reference, so nothing a request holds is mutated under it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from v2server._proto import model_config_pb2 as mc
from v2server.backends import TorchScriptInstance, load_instance, place_instances
from v2server.errors import InvalidRequest, ModelLoadError, ModelNotFound, ModelNotReady
from v2server.repository import discover_models, read_config, select_versions
from v2server.signature import Signature
from v2server.tensors import Tensor

__all__ = ["ModelHandle", "ModelState", "ModelStatus", "Registry"]

log = logging.getLogger(__name__)


class ModelState(enum.Enum):
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"


@dataclass(slots=True)
class ModelStatus:
    """What the repository index reports for one model version (version 0: the model as a whole)."""

    name: str
    version: int
    state: ModelState
    reason: str = ""


@dataclass(eq=False)
class ModelHandle:
    """One served model version: config, signature and its loaded instances."""

    name: str
    version: int
    config: mc.ModelConfig
    signature: Signature
    instances: list[TorchScriptInstance] = field(default_factory=list)

    async def execute(self, inputs: Sequence[Tensor], outputs: Sequence[str], batch_size: int) -> list[Tensor]:
        """Run on the least busy instance."""
        instance = min(self.instances, key=lambda i: i.pending)
        return await instance.execute(inputs, outputs, batch_size)

    def close(self) -> None:
        for instance in self.instances:
            instance.close()


class Registry:
    """Every model the server knows: what is on disk, what is loaded, and why not."""

    def __init__(self, repositories: Sequence[Path]) -> None:
        self._repositories = tuple(repositories)
        self._handles: dict[str, dict[int, ModelHandle]] = {}
        self._status: dict[str, list[ModelStatus]] = {}

    # -- lookups (hot path: plain dict reads) -------------------------------------------------------------

    def get(self, name: str, version: str = "") -> ModelHandle:
        """The handle for ``name`` at ``version`` ("" or "-1": the highest ready version)."""
        versions = self._handles.get(name)
        if not versions:
            if name in self._status:
                raise ModelNotReady(f"model '{name}' is not ready: {self._reason(name)}")
            raise ModelNotFound(f"unknown model '{name}'")
        if version in ("", "-1"):
            return versions[max(versions)]
        if not version.isdigit():
            raise InvalidRequest(f"model '{name}': version '{version}' is not a number")
        handle = versions.get(int(version))
        if handle is None:
            raise ModelNotFound(
                f"model '{name}' has no version {version} being served (serving {sorted(versions)})"
            )
        return handle

    def ready_versions(self, name: str) -> list[int]:
        return sorted(self._handles.get(name, {}))

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except (ModelNotFound, ModelNotReady, InvalidRequest):
            return False
        return True

    def all_ready(self) -> bool:
        """Strict readiness: every model we tried to load is serving."""
        return all(self._handles.get(name) for name in self._status)

    def index(self) -> list[ModelStatus]:
        """Every model in the repositories with its state, loaded or not."""
        rows: list[ModelStatus] = []
        for name in sorted(set(self._on_disk()) | set(self._status)):
            rows.extend(self._status.get(name) or [ModelStatus(name, 0, ModelState.UNAVAILABLE, "not loaded")])
        return rows

    # -- loading ------------------------------------------------------------------------------------------

    async def load_all(self, names: Sequence[str] | None = None) -> list[ModelStatus]:
        """Load ``names`` (all models on disk when None) concurrently; return the failures."""
        on_disk = self._on_disk()
        targets = list(on_disk) if names is None else list(names)
        for name in targets:
            self._status[name] = [ModelStatus(name, 0, ModelState.LOADING)]
        await asyncio.gather(*(self.load(name, on_disk.get(name)) for name in targets))
        return [s for name in targets for s in self._status[name] if s.state is not ModelState.READY]

    async def load(self, name: str, model_dir: Path | None) -> None:
        """Load every version the policy selects; failures are recorded, never raised."""
        try:
            if model_dir is None:
                raise ModelLoadError(f"no model directory named '{name}' in {list(map(str, self._repositories))}")
            config = await asyncio.to_thread(read_config, model_dir)
            versions = select_versions(model_dir, config.version_policy)
        except ModelLoadError as exc:
            self._fail(name, 0, exc.message)
            return
        results = await asyncio.gather(
            *(self._load_version(name, model_dir, config, v) for v in versions), return_exceptions=True
        )
        handles: dict[int, ModelHandle] = {}
        statuses: list[ModelStatus] = []
        for version, result in zip(versions, results, strict=False):
            if isinstance(result, ModelHandle):
                handles[version] = result
                statuses.append(ModelStatus(name, version, ModelState.READY))
            else:
                reason = result.message if isinstance(result, ModelLoadError) else repr(result)
                log.error("model '%s' version %d failed to load: %s", name, version, reason)
                statuses.append(ModelStatus(name, version, ModelState.UNAVAILABLE, reason))
        old = self._handles.get(name, {})
        self._handles[name] = handles
        self._status[name] = statuses
        for handle in old.values():
            handle.close()
        if handles:
            log.info("model '%s' ready, versions %s", name, sorted(handles))

    async def _load_version(self, name: str, model_dir: Path, config: mc.ModelConfig, version: int) -> ModelHandle:
        version_config = mc.ModelConfig()
        version_config.CopyFrom(config)
        devices = place_instances(version_config)
        signature = Signature.from_config(version_config)
        path = model_dir / str(version) / version_config.default_model_filename
        results = await asyncio.gather(
            *(
                asyncio.to_thread(load_instance, path, device, signature, f"{name}-v{version}-{i}-{device}")
                for i, device in enumerate(devices)
            ),
            return_exceptions=True,
        )
        handle = ModelHandle(name, version, version_config, signature,
                             [r for r in results if isinstance(r, TorchScriptInstance)])
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            handle.close()
            raise failure
        return handle

    def close(self) -> None:
        for versions in self._handles.values():
            for handle in versions.values():
                handle.close()
        self._handles.clear()

    def _fail(self, name: str, version: int, reason: str) -> None:
        log.error("model '%s' failed to load: %s", name, reason)
        self._handles.pop(name, None)
        self._status[name] = [ModelStatus(name, version, ModelState.UNAVAILABLE, reason)]

    def _reason(self, name: str) -> str:
        reasons = [s.reason for s in self._status.get(name, []) if s.reason]
        states = {s.state.value for s in self._status.get(name, [])}
        return "; ".join(reasons) or ", ".join(sorted(states)) or "not loaded"

    def _on_disk(self) -> dict[str, Path]:
        try:
            return discover_models(self._repositories)
        except ModelLoadError as exc:
            log.error("%s", exc.message)
            return {}
