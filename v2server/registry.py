"""Loaded models in memory: one ``ModelHandle`` per served version, their states, load/unload/reload.

A handle is a unit (config, signature, instances). Loading builds new handles beside the old ones and swaps
one dict reference, so a request that already holds a handle finishes on it; old handles are closed only
after their in-flight requests drain. A reload that fails leaves the old versions serving.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from v2server import access_log
from v2server._proto import model_config_pb2 as mc
from v2server.backends import StageTimes, TorchScriptInstance, load_instance, place_instances
from v2server.batching import DynamicBatcher
from v2server.errors import InvalidRequest, ModelLoadError, ModelNotFound, ModelNotReady, V2Error
from v2server.names import check_model_name
from v2server.repository import (
    CONFIG_FILENAME,
    apply_override,
    complete_config,
    discover_models,
    fingerprint,
    read_raw_config,
    select_versions,
)
from v2server.repository.aliases import check_alias_name, read_aliases, write_aliases
from v2server.repository.autocomplete import autocomplete_config, default_config
from v2server.repository.uploads import Upload, check_upload_paths, write_upload
from v2server.signature import Signature
from v2server.statistics import DEFAULT_BUCKETS_US, VersionStatistics
from v2server.tensors import Tensor
from v2server.warmup import run_warmup, warmup_requests

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
    """One served model version: config, signature, instances, its batcher (if any) and statistics."""

    name: str
    version: int
    config: mc.ModelConfig
    signature: Signature
    instances: list[TorchScriptInstance] = field(default_factory=list)
    buckets_us: tuple[float, ...] = DEFAULT_BUCKETS_US
    inflight: int = 0
    stats: VersionStatistics = field(init=False)
    batcher: DynamicBatcher | None = field(init=False, default=None)
    _drained: asyncio.Event | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.stats = VersionStatistics(self.name, self.version, self.buckets_us)
        if self.config.HasField("dynamic_batching"):
            self.batcher = DynamicBatcher(
                self.name, self.config.dynamic_batching, self.config.max_batch_size, self._run_batch,
                concurrency=max(1, len(self.instances)),
            )

    async def execute(
        self,
        inputs: Sequence[Tensor],
        outputs: Sequence[str],
        batch_size: int,
        priority: int = 0,
        timeout_us: int = 0,
    ) -> list[Tensor]:
        """Run one request (through the dynamic batcher when the config has one), counted for statistics
        and so that an unload can wait for it."""
        self.inflight += 1
        self.stats.request_started()
        start = time.perf_counter_ns()
        success, queue_ns, times = False, 0, _NO_TIMES
        try:
            if self.batcher is not None:
                result = await self.batcher.submit(list(inputs), list(outputs), batch_size, priority, timeout_us)
                tensors, queue_ns, times = result.outputs, result.queue_ns, result.info
            else:
                tensors, times = await self._run_batch(list(inputs), list(outputs), batch_size)
            success = True
            record = access_log.current()
            if record is not None:
                record.batch_size = result.batch_size if self.batcher is not None else batch_size
                record.queue_us = queue_ns / 1000
                record.compute_us = (times.input_ns + times.infer_ns + times.output_ns) / 1000
            return tensors
        finally:
            self.stats.request_finished(
                success, batch_size, time.perf_counter_ns() - start, queue_ns,
                times.input_ns, times.infer_ns, times.output_ns,
            )
            self.inflight -= 1
            if self.inflight == 0 and self._drained is not None:
                self._drained.set()

    async def _run_batch(
        self, inputs: list[Tensor], outputs: list[str], batch_size: int
    ) -> tuple[list[Tensor], StageTimes]:
        """One model execution on the least busy instance (also the batcher's runner)."""
        instance = min(self.instances, key=lambda i: i.pending)
        tensors, times = await instance.execute_timed(inputs, outputs, batch_size)
        self.stats.execution(batch_size, times.input_ns, times.infer_ns, times.output_ns)
        return tensors, times

    async def drain_and_close(self) -> None:
        """Wait for in-flight requests, then release the batcher and the instances."""
        while self.inflight:
            self._drained = asyncio.Event()
            await self._drained.wait()
        if self.batcher is not None:
            await self.batcher.close()
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        for instance in self.instances:
            instance.close()


_NO_TIMES = StageTimes(0, 0, 0)


ChangeListener = Callable[[], Awaitable[None]]


class Registry:
    """Every model the server knows: what is on disk, what is loaded, and why not."""

    def __init__(
        self,
        repositories: Sequence[Path],
        strict_model_config: bool = True,
        on_change: ChangeListener | None = None,
        latency_buckets_us: tuple[float, ...] = DEFAULT_BUCKETS_US,
        single_models: Mapping[str, Path] | None = None,
    ) -> None:
        self._repositories = tuple(repositories)
        self._single_models = dict(single_models or {})  # KServe style: one model folder, named by a flag
        self._buckets_us = latency_buckets_us
        self._strict = strict_model_config
        self.on_change = on_change
        self._handles: dict[str, dict[int, ModelHandle]] = {}
        self._status: dict[str, list[ModelStatus]] = {}
        self._wanted: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._fingerprints: dict[str, object] = {}
        self._uploads: dict[str, list[Upload]] = {}
        self._model_dirs: dict[str, Path] = {}
        self._aliases: dict[str, dict[str, int]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    # -- lookups (hot path: plain dict reads) -------------------------------------------------------------

    def get(self, name: str, version: str = "") -> ModelHandle:
        """The handle for ``name`` at ``version`` ("" or "-1": the highest ready version)."""
        versions = self._handles.get(name)
        if not versions:
            check_model_name(name)  # only on a miss: a served name was checked when it was loaded
            if name in self._status:
                raise ModelNotReady(f"model '{name}' is not ready: {self._reason(name)}")
            raise ModelNotFound(f"unknown model '{name}'")
        if version in ("", "-1"):
            return versions[max(versions)]
        if not (version.isascii() and version.isdigit()):
            raise InvalidRequest(f"model '{name}': version '{version}' is not a number")
        handle = versions.get(int(version))
        if handle is None:
            raise ModelNotFound(f"model '{name}' has no version {version} being served (serving {sorted(versions)})")
        return handle

    def ready_versions(self, name: str) -> list[int]:
        return sorted(self._handles.get(name, {}))

    def is_ready(self, name: str, version: str = "") -> bool:
        """Whether ``name`` (at ``version``) is serving; a malformed name or version is still an error."""
        try:
            self.get(name, version)
        except (ModelNotFound, ModelNotReady):
            return False
        return True

    def all_ready(self) -> bool:
        """Strict readiness: every model that should be served is serving."""
        return all(self._handles.get(name) for name in self._wanted)

    def handles(self, name: str = "") -> list[ModelHandle]:
        """Served handles, of one model or (``name`` "") of all, by name and version."""
        names = [name] if name else sorted(self._handles)
        return [self._handles[n][v] for n in names for v in sorted(self._handles.get(n, {}))]

    def index(self) -> list[ModelStatus]:
        """Every model in the repositories with its state, loaded or not."""
        rows: list[ModelStatus] = []
        for name in sorted(set(self._on_disk()) | set(self._status)):
            rows.extend(self._status.get(name) or [ModelStatus(name, 0, ModelState.UNAVAILABLE, "not loaded")])
        return rows

    # -- version aliases (persisted in <model>/aliases.json) ------------------------------------------------

    def aliases(self, name: str) -> dict[str, int]:
        """The aliases of a served model, by name."""
        self.get(name)
        return dict(sorted(self._aliases.get(name, {}).items()))

    def resolve_alias(self, name: str, alias: str) -> str:
        """The version ``alias`` points to now, as a version string for one request."""
        self.get(name)
        version = self._aliases.get(name, {}).get(alias)
        if version is None:
            raise ModelNotFound(f"model '{name}' has no version or alias '{alias}'")
        if version not in self._handles.get(name, {}):
            raise ModelNotFound(
                f"alias '{alias}' of model '{name}' points to version {version}, which is not being served"
            )
        return str(version)

    async def set_alias(self, name: str, alias: str, version: int) -> dict[str, int]:
        """Point ``alias`` at a served ``version`` (saved before it takes effect); returns every alias."""
        check_alias_name(alias)
        async with self._lock(name):
            served = self.ready_versions(name) if self.get(name) else []
            if version not in served:
                raise InvalidRequest(
                    f"alias '{alias}': model '{name}' has no version {version} being served (serving {served})"
                )
            return await self._save_aliases(name, {**self._aliases.get(name, {}), alias: version})

    async def delete_alias(self, name: str, alias: str) -> dict[str, int]:
        """Remove ``alias``; returns the remaining aliases."""
        async with self._lock(name):
            aliases = dict(self._aliases.get(name, {}))
            if self.get(name) and aliases.pop(alias, None) is None:
                raise ModelNotFound(f"model '{name}' has no alias '{alias}'")
            return await self._save_aliases(name, aliases)

    async def _save_aliases(self, name: str, aliases: dict[str, int]) -> dict[str, int]:
        model_dir = self._model_dirs.get(name)
        if model_dir is not None:
            try:
                await asyncio.to_thread(write_aliases, model_dir, aliases)
            except OSError as exc:  # a read-only repository (a Kubernetes volume, say) keeps the old aliases
                raise V2Error(f"cannot save the aliases of model '{name}' in {model_dir}: {exc.strerror}") from None
        self._aliases[name] = aliases  # a new dict: a request resolving now sees the old mapping or this one
        return dict(sorted(aliases.items()))

    # -- load, unload, poll -------------------------------------------------------------------------------

    async def load_all(self, names: Sequence[str] | None = None) -> list[ModelStatus]:
        """Start-up: load ``names`` (every model on disk when None) concurrently; return the failures.

        Every one of them counts for strict readiness, loaded or not (a model asked for at start that is
        not serving makes the server not ready). A name in no repository is a failure, not an error.
        """
        targets = list(self._on_disk()) if names is None else list(dict.fromkeys(names))
        self._wanted.update(targets)

        async def load_one(name: str) -> list[ModelStatus]:
            try:
                return await self.load(name)
            except InvalidRequest as exc:
                self._status[name] = [ModelStatus(name, 0, ModelState.UNAVAILABLE, exc.message)]
                return self._status[name]

        results = await asyncio.gather(*(load_one(name) for name in targets))
        return [s for statuses in results for s in statuses if s.state is not ModelState.READY]

    async def load(
        self, name: str, config_override: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> list[ModelStatus]:
        """Load or reload every version the policy selects; load failures are recorded, not raised.

        ``config_override`` is partial ModelConfig JSON merged over ``config.pbtxt``; ``files`` maps
        ``<version>/<file>`` paths to contents that replace the repository's model folder entirely. A bad
        name or file path, or a name in no repository (without files), raises ``InvalidRequest`` and
        changes nothing. A model that fails and is neither served nor on disk leaves no row behind.
        """
        check_model_name(name)
        if files:
            check_upload_paths(list(files))
        async with self._lock(name):
            model_dir = self._on_disk().get(name)
            if model_dir is None and not files:
                raise InvalidRequest(f"failed to load '{name}': not found in the model repository")
            previous = self._status.get(name)
            if not self._handles.get(name):
                self._status[name] = [ModelStatus(name, 0, ModelState.LOADING)]
            upload = None
            try:
                if files:
                    upload = await asyncio.to_thread(write_upload, files)
                    model_dir = upload.model_dir
                else:
                    assert model_dir is not None
                    self._fingerprints[name] = await asyncio.to_thread(fingerprint, model_dir)
                handles, statuses = await self._build(name, model_dir, config_override)
            except ModelLoadError as exc:
                handles, statuses = {}, [ModelStatus(name, 0, ModelState.UNAVAILABLE, exc.message)]
            except BaseException:
                self._restore_status(name, previous)
                if upload is not None:
                    upload.remove()
                raise
            if upload is not None:
                for status in statuses:
                    status.reason = upload.scrub(status.reason)
            for status in statuses:
                if status.state is not ModelState.READY:
                    log.error("model '%s' version %d failed to load: %s", name, status.version, status.reason)
            old = self._handles.get(name, {})
            if not handles:
                if upload is not None:
                    upload.remove()
                if old:
                    reason = "; ".join(s.reason for s in statuses)
                    for status in self._status[name]:
                        status.reason = f"reload failed, still serving the previous load: {reason}"
                elif upload is not None and name not in self._on_disk():
                    self._restore_status(name, previous)
                else:
                    self._status[name] = statuses
                return list(statuses)
            # A version that failed this time keeps serving its previous copy, as a fully failed reload does.
            kept = {
                s.version: old[s.version] for s in statuses if s.state is not ModelState.READY and s.version in old
            }
            for status in statuses:
                if status.version in kept:
                    status.state = ModelState.READY
                    status.reason = f"reload failed, still serving the previous load: {status.reason}"
            self._handles[name] = {**kept, **handles}
            self._status[name] = statuses
            self._wanted.add(name)
            self._model_dirs[name] = model_dir
            self._aliases[name] = await asyncio.to_thread(read_aliases, model_dir)
            retired_uploads = [] if kept else self._uploads.pop(name, [])
            if upload is not None:
                self._uploads.setdefault(name, []).append(upload)
            self._retire([h for v, h in old.items() if v not in kept], retired_uploads)
            log.info("model '%s' ready, versions %s", name, sorted(self._handles[name]))
        await self._changed()
        return list(statuses)

    def _restore_status(self, name: str, previous: list[ModelStatus] | None) -> None:
        """Put back the status rows a load replaced (none: the name leaves no trace)."""
        if previous is None:
            self._status.pop(name, None)
        else:
            self._status[name] = previous

    async def unload(self, name: str) -> None:
        """Stop serving ``name``: new requests are refused at once, in-flight ones finish first."""
        check_model_name(name)
        async with self._lock(name):
            if name not in self._status and name not in self._on_disk():
                raise ModelNotFound(f"unknown model '{name}'")
            self._wanted.discard(name)
            handles = self._handles.pop(name, {})
            self._status[name] = [ModelStatus(name, v, ModelState.UNLOADING) for v in sorted(handles)] or [
                ModelStatus(name, 0, ModelState.UNAVAILABLE, "unloaded")
            ]
            await asyncio.gather(*(handle.drain_and_close() for handle in handles.values()))
            for upload in self._uploads.pop(name, []):
                await asyncio.to_thread(upload.remove)
            self._status[name] = [ModelStatus(name, v, ModelState.UNAVAILABLE, "unloaded") for v in sorted(handles)] or [
                ModelStatus(name, 0, ModelState.UNAVAILABLE, "unloaded")
            ]
            log.info("model '%s' unloaded", name)
        await self._changed()

    async def poll(self) -> None:
        """One scan of the repositories: load new models, reload changed ones, unload removed ones."""
        on_disk = self._on_disk()
        for name, model_dir in on_disk.items():
            current = await asyncio.to_thread(fingerprint, model_dir)
            if self._fingerprints.get(name) != current:
                log.info("model '%s' changed on disk: loading", name)
                await self.load(name)
        for name in [n for n in self._wanted if n not in on_disk and n not in self._uploads]:
            log.info("model '%s' was removed from the repository: unloading", name)
            await self.unload(name)
            self._fingerprints.pop(name, None)

    async def drained(self, poll_seconds: float = 0.05) -> None:
        """Return once no request is in flight on any served version (shutdown waits on this)."""
        while any(handle.inflight for handle in self.handles()):
            await asyncio.sleep(poll_seconds)

    async def close(self) -> None:
        """Release every model (the server is stopping)."""
        handles = [h for versions in self._handles.values() for h in versions.values()]
        self._handles.clear()
        await asyncio.gather(*(h.drain_and_close() for h in handles), *self._closing)
        for uploads in self._uploads.values():
            for upload in uploads:
                await asyncio.to_thread(upload.remove)
        self._uploads.clear()

    # -- building -----------------------------------------------------------------------------------------

    async def _build(
        self, name: str, model_dir: Path | None, config_override: str | None
    ) -> tuple[dict[int, ModelHandle], list[ModelStatus]]:
        if model_dir is None:
            raise ModelLoadError(f"no model directory named '{name}' in {[str(r) for r in self._repositories]}")
        config = await asyncio.to_thread(self._read_config, name, model_dir, config_override)
        versions = select_versions(model_dir, config.version_policy)
        results = await asyncio.gather(
            *(self._load_version(name, model_dir, config, v) for v in versions), return_exceptions=True
        )
        handles: dict[int, ModelHandle] = {}
        statuses: list[ModelStatus] = []
        for version, result in zip(versions, results, strict=True):
            if isinstance(result, ModelHandle):
                handles[version] = result
                statuses.append(ModelStatus(name, version, ModelState.READY))
            else:
                reason = result.message if isinstance(result, V2Error) else repr(result)
                statuses.append(ModelStatus(name, version, ModelState.UNAVAILABLE, reason))
        return handles, statuses

    def _read_config(self, name: str, model_dir: Path, config_override: str | None) -> mc.ModelConfig:
        """The file's config, the override merged over it, auto-completed when not strict, validated."""
        config = read_raw_config(model_dir, missing_ok=not self._strict or config_override is not None)
        if not config.ListFields() and not self._strict:
            config = default_config(name)
        if config_override is not None:
            config = apply_override(config, config_override)
        if name in self._single_models:
            config.name = name  # a folder served under a name given by flag (KServe's --model-name)
        if not self._strict and (not config.input or not config.output):
            policy = config.version_policy if config.HasField("version_policy") else mc.ModelVersionPolicy()
            latest = select_versions(model_dir, policy)[-1]
            path = model_dir / str(latest) / (config.default_model_filename or "model.pt")
            try:
                module = torch.jit.load(str(path), map_location="cpu")
            except Exception as exc:
                raise ModelLoadError(f"cannot load {path} to complete the config: {exc}") from exc
            for note in autocomplete_config(config, module):
                log.info("model '%s': %s", name, note)
        return complete_config(config, name, model_dir / CONFIG_FILENAME)

    async def _load_version(self, name: str, model_dir: Path, config: mc.ModelConfig, version: int) -> ModelHandle:
        version_config = mc.ModelConfig()
        version_config.CopyFrom(config)
        devices = place_instances(version_config)
        signature = Signature.from_config(version_config)
        path = model_dir / str(version) / version_config.default_model_filename
        parameters = {key: value.string_value for key, value in version_config.parameters.items()}
        results = await asyncio.gather(
            *(
                asyncio.to_thread(
                    load_instance, path, device, signature, f"{name}-v{version}-{i}-{device}", parameters=parameters
                )
                for i, device in enumerate(devices)
            ),
            return_exceptions=True,
        )
        handle = ModelHandle(
            name, version, version_config, signature,
            [r for r in results if isinstance(r, TorchScriptInstance)], self._buckets_us,
        )
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        try:
            if failure is not None:
                raise failure
            requests = await asyncio.to_thread(warmup_requests, version_config, model_dir)  # reads files
            if requests:
                await run_warmup(handle.instances, requests, list(signature.outputs))
        except BaseException:
            await asyncio.to_thread(handle.close)
            raise
        return handle

    # -- helpers ------------------------------------------------------------------------------------------

    def _retire(self, handles: list[ModelHandle], uploads: list[Upload]) -> None:
        """Close replaced handles once their requests drain, then delete their uploads, without holding up
        the swap."""

        async def retire() -> None:
            await asyncio.gather(*(h.drain_and_close() for h in handles))
            for upload in uploads:
                await asyncio.to_thread(upload.remove)

        task = asyncio.create_task(retire())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _changed(self) -> None:
        if self.on_change is not None:
            await self.on_change()

    def _reason(self, name: str) -> str:
        reasons = [s.reason for s in self._status.get(name, []) if s.reason]
        states = {s.state.value for s in self._status.get(name, [])}
        return "; ".join(reasons) or ", ".join(sorted(states)) or "not loaded"

    def _on_disk(self) -> dict[str, Path]:
        try:
            found = discover_models(self._repositories)
        except ModelLoadError as exc:
            log.error("%s", exc.message)
            found = {}
        found.update(self._single_models)
        return found
