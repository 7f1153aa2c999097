"""The job service: accept asynchronous ``/v1`` requests, run them, deliver their results, answer their status.

``submit`` checks the webhook URL against the target rules, refuses past ``--max-pending-jobs`` (503), stores
the job (202 only once it is committed) and queues it. ``--max-running-jobs`` workers take queued jobs and run
each through :func:`v2server.rest_api.simple_handlers.run_v1`, the steps the synchronous ``/v1`` handler takes
(so a job meets the same rules and errors), within the job's timeout. The result is stored, then delivered:
one task per result, retrying with backoff (``--webhook-attempts``, ``--webhook-backoff-secs``,
``--webhook-backoff-max-secs``) until ``delivered`` or ``delivery-failed``. A sweeper drops expired results
and records in bounded steps.

On start, what a previous process left is resumed: jobs ``queued`` or ``running`` are run (again), results
``succeeded`` or ``failed`` are delivered (again, with the same ``Idempotency-Key``). On stop, the workers and
deliveries are cancelled where they stand (the database keeps their state for the next start).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import secrets
import time
from typing import Any

import orjson

from v2server.core import InferenceCore
from v2server.errors import NotFound, QueueFull, ServerNotReady, V2Error
from v2server.jobs.delivery import Backoff, Deliverer, DeliveryFailed
from v2server.jobs.store import JobRow, JobStore, NewJob
from v2server.jobs.targets import TargetPolicy, redact
from v2server.rest_api.error_bodies import describe_error
from v2server.rest_api.simple_handlers import run_v1

__all__ = ["JobLimits", "JobService"]

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: rows the sweeper drops per step (and results it clears), so one step stays short
SWEEP_BATCH = 500


class JobLimits:
    """The service's knobs (from ``Settings``; tests set them small)."""

    def __init__(
        self, *, max_pending: int = 1000, max_running: int = 4, max_rows: int = 10_000, attempts: int = 8,
        backoff: float = 1.0, backoff_max: float = 300.0, result_ttl: float = 3600.0, record_ttl: float = 86400.0,
        allow: tuple[str, ...] = (), secret: str = "", webhook_timeout: float = 10.0,
    ) -> None:
        self.policy = TargetPolicy.from_entries(allow)
        self.secret = secret
        self.webhook_timeout = webhook_timeout
        self.max_pending = max_pending
        self.max_running = max_running
        self.max_rows = max_rows
        self.attempts = attempts
        self.backoff = Backoff(backoff, backoff_max)
        self.result_ttl = result_ttl
        self.record_ttl = record_ttl


