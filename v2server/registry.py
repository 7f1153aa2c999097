"""Loaded models in memory: lookups on the hot path, and load, unload, reload and poll.

Each model name has one ``ModelEntry`` (``model_entry.py``); each served version is a ``ModelHandle``
(``handle.py``) built by the ``ModelLoader`` (``loading.py``). Loading builds new handles beside the old ones
and swaps one dict reference, so a request that already holds a handle finishes on it; old handles are closed
only after their in-flight requests drain. A version that fails to reload keeps serving its previous copy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from v2server.errors import InvalidRequest, ModelLoadError, ModelNotFound, ModelNotReady
from v2server.handle import ModelHandle
from v2server.loading import ModelLoader
from v2server.model_entry import ModelEntry, ModelState, ModelStatus
from v2server.names import check_model_name
from v2server.repository import discover_models, fingerprint
from v2server.repository.aliases import AliasFiles
from v2server.repository.uploads import Upload, check_upload_paths, write_upload
from v2server.statistics import DEFAULT_BUCKETS_US

__all__ = ["ModelHandle", "ModelState", "ModelStatus", "Registry"]

log = logging.getLogger(__name__)

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
        alias_files: AliasFiles | None = None,
    ) -> None:
        self._repositories = tuple(repositories)
        self._single_models = dict(single_models or {})  # KServe style: one model folder, named by a flag
        self._loader = ModelLoader(strict_model_config, latency_buckets_us, self._single_models)
        self._alias_files = alias_files or AliasFiles()  # where version aliases are saved (--state-dir or not)
        self.on_change = on_change
        #: one entry per name that is or was loaded (or asked for at start); never for a refused name
        self._entries: dict[str, ModelEntry] = {}
        self._closing: set[asyncio.Task[None]] = set()

    # -- lookups (hot path: plain dict reads) -------------------------------------------------------------

    def get(self, name: str, version: str = "") -> ModelHandle:
        """The handle for ``name`` at ``version`` ("" or "-1": the highest ready version).

        The messages are Triton's (``Request for unknown model: ...``), which Triton's own clients and example
        programs match on; docs/protocol.md#error-texts lists them.
        """
        entry = self._entries.get(name)
        versions = entry.handles if entry is not None else None
        if not versions:
            check_model_name(name)  # only on a miss: a served name was checked when it was loaded
            if entry is not None and entry.status:
                raise ModelNotReady(
                    f"Request for unknown model: '{name}' has no available versions ({entry.reason()})"
                )
            raise ModelNotFound(f"Request for unknown model: '{name}' is not found")
        if version in ("", "-1"):
            return versions[max(versions)]
        if not (version.isascii() and version.isdigit()):
            raise InvalidRequest(f"model '{name}': version '{version}' is not a number")
        handle = versions.get(int(version))
        if handle is None:
            assert entry is not None
            if any(status.version == int(version) for status in entry.status):
                raise ModelNotReady(
                    f"Request for unknown model: '{name}' version {version} is not at ready state "
                    f"(serving {sorted(versions)})"
                )
            raise ModelNotFound(
                f"Request for unknown model: '{name}' version {version} is not found (serving {sorted(versions)})"
            )
        return handle

    def ready_versions(self, name: str) -> list[int]:
        entry = self._entries.get(name)
        return sorted(entry.handles) if entry is not None else []

    def is_ready(self, name: str, version: str = "") -> bool:
        """Whether ``name`` (at ``version``) is serving; a malformed name or version is still an error."""
        try:
            self.get(name, version)
        except (ModelNotFound, ModelNotReady):
            return False
        return True

    def all_ready(self) -> bool:
        """Strict readiness: every model that should be served is serving."""
        return all(entry.handles for entry in self._entries.values() if entry.wanted)

    def handles(self, name: str = "") -> list[ModelHandle]:
        """Served handles, of one model or (``name`` "") of all, by name and version."""
        entries = [self._entries.get(name)] if name else [self._entries[n] for n in sorted(self._entries)]
        return [e.handles[v] for e in entries if e is not None for v in sorted(e.handles)]

    def index(self) -> list[ModelStatus]:
        """Every model in the repositories with its state, loaded or not."""
        rows: list[ModelStatus] = []
        known = {name for name, entry in self._entries.items() if entry.status}
        for name in sorted(set(self._on_disk()) | known):
            entry = self._entries.get(name)
            rows.extend(
                entry.status if entry is not None and entry.status
                else [ModelStatus(name, 0, ModelState.UNAVAILABLE, "not loaded")]
            )
        return rows

    # -- version aliases ----------------------------------------------------------------------------------

    def aliases(self, name: str) -> dict[str, int]:
        """The aliases of a served model, by name."""
        return dict(sorted(self._served(name).aliases.items()))

    def resolve_alias(self, name: str, alias: str) -> str:
        """The version ``alias`` points to now, as a version string for one request."""
        return self._served(name).resolve_alias(alias)

    async def set_alias(self, name: str, alias: str, version: int) -> dict[str, int]:
        """Point ``alias`` at a served ``version``; returns every alias."""
        return await self._served(name).set_alias(alias, version, self._alias_files)

    async def delete_alias(self, name: str, alias: str) -> dict[str, int]:
        """Remove ``alias``; returns the remaining aliases."""
        return await self._served(name).delete_alias(alias, self._alias_files)

    def _served(self, name: str) -> ModelEntry:
        self.get(name)
        return self._entries[name]

    # -- load, unload, poll -------------------------------------------------------------------------------

    async def load_all(self, names: Sequence[str] | None = None) -> list[ModelStatus]:
        """Start-up: load ``names`` (every model on disk when None) concurrently; return the failures.

        Every one of them counts for strict readiness, loaded or not (a model asked for at start that is
        not serving makes the server not ready). A name in no repository is a failure, not an error.
        """
        targets = list(self._on_disk()) if names is None else list(dict.fromkeys(names))

        async def load_one(name: str) -> list[ModelStatus]:
            try:
                check_model_name(name)
            except InvalidRequest as exc:
                log.error("%s", exc.message)
                return [ModelStatus(name, 0, ModelState.UNAVAILABLE, exc.message)]
            entry = self._entries.setdefault(name, ModelEntry(name))
            entry.wanted = True
            try:
                return await self.load(name)
            except InvalidRequest as exc:
                entry.status = [ModelStatus(name, 0, ModelState.UNAVAILABLE, exc.message)]
                return entry.status

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
            try:
                check_upload_paths(list(files))
            except InvalidRequest as exc:  # Triton's words for it (as INTERNAL there), then what is wrong
                raise InvalidRequest(
                    f"failed to load '{name}': failed to poll from model repository: {exc.message}"
                ) from None
        if not files and name not in self._on_disk():
            raise InvalidRequest(f"failed to load '{name}': not found in the model repository")
        entry = self._entries.setdefault(name, ModelEntry(name))
        async with entry.lock:
            statuses = await self._load_locked(entry, config_override, files)
        await self._changed()
        return statuses

    async def _load_locked(
        self, entry: ModelEntry, config_override: str | None, files: Mapping[str, bytes] | None
    ) -> list[ModelStatus]:
        name = entry.name
        model_dir = self._on_disk().get(name)
        if model_dir is None and not files:  # removed from disk while we waited for the lock
            raise InvalidRequest(f"failed to load '{name}': not found in the model repository")
        previous = entry.status
        if not entry.handles:
            entry.status = [ModelStatus(name, 0, ModelState.LOADING)]
        upload = None
        try:
            if files:
                upload = await asyncio.to_thread(write_upload, files)
                model_dir = upload.model_dir
            else:
                assert model_dir is not None
                entry.fingerprint = await asyncio.to_thread(fingerprint, model_dir)
            handles, failures = await self._loader.build(name, model_dir, config_override)
        except ModelLoadError as exc:
            handles, failures = {}, {0: exc.message}
        except BaseException:
            entry.status = previous
            if upload is not None:
                upload.remove()
            raise
        if upload is not None:
            failures = {version: upload.scrub(reason) for version, reason in failures.items()}
        for version, reason in failures.items():
            log.error("model '%s' version %d failed to load: %s", name, version, reason)
        statuses = [ModelStatus(name, v, ModelState.READY) for v in handles]
        statuses += [ModelStatus(name, v, ModelState.UNAVAILABLE, reason) for v, reason in failures.items()]
        statuses.sort(key=lambda s: s.version)
        old = entry.handles
        if not handles:
            if upload is not None:
                upload.remove()
            if old:
                reason = "; ".join(failures.values())
                for status in entry.status:
                    status.reason = f"reload failed, still serving the previous load: {reason}"
            elif upload is not None and name not in self._on_disk():
                entry.status = previous  # an upload that failed for a new name leaves no row
            else:
                entry.status = statuses
            return statuses
        # A version that failed this time keeps serving its previous copy, as a fully failed reload does.
        # The index shows such a version as READY with the reason; the caller still hears that it failed.
        kept = {version: old[version] for version in failures if version in old}
        entry.handles = {**kept, **handles}
        entry.status = [
            ModelStatus(name, s.version, ModelState.READY, f"reload failed, still serving the previous load: {s.reason}")
            if s.version in kept else s
            for s in statuses
        ]
        entry.wanted = True
        entry.model_dir = model_dir
        entry.aliases = await asyncio.to_thread(self._alias_files.read, name, model_dir)
        retired_uploads = [] if kept else entry.uploads
        entry.uploads = [*(entry.uploads if kept else []), *([upload] if upload is not None else [])]
        self._retire([h for v, h in old.items() if v not in kept], retired_uploads)
        log.info("model '%s' ready, versions %s", name, sorted(entry.handles))
        return statuses

    async def unload(self, name: str) -> None:
        """Stop serving ``name``: new requests are refused at once, in-flight ones finish first."""
        check_model_name(name)
        entry = self._entries.get(name)
        known = entry is not None and (entry.status or entry.handles)
        if not known and name not in self._on_disk():
            raise ModelNotFound(f"failed to unload '{name}': not found in the model repository")
        entry = self._entries.setdefault(name, ModelEntry(name))
        async with entry.lock:
            entry.wanted = False
            handles, entry.handles = entry.handles, {}
            unloaded = [ModelStatus(name, v, ModelState.UNAVAILABLE, "unloaded") for v in sorted(handles)] or [
                ModelStatus(name, 0, ModelState.UNAVAILABLE, "unloaded")
            ]
            entry.status = [ModelStatus(name, v, ModelState.UNLOADING) for v in sorted(handles)] or unloaded
            await asyncio.gather(*(handle.drain_and_close() for handle in handles.values()))
            uploads, entry.uploads = entry.uploads, []
            for upload in uploads:
                await asyncio.to_thread(upload.remove)
            entry.status = unloaded
            log.info("model '%s' unloaded", name)
        await self._changed()

    async def poll(self) -> None:
        """One scan of the repositories: load new models, reload changed ones, unload removed ones."""
        on_disk = self._on_disk()
        for name, model_dir in on_disk.items():
            current = await asyncio.to_thread(fingerprint, model_dir)
            entry = self._entries.get(name)
            if entry is None or entry.fingerprint != current:
                log.info("model '%s' changed on disk: loading", name)
                await self.load(name)
        for name, entry in list(self._entries.items()):
            if entry.wanted and name not in on_disk and not entry.uploads:
                log.info("model '%s' was removed from the repository: unloading", name)
                await self.unload(name)
                entry.fingerprint = None

    async def drained(self, poll_seconds: float = 0.05) -> None:
        """Return once no request is in flight on any served version (shutdown waits on this)."""
        while any(handle.inflight for handle in self.handles()):
            await asyncio.sleep(poll_seconds)

    async def close(self) -> None:
        """Release every model (the server is stopping)."""
        handles = [h for entry in self._entries.values() for h in entry.handles.values()]
        uploads = [u for entry in self._entries.values() for u in entry.uploads]
        for entry in self._entries.values():
            entry.handles, entry.uploads = {}, []
        await asyncio.gather(*(h.drain_and_close() for h in handles), *self._closing)
        for upload in uploads:
            await asyncio.to_thread(upload.remove)

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

    async def _changed(self) -> None:
        if self.on_change is not None:
            await self.on_change()

    def _on_disk(self) -> dict[str, Path]:
        try:
            found = discover_models(self._repositories)
        except ModelLoadError as exc:
            log.error("%s", exc.message)
            found = {}
        found.update(self._single_models)
        return found
