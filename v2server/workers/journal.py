"""The control journal: the last change of each kind of state, which a restarted worker replays to catch up.

A worker that takes a change (a model load or unload, a shared-memory region, a trace or log setting) writes
it here before it tells the other workers, so a worker that is down then (dead, restarting) still gets it:
when it starts again it replays the journal after its own start-up loads. One file per key (a model name, a
region name, a setting), replaced atomically, so concurrent writers of different keys never collide and a
reader sees a whole entry or none; entries replay in the order they were written. Version aliases are not
journaled: they live in their alias file, which every worker reads when it loads the model.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

from v2server._proto import grpc_service_pb2 as pb

__all__ = ["JOURNALED", "Entry", "Journal", "changes"]

log = logging.getLogger(__name__)

#: the RPCs whose changes are journaled, and their request types
JOURNALED: dict[str, type[Message]] = {
    "RepositoryModelLoad": pb.RepositoryModelLoadRequest,
    "RepositoryModelUnload": pb.RepositoryModelUnloadRequest,
    "SystemSharedMemoryRegister": pb.SystemSharedMemoryRegisterRequest,
    "SystemSharedMemoryUnregister": pb.SystemSharedMemoryUnregisterRequest,
    "TraceSetting": pb.TraceSettingRequest,
    "LogSettings": pb.LogSettingsRequest,
}

_SEP = "\0"


@dataclass(frozen=True, slots=True)
class Entry:
    """One journaled change: replay it by calling ``method`` with ``request``."""

    key: str
    seq: int
    method: str
    request: Message


def changes(method: str, request: Message) -> Iterator[tuple[str, Message | None]]:
    """What ``request`` changes, as (key, the request to replay for it, or None: forget the key; a key that
    ends with the separator forgets every key under it). A trace or log request is split by setting, so a
    later change of one setting does not erase an earlier change of another."""
    if isinstance(request, (pb.RepositoryModelLoadRequest, pb.RepositoryModelUnloadRequest)):
        yield f"model{_SEP}{request.model_name}", request
    elif isinstance(request, pb.SystemSharedMemoryRegisterRequest):
        yield f"shm{_SEP}{request.name}", request
    elif isinstance(request, pb.SystemSharedMemoryUnregisterRequest):
        yield f"shm{_SEP}{request.name}", None  # no name: every region (the key ends with the separator)
    elif isinstance(request, pb.TraceSettingRequest):
        for name, value in request.settings.items():
            yield (f"trace{_SEP}{request.model_name}{_SEP}{name}",
                   pb.TraceSettingRequest(model_name=request.model_name, settings={name: value}))
    elif isinstance(request, pb.LogSettingsRequest):
        for name, value in request.settings.items():
            yield f"log{_SEP}{name}", pb.LogSettingsRequest(settings={name: value})
    else:
        raise TypeError(f"{method} is not journaled")


class Journal:
    """The journal in ``directory`` (created on first use)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def note(self, method: str, request: Message) -> None:
        """Record the change ``request`` made (blocking file I/O: a load may carry model files)."""
        for key, replay in changes(method, request):
            if replay is not None:
                self._write(key, method, replay)
            elif key.endswith(_SEP):
                for entry in self.entries():
                    if entry.key.startswith(key):
                        self._path(entry.key).unlink(missing_ok=True)
            else:
                self._path(key).unlink(missing_ok=True)

    def entries(self) -> list[Entry]:
        """Every entry, oldest first; an entry that cannot be read is logged and left out."""
        found: list[Entry] = []
        if not self._directory.is_dir():
            return found
        for path in self._directory.glob("*.json"):
            try:
                record = json.loads(path.read_bytes())
                request = JOURNALED[record["method"]]()
                request.ParseFromString(base64.b64decode(record["request"]))
                found.append(Entry(record["key"], int(record["seq"]), record["method"], request))
            except FileNotFoundError:  # forgotten meanwhile
                continue
            except (OSError, ValueError, KeyError) as exc:
                log.warning("skipping unreadable journal entry %s: %s", path.name, exc)
        return sorted(found, key=lambda entry: (entry.seq, entry.key))

    def _path(self, key: str) -> Path:
        return self._directory / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.json"

    def _write(self, key: str, method: str, request: Message) -> None:
        self._directory.mkdir(mode=0o700, exist_ok=True)
        record = {"key": key, "seq": time.time_ns(), "method": method,
                  "request": base64.b64encode(request.SerializeToString()).decode()}
        fd, temporary = tempfile.mkstemp(dir=self._directory, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(json.dumps(record).encode())
            os.replace(temporary, self._path(key))
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
