"""``GET /v1/jobs/{id}``: an asynchronous job's state (route line in ``rest_api/app.py``)."""

from __future__ import annotations

from v2server.errors import NotFound
from v2server.jobs.runner import JobService
from v2server.rest_api.base import Dependencies, V2Handler

__all__ = ["JobHandler"]


class JobHandler(V2Handler):
    """``GET /v1/jobs/{id}``.

    Answers 200 ``{"job": ID, "status": "queued|running|succeeded|failed|delivered|delivery-failed",
    "model": NAME, "version": "3" ("": the latest), "created_at", "started_at", "finished_at", "delivered_at":
    ISO 8601 UTC or null, "attempts": N (delivery attempts), "last_error": TEXT|null (the last failed
    delivery's), "outcome": "succeeded|failed"|null, "result_expires_at": ISO 8601|null}`` and, while the
    result is kept, its ``"data": ...`` or ``"error": ...``; once dropped, ``"result_expired": true``.
    404 ``{"error": ...}`` for an unknown or expired job and for a job another API key created.
    """

    def initialize(self, deps: Dependencies, jobs: JobService | None = None) -> None:
        super().initialize(deps)
        self._jobs = jobs

    async def get(self, job: str) -> None:
        if self._jobs is None:
            raise NotFound(f"unknown job '{job}': this server keeps no jobs (gateway mode)")
        self.write_json_text(await self._jobs.status(job, self.caller()))
