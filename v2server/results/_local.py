"""Answers stored as files in one folder, served at signed links by the REST gateway (``/v1/results/ID``).

Each answer is one file named by a random id (:func:`new_result_id`), created with ``O_EXCL | O_NOFOLLOW`` and
mode 0600 in a folder the server made (``--results-dir``, or ``mkdtemp`` at the first answer when none is
given, removed at exit);
no part of a name comes from a client. Writes and reads run in worker threads. The folder holds at most
``max_bytes`` (``--results-max-bytes``): an answer that would pass it is refused (503) until the sweeper frees
room. The sweeper is one task that lists the folder every few seconds (in a worker thread) and removes the files
older than the links' lifetime, at most ``SWEEP_LIMIT`` a pass; a link fetched after its expiry removes its file
at once (410). Several replicas may share one folder (with one ``--results-secret``); each counts the whole
folder against its bound at every sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import BinaryIO

from v2server.errors import StoreUnavailable, V2Error
from v2server.offload import run_in_worker
from v2server.results._signing import LinkSigner, is_result_id, new_result_id

__all__ = ["READ_CHUNK", "SWEEP_LIMIT", "LocalStore"]

log = logging.getLogger(__name__)

#: files removed in one sweep at most (the rest wait for the next pass, which then comes at once)
SWEEP_LIMIT = 10_000
#: bytes read and sent at a time when a link is fetched
READ_CHUNK = 1 << 20
#: a file is swept this long after its link expired, so a fetch at the last moment still finds it
_GRACE = 2.0


class LocalStore:
    """The local-folder results store (see the module docstring)."""

    def __init__(self, folder: Path | None, signer: LinkSigner, ttl: float, max_bytes: int) -> None:
        self.signer = signer
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._configured = folder
        self._folder: Path | None = None
        self._made = False
        self._used = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def folder(self) -> Path:
        """The folder answers are written to (without ``--results-dir``, made by the first answer)."""
        if self._folder is None:
            raise V2Error("the results store has no folder yet")
        return self._folder

    @property
    def used_bytes(self) -> int:
        """Bytes of stored answers, as of the last sweep and the writes and removals since."""
        return self._used

    async def start(self) -> None:
        """Create (or adopt) ``--results-dir`` and count what it holds (without one, the first answer makes a
        private folder), and start the sweeper."""
        if self._configured is not None:
            self._folder, self._made = await asyncio.to_thread(_make_folder, self._configured)
            await self.sweep()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="v2server-results-sweeper")
        log.info("results store: %s (links live %g s)", self._configured or "a private folder", self.ttl)

    async def close(self) -> None:
        """Stop the sweeper; remove the folder if this store made it (a ``--results-dir`` is left as it is)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._made and self._folder is not None:
            await asyncio.to_thread(shutil.rmtree, self._folder, True)
            self._folder = None

    async def put(self, document: bytes, base_url: str) -> str:
        """Store ``document`` and return its signed link under ``base_url`` (``http://host:port``)."""
        size = len(document)
        if self._used + size > self.max_bytes:
            raise StoreUnavailable(
                f"the results store is full: {self._used} of {self.max_bytes} bytes (--results-max-bytes) are "
                f"taken and the answer has {size}; retry after expired links are swept, or ask without "
                "response_format"
            )
        self._used += size  # reserved before the write, so concurrent writes cannot pass the bound together
        result_id = new_result_id()
        try:
            if self._folder is None:
                async with self._lock:
                    if self._folder is None:
                        self._folder, self._made = await asyncio.to_thread(_make_folder, None)
            await run_in_worker(_write, self.folder / result_id, document)
        except OSError as exc:
            self._used -= size
            raise StoreUnavailable(f"the results store cannot write the answer: {exc.strerror}") from None
        return f"{base_url}/v1/results/{result_id}?{self.signer.query(result_id, self.ttl)}"

    async def chunks(self, result_id: str) -> tuple[int, AsyncGenerator[bytes, None]] | None:
        """The size and the content of a stored answer, read in worker threads; None when there is none."""
        if not is_result_id(result_id) or self._folder is None:
            return None
        try:
            handle = await asyncio.to_thread(_open, self.folder / result_id)
        except FileNotFoundError:
            return None
        size = os.fstat(handle.fileno()).st_size

        async def read() -> AsyncGenerator[bytes, None]:
            try:
                while chunk := await asyncio.to_thread(handle.read, READ_CHUNK):
                    yield chunk
            finally:
                handle.close()

        return size, read()

    async def remove(self, result_id: str) -> None:
        """Remove one stored answer (its link expired), if it is still there."""
        if is_result_id(result_id) and self._folder is not None:
            freed = await asyncio.to_thread(_remove, self.folder / result_id)
            self._used = max(0, self._used - freed)

    async def sweep(self, now: float | None = None) -> int:
        """One pass: remove the files whose links have expired (at most ``SWEEP_LIMIT``), recount the folder's
        bytes; the number removed."""
        if self._folder is None:
            return 0
        deadline = (time.time() if now is None else now) - self.ttl - _GRACE
        removed, remaining = await asyncio.to_thread(_sweep, self.folder, deadline, SWEEP_LIMIT)
        self._used = remaining
        return removed

    async def _sweep_forever(self) -> None:
        """A pass every half-lifetime of a link (0.5 to 60 s), at once again after a pass that hit the limit
        (``start`` made the first pass)."""
        interval = min(60.0, max(0.5, self.ttl / 2))
        removed = 0
        while True:
            await asyncio.sleep(0 if removed >= SWEEP_LIMIT else interval)
            try:
                removed = await self.sweep()
            except Exception:
                log.exception("results sweep failed; retrying in %.0f s", interval)
                removed = 0


def _make_folder(configured: Path | None) -> tuple[Path, bool]:
    if configured is None:
        return Path(tempfile.mkdtemp(prefix="v2server-results-")), True
    try:
        configured.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise V2Error(f"--results-dir {configured}: cannot create the folder: {exc.strerror}") from None
    if not os.access(configured, os.W_OK | os.X_OK):
        raise V2Error(f"--results-dir {configured}: the folder is not writable")
    return configured, False


def _write(path: Path, document: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(document)
        while view:
            view = view[os.write(descriptor, view):]
    except BaseException:
        os.close(descriptor)
        path.unlink(missing_ok=True)
        raise
    os.close(descriptor)


def _open(path: Path) -> BinaryIO:
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")


def _remove(path: Path) -> int:
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size


def _sweep(folder: Path, deadline: float, limit: int) -> tuple[int, int]:
    """Remove answer files last written before ``deadline`` (at most ``limit``); (removed, bytes left)."""
    removed = remaining = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if not is_result_id(entry.name):
                continue  # never touch what this store did not write
            try:
                stat = entry.stat(follow_symlinks=False)
                if stat.st_mtime < deadline and removed < limit:
                    os.unlink(entry.path)
                    removed += 1
                else:
                    remaining += stat.st_size
            except FileNotFoundError:
                continue  # another replica (or a 410) removed it meanwhile
    return removed, remaining
