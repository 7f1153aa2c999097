"""Links to stored answers: storing a ``/v1`` answer (``response_format: "links"``) and serving it back.

``GET /v1/results/{id}?expires=UNIX&sig=HEX`` serves an answer the local store holds. The signed link is the
credential, so the route needs no API key (docs/security.md): a bad or missing signature is 403, an expired
link 410 (and its file is removed at once), an answer that is gone 404. With an S3 store the links go to S3
and this route finds nothing. The answer streams out in chunks read in worker threads.
"""

from __future__ import annotations

import contextlib

import tornado.web

from v2server.errors import NotFound, Unsupported
from v2server.rest_api.base import V2Handler
from v2server.results import Verdict

__all__ = ["ResultHandler", "store_answer"]


async def store_answer(handler: V2Handler, document: bytes) -> str:
    """Store ``document`` (the JSON text of an answer) in the handler's results store; its link."""
    if handler.results is None:
        raise Unsupported("response_format 'links' needs a results store, and this server has none")
    base = handler.results_base_url or f"{handler.request.protocol}://{handler.request.host}"
    return await handler.results.put(document, base.rstrip("/"))


class ResultHandler(V2Handler):
    """``GET /v1/results/{id}?expires=UNIX&sig=HEX``: a stored answer (``application/json``).

    Answers 200 with the document the synchronous request would have answered; 403 ``{"error"}`` for a
    missing or bad signature, 410 once the link has expired (the answer is removed), 404 for an answer that is
    gone (or stored by a replica that does not share ``--results-dir``).
    """

    needs_key = False  # the signature is the credential

    async def get(self, result_id: str) -> None:
        store = self.results
        if store is None:
            raise NotFound("this server stores no answers")
        verdict = store.signer.check(
            result_id, self.get_query_argument("expires", None), self.get_query_argument("sig", None)
        )
        if verdict is Verdict.BAD_SIGNATURE:
            raise tornado.web.HTTPError(
                403, "the link's signature does not match: the link was altered, or another server signed it "
                "(replicas that share --results-dir need one --results-secret)")
        if verdict is Verdict.EXPIRED:
            await store.remove(result_id)
            raise tornado.web.HTTPError(410, "the link expired (--results-ttl); its answer has been removed")
        found = await store.chunks(result_id)
        if found is None:
            raise NotFound(f"no stored answer '{result_id}': it was removed, or another replica stored it")
        size, chunks = found
        self.set_header("Content-Type", "application/json")
        self.set_header("Content-Length", str(size))
        self.set_header("Cache-Control", "private, no-store")
        async with contextlib.aclosing(chunks):  # a client that leaves mid-answer closes the file too
            async for chunk in chunks:
                self.write(chunk)
                await self.flush()
        self.finish()
