"""Everything the registry knows of one model name, in one object: served handles, status rows, whether it
should be served, its lock, what it was loaded from, its uploads and its version aliases.

One object per name (rather than a dict per fact keyed by name) keeps the facts in step by construction.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from pathlib import Path

from v2server.errors import InvalidRequest, ModelNotFound
from v2server.handle import ModelHandle
from v2server.repository.aliases import AliasFiles, check_alias_name
from v2server.repository.uploads import Upload

__all__ = ["ModelEntry", "ModelState", "ModelStatus"]


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
class ModelEntry:
    """One model name's state. ``handles`` and ``aliases`` are replaced whole, never mutated, so a request
    reading them on the hot path sees the old mapping or the new one."""

    name: str
    #: served versions
    handles: dict[int, ModelHandle] = field(default_factory=dict)
    #: the repository index's rows; empty: the index shows the name only if it is on disk
    status: list[ModelStatus] = field(default_factory=list)
    #: counts for strict readiness (loaded at start, or loaded successfully since, and not unloaded)
    wanted: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: the files polling compares (repository models)
    fingerprint: object = None
    #: where the served versions were loaded from (a repository folder or an upload's)
    model_dir: Path | None = None
    #: upload folders the served versions may still use; removed when no handle needs them
    uploads: list[Upload] = field(default_factory=list)
    aliases: dict[str, int] = field(default_factory=dict)

    def reason(self) -> str:
        """Why the model is not serving, for error messages."""
        reasons = [s.reason for s in self.status if s.reason]
        states = {s.state.value for s in self.status}
        return "; ".join(reasons) or ", ".join(sorted(states)) or "not loaded"

    # -- version aliases (persisted by AliasFiles: <model>/aliases.json or the --state-dir) ----------------

    def resolve_alias(self, alias: str) -> str:
        """The version ``alias`` points to now, as a version string for one request."""
        version = self.aliases.get(alias)
        if version is None:
            raise ModelNotFound(f"model '{self.name}' has no version or alias '{alias}'")
        if version not in self.handles:
            raise ModelNotFound(
                f"alias '{alias}' of model '{self.name}' points to version {version}, which is not being served"
            )
        return str(version)

    async def set_alias(self, alias: str, version: int, files: AliasFiles) -> dict[str, int]:
        """Point ``alias`` at a served ``version`` (saved in ``files`` before it takes effect); returns every
        alias. A save that cannot happen raises ``NotWritable`` and changes nothing."""
        check_alias_name(alias)
        async with self.lock:
            served = sorted(self.handles)
            if version not in served:
                raise InvalidRequest(
                    f"alias '{alias}': model '{self.name}' has no version {version} being served (serving {served})"
                )
            return await self._save_aliases({**self.aliases, alias: version}, files)

    async def delete_alias(self, alias: str, files: AliasFiles) -> dict[str, int]:
        """Remove ``alias``; returns the remaining aliases."""
        async with self.lock:
            aliases = dict(self.aliases)
            if aliases.pop(alias, None) is None:
                raise ModelNotFound(f"model '{self.name}' has no alias '{alias}'")
            return await self._save_aliases(aliases, files)

    async def _save_aliases(self, aliases: dict[str, int], files: AliasFiles) -> dict[str, int]:
        if self.model_dir is not None:  # NotWritable (409) when it cannot be saved: the old aliases stay
            await asyncio.to_thread(files.write, self.name, self.model_dir, aliases)
        self.aliases = aliases
        return dict(sorted(aliases.items()))
