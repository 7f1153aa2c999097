"""Jobs on disk: one SQLite database (``<state-dir>/jobs.sqlite3``, WAL), or in memory without ``--state-dir``.

Every call runs in the store's own thread (one connection, one thread: SQLite's rule, and the event loop never
waits on a disk). A job is one row; its state moves one way::

    queued -> running -> succeeded | failed -> delivered | delivery-failed

``running`` is put back to ``queued`` when the server starts (the process that ran it is gone); ``succeeded``
and ``failed`` are results not yet delivered. The request body is kept until the job has run, the result (the
answer's JSON text, ``{"data": ...}`` or ``{"error": ...}``) until ``result_expires_at``, the row until
``record_expires_at``. Each write is one transaction, committed before the caller goes on: with WAL and
``synchronous=NORMAL`` a committed row survives the process being killed (a power cut may lose the last
transactions). The schema's version is SQLite's ``user_version``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from v2server.errors import V2Error

__all__ = ["FINAL_STATES", "PENDING_STATES", "SCHEMA_VERSION", "JobRow", "JobStore", "NewJob"]

_T = TypeVar("_T")

SCHEMA_VERSION = 1
FILENAME = "jobs.sqlite3"

#: states of a job that still counts against --max-pending-jobs
PENDING_STATES = ("queued", "running", "succeeded", "failed")
FINAL_STATES = ("delivered", "delivery-failed")

_SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,               -- SHA-256 of the API key that created it ('' without keys)
    model TEXT NOT NULL,
    version TEXT NOT NULL,             -- '' is the latest version when the job runs
    batch INTEGER,                     -- ?batch: NULL (the model decides), 0 or 1
    body BLOB,                         -- the request body, until the job has run
    webhook TEXT NOT NULL,
    timeout REAL,                      -- seconds the inference may take (NULL: no limit)
    state TEXT NOT NULL,
    outcome TEXT,                      -- succeeded | failed, once run
    result BLOB,                       -- {"data": ...} or {"error": ...}, while kept
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    delivered_at REAL,
    result_expires_at REAL,
    record_expires_at REAL
);
CREATE INDEX jobs_by_state ON jobs (state, created_at);
CREATE INDEX jobs_by_result_expiry ON jobs (result_expires_at) WHERE result IS NOT NULL;
CREATE INDEX jobs_by_record_expiry ON jobs (record_expires_at);
"""

