"""The jobs database: states, recovery after a crash, expiry, schema version."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from v2server.errors import V2Error
from v2server.jobs.store import SCHEMA_VERSION, JobStore, NewJob


def _job(job_id: str, created: float = 1.0) -> NewJob:
    return NewJob(job_id, "owner", "m", "", None, b'{"data": 1}', "http://127.0.0.1/h", 2.5, created)


def test_a_job_moves_queued_running_finished_delivered(tmp_path: Path) -> None:
    async def main() -> None:
        store = JobStore.in_state_dir(tmp_path / "state")
        await store.open()
        await store.insert(_job("a"))
        row = await store.get("a")
        assert row is not None and (row.state, row.attempts, row.result) == ("queued", 0, None)
        assert await store.start("a", 2.0) == ("m", "", None, b'{"data": 1}', 2.5)
        assert await store.start("a", 2.0) is None  # only a queued job starts
        await store.finish("a", "succeeded", b'{"data":2}', 3.0)
        assert await store.delivery("a") == ("http://127.0.0.1/h", b'{"data":2}', 0)
        await store.attempt_failed("a", 1, "HTTP 500")
        await store.close_delivery("a", "delivered", 2, None, 4.0, result_ttl=10, record_ttl=100)
        row = await store.get("a")
        assert row is not None
        assert (row.state, row.outcome, row.attempts, row.delivered_at, row.result_expires_at) == (
            "delivered", "succeeded", 2, 4.0, 14.0
        )
        assert await store.delivery("a") is None
        assert await store.sweep(13.9, 10) == (0, 0)
        assert await store.sweep(14.0, 10) == (1, 0)
        row = await store.get("a")
        assert row is not None and row.result is None
        assert await store.sweep(104.0, 10) == (0, 1)
        assert await store.get("a") is None
        await store.close()
        assert (tmp_path / "state" / "jobs.sqlite3").exists()

    asyncio.run(main())


def test_recovery_requeues_running_jobs_and_redelivers_results(tmp_path: Path) -> None:
    async def main() -> None:
        store = JobStore.in_state_dir(tmp_path)
        await store.open()
        for index, name in enumerate(["queued", "running", "ran", "delivered"]):
            await store.insert(_job(name, created=float(index)))
        await store.start("running", 5.0)
        await store.start("ran", 5.0)
        await store.finish("ran", "failed", b'{"error":"x"}', 6.0)
        await store.start("delivered", 5.0)
        await store.finish("delivered", "succeeded", b'{"data":1}', 6.0)
        await store.close_delivery("delivered", "delivered", 1, None, 7.0, 10, 10)
        await store.close()  # as if the process died here: nothing else is written

        again = JobStore.in_state_dir(tmp_path)
        await again.open()
        queued, undelivered, pending = await again.recover()
        assert queued == ["queued", "running"] and undelivered == ["ran"] and pending == 3
        row = await again.get("running")
        assert row is not None and row.state == "queued" and row.started_at is None
        await again.close()

    asyncio.run(main())


def test_the_database_is_wal_and_versioned(tmp_path: Path) -> None:
    async def main() -> None:
        store = JobStore.in_state_dir(tmp_path)
        await store.open()
        await store.close()

    asyncio.run(main())
    db = sqlite3.connect(tmp_path / "jobs.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()

    async def newer() -> None:
        store = JobStore.in_state_dir(tmp_path)
        with pytest.raises(V2Error, match="schema version 2"):
            await store.open()
        await store.close()

    asyncio.run(newer())


def test_in_memory_without_a_state_dir() -> None:
    async def main() -> None:
        store = JobStore.in_state_dir(None)
        await store.open()
        await store.insert(_job("a"))
        assert (await store.recover())[2] == 1
        await store.close()

    asyncio.run(main())


def test_a_state_dir_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")

    async def main() -> None:
        store = JobStore.in_state_dir(tmp_path / "file" / "state")
        with pytest.raises(V2Error, match="cannot open the jobs database"):
            await store.open()
        await store.close()

    asyncio.run(main())
