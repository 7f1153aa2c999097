"""Asynchronous ``/v1`` requests: jobs kept in SQLite, run in the background, results POSTed to webhooks.

``store`` (the database, in its own thread), ``targets`` (which webhook URLs are allowed), ``delivery`` (signed
POSTs and backoff), ``runner`` (the service: accept, run, deliver, sweep, resume after a restart) and
``handlers`` (``GET /v1/jobs/{id}``). docs/jobs.md describes the API.
"""

from v2server.jobs.delivery import Deliverer
from v2server.jobs.runner import JobLimits, JobService
from v2server.jobs.store import JobStore
from v2server.jobs.targets import TargetPolicy

__all__ = ["Deliverer", "JobLimits", "JobService", "JobStore", "TargetPolicy"]
