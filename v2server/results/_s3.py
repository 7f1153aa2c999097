"""Answers stored in S3 (or an S3-compatible store), linked by presigned GET URLs: for several replicas.

``--results-url s3://BUCKET/PREFIX``: each answer is the object ``PREFIX<random id>`` (``Content-Type:
application/json``), and its link is a presigned GET URL that expires after ``--results-ttl`` (S3 then answers
403; SigV4 URLs live at most 7 days). boto3 is an optional extra (``pip install 'v2server[s3]'``), imported
only when this store starts; credentials, region and endpoint come from boto3's own configuration (the
environment, ``~/.aws``, an instance role; ``AWS_ENDPOINT_URL_S3`` for MinIO, Ceph or a test server). Calls run
in worker threads. A sweeper removes objects under the prefix older than the links' lifetime, at most
``SWEEP_LIMIT`` a pass; a bucket lifecycle rule on the prefix does the same without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
from collections.abc import AsyncGenerator
from typing import Any

from v2server.errors import StoreUnavailable, V2Error
from v2server.offload import run_in_worker
from v2server.results._local import SWEEP_LIMIT
from v2server.results._signing import LinkSigner, is_result_id, new_result_id

__all__ = ["MAX_PRESIGNED_SECONDS", "S3Store", "parse_s3_url"]

log = logging.getLogger(__name__)

#: the longest a SigV4 presigned URL may live
MAX_PRESIGNED_SECONDS = 7 * 24 * 3600


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (``bucket``, ``some/prefix/``)."""
    if not url.startswith("s3://"):
        raise V2Error(f"--results-url {url!r}: expected s3://BUCKET/PREFIX")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise V2Error(f"--results-url {url!r}: no bucket name")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


class S3Store:
    """The S3 results store (see the module docstring)."""

    def __init__(self, url: str, signer: LinkSigner, ttl: float) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        if ttl > MAX_PRESIGNED_SECONDS:
            raise V2Error(f"--results-ttl {ttl:g}: S3 presigned URLs live at most {MAX_PRESIGNED_SECONDS} s (7 days)")
        self.signer = signer  # unused here: S3 signs its own links; kept so every store has one
        self.ttl = ttl
        self._client: Any = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            import boto3  # type: ignore[import-untyped]
        except ImportError:
            raise V2Error(
                "--results-url needs boto3: install the extra, pip install 'v2server[s3]'"
            ) from None
        from botocore.config import Config  # type: ignore[import-untyped]

        # SigV4 presigned URLs (X-Amz-Expires): SigV2 is deprecated, and refused by newer regions
        config = Config(signature_version="s3v4")
        self._client = await asyncio.to_thread(boto3.session.Session().client, "s3", config=config)
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="v2server-results-s3-sweeper")
        log.info("results store: s3://%s/%s (links live %g s)", self.bucket, self.prefix, self.ttl)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def put(self, document: bytes, base_url: str) -> str:
        """Store ``document`` as a new object and return its presigned GET URL (``base_url`` is not used)."""
        key = self.prefix + new_result_id()
        try:
            return await run_in_worker(self._put, key, document)
        except Exception as exc:  # botocore's ClientError, connection and credential errors
            raise StoreUnavailable(f"the results store (s3://{self.bucket}/{self.prefix}) failed: {exc}") from None

    def _put(self, key: str, document: bytes) -> str:
        self._client.put_object(Bucket=self.bucket, Key=key, Body=document, ContentType="application/json")
        url = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=math.ceil(self.ttl)
        )
        return str(url)

    async def chunks(self, result_id: str) -> tuple[int, AsyncGenerator[bytes, None]] | None:
        """S3 links go to S3: ``/v1/results/ID`` knows none."""
        return None

    async def remove(self, result_id: str) -> None:
        return None

    async def sweep(self) -> int:
        """One pass: delete the objects under the prefix older than the links' lifetime (at most
        ``SWEEP_LIMIT``); the number deleted."""
        return await asyncio.to_thread(self._sweep)

    def _sweep(self) -> int:
        cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=self.ttl + 2)
        expired: list[str] = []
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for item in page.get("Contents", ()):
                name = item["Key"][len(self.prefix):]
                if is_result_id(name) and item["LastModified"] < cutoff:
                    expired.append(item["Key"])
            if len(expired) >= SWEEP_LIMIT:
                break
        expired = expired[:SWEEP_LIMIT]
        for start in range(0, len(expired), 1000):
            objects = [{"Key": key} for key in expired[start:start + 1000]]
            self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
        return len(expired)

    async def _sweep_forever(self) -> None:
        interval = min(300.0, max(1.0, self.ttl / 2))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("results sweep of s3://%s/%s failed: %s", self.bucket, self.prefix, exc)