_STATUS_COLUMNS = (
    "id, owner, model, version, state, outcome, result, attempts, last_error, created_at, started_at, "
    "finished_at, delivered_at, result_expires_at"
)


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job as accepted: everything needed to run it again after a restart."""

    id: str
    owner: str
    model: str
    version: str
    batch: bool | None
    body: bytes
    webhook: str
    timeout: float | None
    created_at: float


@dataclass(frozen=True, slots=True)
class JobRow:
    """A job's state as ``GET /v1/jobs/ID`` shows it (``result``: the answer's JSON text while kept)."""

    id: str
    owner: str
    model: str
    version: str
    state: str
    outcome: str | None
    result: bytes | None
    attempts: int
    last_error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    delivered_at: float | None
    result_expires_at: float | None


class JobStore:
    """The jobs database; ``path`` None keeps it in memory (jobs are then lost with the process)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="v2server-jobs-db")
        self._db: sqlite3.Connection | None = None

    @classmethod
    def in_state_dir(cls, state_dir: Path | None) -> JobStore:
        return cls(None if state_dir is None else state_dir / FILENAME)

    async def _call(self, function: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    # -- open, close ----------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open (creating the folder and the schema when new); a database that cannot be used raises V2Error."""
        await self._call(self._open)

    def _open(self) -> None:
        try:
            if self.path is None:
                db = sqlite3.connect(":memory:", isolation_level=None)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                with _transaction(db):
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                db.close()
                raise V2Error(
                    f"the jobs database {self.path} has schema version {version}; this server reads version "
                    f"{SCHEMA_VERSION} (a newer server wrote it?)"
                )
        except (sqlite3.Error, OSError) as exc:
            raise V2Error(f"cannot open the jobs database {self.path or ':memory:'} (--state-dir): {exc}") from None
        self._db = db

    async def close(self) -> None:
        await self._call(self._close)
        self._thread.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "the jobs store is not open"
        return self._db

    # -- writes ---------------------------------------------------------------------------------------------

    async def insert(self, job: NewJob) -> None:
        await self._call(self._insert, job)

    def _insert(self, job: NewJob) -> None:
        self.db.execute(
            "INSERT INTO jobs (id, owner, model, version, batch, body, webhook, timeout, state, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
            (job.id, job.owner, job.model, job.version, None if job.batch is None else int(job.batch), job.body,
             job.webhook, job.timeout, job.created_at),
        )

    async def start(self, job_id: str, now: float) -> tuple[str, str, bool | None, bytes, float | None] | None:
        """Mark a queued job running; its model, version, batch flag, body and timeout (None: not queued)."""
        return await self._call(self._start, job_id, now)

    def _start(self, job_id: str, now: float) -> tuple[str, str, bool | None, bytes, float | None] | None:
        with _transaction(self.db):
            row = self.db.execute(
                "SELECT model, version, batch, body, timeout FROM jobs WHERE id = ? AND state = 'queued'", (job_id,)
            ).fetchone()
            if row is None:
                return None
            self.db.execute("UPDATE jobs SET state = 'running', started_at = ? WHERE id = ?", (now, job_id))
        model, version, batch, body, timeout = row
        return model, version, None if batch is None else bool(batch), bytes(body), timeout

    async def finish(self, job_id: str, outcome: str, result: bytes, now: float) -> None:
        """The job ran: keep its result for delivery and drop its body."""
        await self._call(
            self._execute,
            "UPDATE jobs SET state = ?, outcome = ?, result = ?, body = NULL, finished_at = ? WHERE id = ?",
            (outcome, outcome, result, now, job_id),
        )

    async def attempt_failed(self, job_id: str, attempts: int, error: str) -> None:
        await self._call(
            self._execute, "UPDATE jobs SET attempts = ?, last_error = ? WHERE id = ?", (attempts, error, job_id)
        )

    async def close_delivery(
        self, job_id: str, state: str, attempts: int, error: str | None, now: float, result_ttl: float,
        record_ttl: float,
    ) -> None:
        """``delivered`` or ``delivery-failed``: from now the result is kept ``result_ttl`` s, the row
        ``record_ttl`` s (at least as long as the result)."""
        await self._call(
            self._execute,
            "UPDATE jobs SET state = ?, attempts = ?, last_error = ?, delivered_at = ?, result_expires_at = ?, "
            "record_expires_at = ? WHERE id = ?",
            (state, attempts, error, now if state == "delivered" else None, now + result_ttl,
             now + max(record_ttl, result_ttl), job_id),
        )

    def _execute(self, statement: str, parameters: tuple[Any, ...]) -> None:
        self.db.execute(statement, parameters)

    async def recover(self) -> tuple[list[str], list[str], int]:
        """At start: jobs left ``running`` go back to ``queued``. Returns the queued jobs (oldest first), the
        results awaiting delivery, and how many jobs are pending."""
        return await self._call(self._recover)

    def _recover(self) -> tuple[list[str], list[str], int]:
        with _transaction(self.db):
            self.db.execute("UPDATE jobs SET state = 'queued', started_at = NULL WHERE state = 'running'")
            queued = [r[0] for r in self.db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at")]
            undelivered = [r[0] for r in self.db.execute(
                "SELECT id FROM jobs WHERE state IN ('succeeded', 'failed') ORDER BY finished_at")]
        return queued, undelivered, len(queued) + len(undelivered)

    async def sweep(self, now: float, limit: int) -> tuple[int, int]:
        """Drop at most ``limit`` expired results and ``limit`` expired rows; how many of each."""
        return await self._call(self._sweep, now, limit)

    def _sweep(self, now: float, limit: int) -> tuple[int, int]:
        with _transaction(self.db):
            results = self.db.execute(
                "UPDATE jobs SET result = NULL WHERE id IN (SELECT id FROM jobs WHERE result IS NOT NULL AND "
                "result_expires_at <= ? LIMIT ?)", (now, limit),
            ).rowcount
            rows = self.db.execute(
                "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE record_expires_at <= ? LIMIT ?)",
                (now, limit),
            ).rowcount
        return results, rows

    # -- reads ----------------------------------------------------------------------------------------------

    async def get(self, job_id: str) -> JobRow | None:
        return await self._call(self._get, job_id)

    def _get(self, job_id: str) -> JobRow | None:
        row = self.db.execute(f"SELECT {_STATUS_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        values = list(row)
        values[6] = None if values[6] is None else bytes(values[6])
        return JobRow(*values)

    async def delivery(self, job_id: str) -> tuple[str, bytes, int] | None:
        """A result awaiting delivery: its webhook, result and attempts so far (None: nothing to deliver)."""
        return await self._call(self._delivery, job_id)

    def _delivery(self, job_id: str) -> tuple[str, bytes, int] | None:
        row = self.db.execute(
            "SELECT webhook, result, attempts FROM jobs WHERE id = ? AND state IN ('succeeded', 'failed')",
            (job_id,),
        ).fetchone()
        return None if row is None else (row[0], bytes(row[1]), row[2])


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")
