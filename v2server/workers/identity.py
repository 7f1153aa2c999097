"""Who a worker process is (``--workers``): its index, how many there are, and the private folder they share.

The supervisor passes these through environment variables (internal, not flags) to each worker it starts;
every path the workers and the supervisor agree on is named here once. The folder is the supervisor's
``mkdtemp`` (mode 0700): only this user reaches the private sockets in it, so they need no API key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ENV_COUNT", "ENV_DIR", "ENV_INDEX", "WorkerIdentity", "is_worker"]

ENV_INDEX = "V2SERVER_WORKER_INDEX"
ENV_COUNT = "V2SERVER_WORKER_COUNT"
ENV_DIR = "V2SERVER_WORKER_DIR"


def is_worker(environ: Mapping[str, str]) -> bool:
    """Whether this process is a worker its supervisor started (it must not supervise in turn)."""
    return ENV_INDEX in environ


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """Worker ``index`` of ``count``, sharing ``directory`` with the others and the supervisor."""

    index: int
    count: int
    directory: Path

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> WorkerIdentity | None:
        """This process's identity; None outside ``--workers`` (a single server process)."""
        environ = os.environ if environ is None else environ
        if not is_worker(environ):
            return None
        return cls(int(environ[ENV_INDEX]), int(environ[ENV_COUNT]), Path(environ[ENV_DIR]))

    def environ(self) -> dict[str, str]:
        """The variables that make a started process this worker."""
        return {ENV_INDEX: str(self.index), ENV_COUNT: str(self.count), ENV_DIR: str(self.directory)}

    @property
    def others(self) -> tuple[int, ...]:
        return tuple(index for index in range(self.count) if index != self.index)

    def socket(self, index: int) -> Path:
        """Worker ``index``'s private gRPC endpoint (a unix socket)."""
        return self.directory / f"worker-{index}.sock"

    def up_file(self, index: int) -> Path:
        """Written by worker ``index`` once it serves (its pid inside), so the supervisor knows it is up."""
        return self.directory / f"worker-{index}.up"

    @property
    def starting_marker(self) -> Path:
        """Present while some worker is starting or restarting: every worker then reports not ready."""
        return self.directory / "starting"

    @property
    def journal(self) -> Path:
        """The control journal a restarted worker replays (``journal.py``)."""
        return self.directory / "journal"