class JobService:
    """Asynchronous ``/v1`` jobs over ``core`` (the in-process data plane), kept in ``store``.

    ``open`` (the store, what a previous process left) comes before the models load, ``start`` (the workers)
    after: until then ``submit`` answers 503.
    """

    def __init__(self, core: InferenceCore, store: JobStore, limits: JobLimits) -> None:
        self._core = core
        self._store = store
        self._policy = limits.policy
        self._deliverer: Deliverer | None = None
        self._limits = limits
        self._resume: tuple[list[str], list[str]] = ([], [])
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending = 0
        self._accepting = False
        self._closed = False

    @property
    def pending(self) -> int:
        """Jobs accepted and not yet delivered (or given up on)."""
        return self._pending

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the store (a database that cannot be used raises ``V2Error``) and read what a previous process
        left: jobs to run again, results to deliver again."""
        await self._store.open()
        self._deliverer = Deliverer(self._policy, self._limits.secret, self._limits.webhook_timeout)
        queued, undelivered, self._pending = await self._store.recover()
        self._resume = (queued, undelivered)
        if queued or undelivered:
            log.info("jobs: resuming %d queued and %d undelivered from %s", len(queued), len(undelivered),
                     self._store.path)

    async def start(self) -> None:
        """Resume what a previous process left, start the workers and the sweeper, accept jobs."""
        queued, undelivered = self._resume
        self._resume = ([], [])
        for job_id in queued:
            self._queue.put_nowait(job_id)
        for job_id in undelivered:
            self._spawn(self._deliver(job_id))
        for _ in range(self._limits.max_running):
            self._spawn(self._work())
        self._spawn(self._sweep())
        self._accepting = True

    async def stop(self) -> None:
        """Stop accepting, cancel the workers, deliveries and sweeper where they stand, close the store."""
        self._accepting = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._deliverer is not None:
            self._deliverer.close()
        if not self._closed:
            self._closed = True
            await self._store.close()

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- accept ---------------------------------------------------------------------------------------------

    async def submit(
        self, *, model: str, version: str, batch: bool | None, body: bytes, webhook: str, timeout: float | None,
        owner: str,
    ) -> str:
        """Store and queue a checked ``/v1`` request; its job id. 400 for a refused webhook, 503 past
        ``--max-pending-jobs`` or while stopping."""
        if not self._accepting:
            raise ServerNotReady("the server is not accepting jobs now (starting or shutting down)")
        await self._policy.check(webhook)
        if self._pending >= self._limits.max_pending:
            raise QueueFull(
                f"{self._pending} jobs are pending, the most --max-pending-jobs allows: retry later"
            )
        self._pending += 1  # before the await: concurrent submits see it
        job = NewJob(secrets.token_urlsafe(18), owner, model, version, batch, body, webhook, timeout, time.time())
        try:
            await self._store.insert(job)
        except BaseException as exc:
            self._pending -= 1
            if isinstance(exc, Exception) and not isinstance(exc, V2Error):
                raise ServerNotReady(f"cannot store the job: {exc}") from None
            raise
        self._queue.put_nowait(job.id)
        return job.id

    # -- run ------------------------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            job_id = await self._queue.get()
            try:
                await self._run(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("job %s: could not be run", job_id)

    async def _run(self, job_id: str) -> None:
        job = await self._store.start(job_id, time.time())
        if job is None:
            return
        model, version, batch, body, timeout = job
        try:
            answer = await run_v1(self._core, model, version, body, batch, self._limits.max_rows, timeout)
            outcome = "succeeded"
        except Exception as exc:  # the error the synchronous request would have answered
            status, message = describe_error(exc, 500)
            if status >= 500 and not isinstance(exc, V2Error):
                log.exception("job %s failed", job_id)
            answer, outcome = orjson.dumps({"error": message}), "failed"
        await self._store.finish(job_id, outcome, answer, time.time())
        self._spawn(self._deliver(job_id))

    # -- deliver --------------------------------------------------------------------------------------------

    async def _deliver(self, job_id: str) -> None:
        found = await self._store.delivery(job_id)
        if found is None:
            return
        webhook, result, attempts = found
        body = _with_job(job_id, result)
        assert self._deliverer is not None
        error: str | None = None
        state = "delivery-failed"
        while attempts < self._limits.attempts:
            attempts += 1
            try:
                await self._deliverer.post(webhook, body, job_id, attempts)
            except DeliveryFailed as exc:
                error = str(exc)
                log.info("job %s: delivery attempt %d to %s failed: %s", job_id, attempts, redact(webhook), error)
                if exc.final or attempts >= self._limits.attempts:
                    break
                await self._store.attempt_failed(job_id, attempts, error)
                await asyncio.sleep(self._limits.backoff.delay(attempts))
                continue
            state, error = "delivered", None
            break
        limits = self._limits
        await self._store.close_delivery(job_id, state, attempts, error, time.time(), limits.result_ttl,
                                         limits.record_ttl)
        self._pending -= 1
        if state != "delivered":
            log.warning("job %s: delivery to %s failed after %d attempts: %s", job_id, redact(webhook), attempts,
                        error)

    # -- status ---------------------------------------------------------------------------------------------

    async def status(self, job_id: str, owner: str) -> bytes:
        """``GET /v1/jobs/ID``'s JSON text; 404 for an unknown job and for another key's job alike."""
        if self._closed:
            raise ServerNotReady("the server is shutting down: job states cannot be read now")
        row = await self._store.get(job_id) if _JOB_ID.fullmatch(job_id) else None
        if row is None or row.owner != owner:
            raise NotFound(f"unknown job '{job_id}' (it may have expired)")
        return _status(row, time.time())

    # -- sweep ----------------------------------------------------------------------------------------------

    async def _sweep(self) -> None:
        interval = max(0.05, min(60.0, self._limits.result_ttl / 2, self._limits.record_ttl / 2))
        while True:
            await asyncio.sleep(interval)
            try:
                while True:
                    results, rows = await self._store.sweep(time.time(), SWEEP_BATCH)
                    if results < SWEEP_BATCH and rows < SWEEP_BATCH:
                        break
            except Exception:
                log.exception("jobs: sweeping expired results failed; retrying in %.0f s", interval)


def _with_job(job_id: str, answer: bytes) -> bytes:
    """``{"job": ID, ...answer's members}``: the webhook body, without parsing the (maybe large) answer."""
    return orjson.dumps({"job": job_id})[:-1] + b"," + answer[1:]


def _status(row: JobRow, now: float) -> bytes:
    """The job's state; its result's members (``data`` or ``error``) while it is kept."""
    head = {
        "job": row.id,
        "status": row.state,
        "model": row.model,
        "version": row.version,
        "created_at": _time(row.created_at),
        "started_at": _time(row.started_at),
        "finished_at": _time(row.finished_at),
        "delivered_at": _time(row.delivered_at),
        "attempts": row.attempts,
        "last_error": row.last_error,
        "outcome": row.outcome,
        "result_expires_at": _time(row.result_expires_at),
    }
    expired = row.result_expires_at is not None and row.result_expires_at <= now
    if row.result is None or expired:
        head["result_expired"] = row.outcome is not None and (expired or row.result is None)
        return orjson.dumps(head)
    return orjson.dumps(head)[:-1] + b"," + row.result[1:]


def _time(value: float | None) -> str | None:
    """ISO 8601 UTC with milliseconds (``2025-01-31T12:00:00.123Z``)."""
    if value is None:
        return None
    moment = datetime.datetime.fromtimestamp(value, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
