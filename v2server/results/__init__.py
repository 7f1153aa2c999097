"""Large ``/v1`` answers as links (``response_format: "links"``): where they are stored and how links work.

A ``/v1`` request whose body says ``"response_format": "links"`` is answered ``{"data": URL}``: the document the
synchronous answer would have been is stored, and the URL serves it until ``--results-ttl`` has passed. Two
stores share one interface (:class:`ResultStore`):

- :class:`LocalStore` (``--results-dir``, the default): files in one folder, served by the REST gateway at
  ``/v1/results/ID?expires=UNIX&sig=HMAC`` (:class:`LinkSigner`): 403 for a bad signature, 410 once expired
  (and the file is removed), 404 for an answer that is gone.
- :class:`S3Store` (``--results-url s3://BUCKET/PREFIX``): objects in S3, linked by presigned GET URLs, for
  several replicas behind one address.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from v2server.results._local import READ_CHUNK, SWEEP_LIMIT, LocalStore
from v2server.results._s3 import S3Store, parse_s3_url
from v2server.results._signing import LinkSigner, Verdict, is_result_id, new_result_id
from v2server.settings import Settings

__all__ = [
    "READ_CHUNK",
    "SWEEP_LIMIT",
    "LinkSigner",
    "LocalStore",
    "ResultStore",
    "S3Store",
    "Verdict",
    "is_result_id",
    "new_result_id",
    "open_store",
    "parse_s3_url",
]


class ResultStore(Protocol):
    """Where link answers go; ``start`` and ``close`` run on the server's event loop."""

    signer: LinkSigner
    ttl: float

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def put(self, document: bytes, base_url: str) -> str:
        """Store ``document``; its link (``base_url``: ``scheme://host[:port]`` for links the server serves)."""
        ...

    async def chunks(self, result_id: str) -> tuple[int, AsyncGenerator[bytes, None]] | None:
        """A stored answer the server serves itself: its size and content; None when there is none."""
        ...

    async def remove(self, result_id: str) -> None: ...


def open_store(settings: Settings) -> ResultStore:
    """The store the settings choose (not started): S3 with ``--results-url``, else the local folder."""
    signer = LinkSigner(settings.results_secret)
    if settings.results_url:
        return S3Store(settings.results_url, signer, settings.results_ttl_seconds)
    return LocalStore(settings.results_dir, signer, settings.results_ttl_seconds, settings.results_max_bytes)
