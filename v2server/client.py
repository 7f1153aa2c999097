"""A Python client of the ``/v1`` request style, after Modelbit's ``modelbit.get_inference``.

Standard library only (``urllib.request`` and ``json``), so it runs wherever Python does, and it imports
nothing of the server::

    from v2server.client import get_inference

    get_inference("http://localhost:8000", "example_doubler", 10)                      # {"data": 20}
    get_inference("http://localhost:8000", "example_adder", [[1, 3, 4, 5], [2, 6, 7, 8]], batch_size=1)

- :func:`get_inference` sends one ``POST /v1/{model}/{version}`` (``version``: ``latest``, a number or an
  alias) and returns the answer document, ``{"data": ...}``. With ``batch_size`` the data is a batch of rows
  ``[ID, arg1, ..., argN]`` sent ``batch_size`` rows a request, the answers joined and sorted by ID as one
  answer would be. With ``response_format="links"`` the server stores each answer and answers a link, which
  is followed (without the API key: a link is its own credential), so the result is the same document.
- :func:`infer_async` submits an asynchronous job (``response_webhook``: the server POSTs the result there)
  and returns a :class:`Job`, whose ``status()`` reads ``GET /v1/jobs/{id}`` and ``wait()`` polls it.
- Every failure raises :class:`V2ServerError`: the HTTP status (None when no answer came) and the server's
  own message (its ``error`` or ``detail``).
"""

from __future__ import annotations

import json
import math
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FINISHED", "Job", "V2ServerError", "get_inference", "infer_async"]

#: job states in which the inference has run (the result, or its error, is there unless it expired)
FINISHED = frozenset({"succeeded", "failed", "delivered", "delivery-failed"})

#: seconds the client waits past a request's own timeout for the server's 504 (and its message)
_MARGIN = 5.0


class V2ServerError(Exception):
    """A request that failed: ``status`` is the HTTP status (None: no answer, such as a refused connection or
    a client-side timeout) and ``message`` the server's ``error`` (``detail`` on ``/predict``) or what
    went wrong."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"{status}: {message}" if status is not None else message)
        self.status = status
        self.message = message


def get_inference(
    url: str,
    model: str,
    data: Any,
    *,
    version: str | int = "latest",
    api_key: str | None = None,
    timeout: float | None = None,
    response_format: str | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """The answer of ``POST {url}/v1/{model}/{version}`` with ``{"data": data}``: ``{"data": result}``.

    Args:
        url: the server, ``http://host:port`` (or ``https://``).
        model: the model's name.
        data: a single request's arguments, or a batch of rows ``[ID, arg1, ..., argN]``.
        version: ``latest``, a version number or an alias.
        api_key: sent as ``Authorization: Bearer KEY`` to the server (never to a link).
        timeout: seconds for the whole call; the server is told the time left (``response_timeout``) and
            answers 504 past it.
        response_format: ``"links"``: each answer is stored by the server and fetched from its link.
        batch_size: ``data`` is a batch: send it ``batch_size`` rows a request (``?batch=true``) and join the
            answers, sorted by ID.

    Raises:
        V2ServerError: the server refused or failed the request, a link could not be fetched, or no answer
            came in time.
        ValueError: ``batch_size`` with ``data`` that is not a list of rows, or with an ID used twice.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    call = _Call(url, model, str(version), api_key, deadline, response_format)
    if batch_size is None:
        return call.infer(data, batch=None)
    rows = _rows(data, batch_size)
    answers = [call.infer(rows[start:start + batch_size], batch=True)["data"]
               for start in range(0, len(rows), batch_size)]
    joined = [pair for answer in answers for pair in answer]
    return {"data": sorted(joined, key=lambda pair: _id_key(pair[0]))}


def infer_async(
    url: str,
    model: str,
    data: Any,
    *,
    webhook: str,
    version: str | int = "latest",
    api_key: str | None = None,
    timeout: float | None = None,
    ignore_timeout: bool = False,
) -> Job:
    """Submit ``data`` as an asynchronous job: the server answers 202 at once, runs the request, and POSTs
    ``{"job": ID, "data": ...}`` (or ``"error"``) to ``webhook``; the returned :class:`Job` reads its state.

    ``timeout`` bounds the job's inference (``response_timeout``); ``ignore_timeout`` lifts the server's
    ``--max-response-timeout-secs`` for it (``response_webhook_ignore_timeout``).
    """
    extra: dict[str, Any] = {"response_webhook": webhook}
    if timeout is not None:
        extra["response_timeout"] = timeout
    if ignore_timeout:
        extra["response_webhook_ignore_timeout"] = True
    call = _Call(url, model, str(version), api_key, None, None)
    status, document = call.post(data, batch=None, extra=extra)
    if status != 202 or not isinstance(document, dict) or "job" not in document:
        raise V2ServerError(status, f"expected 202 with a job, got {json.dumps(document)[:200]}")
    status_url = urllib.parse.urljoin(call.base + "/", str(document.get("status_url", f"/v1/jobs/{document['job']}")))
    return Job(str(document["job"]), status_url, api_key)


@dataclass
class Job:
    """An asynchronous ``/v1`` request: ``id``, ``status_url`` (absolute), and calls that read its state."""

    id: str
    status_url: str
    api_key: str | None = field(default=None, repr=False)

    def status(self, timeout: float = 30.0) -> dict[str, Any]:
        """``GET /v1/jobs/{id}``: ``{"job", "status", ...}`` and, while kept, ``data`` or ``error``."""
        request = urllib.request.Request(self.status_url, headers=_auth(self.api_key))
        document = _json_answer(request, timeout)[1]
        if not isinstance(document, dict):
            raise V2ServerError(200, f"expected a job's state, got {json.dumps(document)[:200]}")
        return document

    def wait(self, timeout: float | None = None, interval: float = 0.2) -> dict[str, Any]:
        """Poll :meth:`status` until the job has run (``FINISHED``); its state then. Raises
        ``V2ServerError`` (status None) when ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.status()
            if state.get("status") in FINISHED:
                return state
            if deadline is not None and time.monotonic() + interval > deadline:
                raise V2ServerError(None, f"job {self.id} is still {state.get('status')} after {timeout:g} s")
            time.sleep(interval)

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """:meth:`wait`, then the answer ``{"data": ...}``; the job's error raises ``V2ServerError``."""
        state = self.wait(timeout)
        if "data" in state:
            return {"data": state["data"]}
        if "error" in state:
            raise V2ServerError(None, str(state["error"]))
        raise V2ServerError(None, f"job {self.id} has no result any more (kept until result_expires_at)")


# -- requests ------------------------------------------------------------------------------------------------


@dataclass
class _Call:
    base: str
    model: str
    version: str
    api_key: str | None
    deadline: float | None
    response_format: str | None

    def __post_init__(self) -> None:
        self.base = self.base.rstrip("/")
        if not self.base.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.base!r}")

    def infer(self, data: Any, batch: bool | None) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.response_format is not None:
            extra["response_format"] = self.response_format
        status, document = self.post(data, batch, extra)
        if not isinstance(document, dict) or "data" not in document:
            raise V2ServerError(status, f"expected {{\"data\": ...}}, got {json.dumps(document)[:200]}")
        if self.response_format == "links":
            return self.follow(document["data"])
        return dict(document)

    def post(self, data: Any, batch: bool | None, extra: dict[str, Any]) -> tuple[int, Any]:
        body: dict[str, Any] = {"data": data, **extra}
        left = self.left()
        if left is not None:
            body["response_timeout"] = left
        path = f"/v1/{urllib.parse.quote(self.model, safe='')}/{urllib.parse.quote(self.version, safe='')}"
        query = "" if batch is None else f"?batch={'true' if batch else 'false'}"
        request = urllib.request.Request(
            self.base + path + query, data=json.dumps(body, default=_plain).encode(), method="POST",
            headers={"Content-Type": "application/json", **_auth(self.api_key)},
        )
        return _json_answer(request, None if left is None else left + _MARGIN)

    def follow(self, link: Any) -> dict[str, Any]:
        """GET a stored answer's link: no API key (the link is the credential; it may point to S3)."""
        if not isinstance(link, str) or not link.startswith(("http://", "https://")):
            raise V2ServerError(200, f"expected a link in 'data', got {json.dumps(link)[:200]}")
        left = self.left()
        document = _json_answer(urllib.request.Request(link), None if left is None else left + _MARGIN)[1]
        if not isinstance(document, dict) or "data" not in document:
            raise V2ServerError(200, f"the link's document is not {{\"data\": ...}}: {json.dumps(document)[:200]}")
        return document

    def left(self) -> float | None:
        """Seconds left of the call's timeout (None: no timeout); none left raises."""
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise V2ServerError(None, "the call's timeout passed before all of its requests were answered")
        return left


def _json_answer(request: urllib.request.Request, timeout: float | None) -> tuple[int, Any]:
    """Send ``request``; (status, JSON document) of a 2xx answer, else ``V2ServerError`` with its message."""
    try:
        with urllib.request.urlopen(request, timeout=timeout if timeout is not None else socket.getdefaulttimeout()) as answer:
            status, text = answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        with exc:
            raise V2ServerError(exc.code, _message(exc.read(), exc.reason)) from None
    except TimeoutError:  # socket.timeout too
        raise V2ServerError(None, f"no answer from {request.full_url} within {timeout:g} s") from None
    except urllib.error.URLError as exc:
        raise V2ServerError(None, f"cannot reach {request.full_url}: {exc.reason}") from None
    try:
        return status, json.loads(text)
    except ValueError:
        raise V2ServerError(status, f"the answer is not JSON: {text[:200]!r}") from None


def _message(body: bytes, reason: Any) -> str:
    """The server's message: ``error`` (V2, ``/v1``) or ``detail`` (``/predict``), S3's ``<Message>``, else
    the body's text or the status's reason."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if isinstance(document, dict):
        for key in ("error", "detail"):
            if isinstance(document.get(key), str):
                return str(document[key])
    text = body.decode("utf-8", "replace")
    found = re.search(r"<Message>(.*?)</Message>", text, re.DOTALL)
    if found:
        return found.group(1)
    return text.strip()[:500] or str(reason)


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _plain(value: Any) -> Any:
    """JSON for numpy arrays and scalars (``tolist``/``item``), without importing numpy."""
    for method in ("tolist", "item"):
        if hasattr(value, method):
            return getattr(value, method)()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _rows(data: Any, batch_size: int) -> Sequence[Any]:
    if type(batch_size) is not int or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(data, (list, tuple)) or not data or not all(
        isinstance(row, (list, tuple)) and row for row in data
    ):
        raise ValueError("with batch_size, data must be a non-empty list of rows [ID, arg1, ..., argN]")
    seen: set[tuple[int, Any]] = set()
    for row in data:
        key = _id_key(row[0])
        if key in seen:
            raise ValueError(f"batch ID {row[0]!r} is used more than once")
        seen.add(key)
    return list(data)


def _id_key(value: Any) -> tuple[int, Any]:
    """The server's order: numbers before strings (1 and 1.0 are one ID)."""
    if isinstance(value, str):
        return (1, value)
    if isinstance(value, float) and math.isnan(value):
        raise ValueError("a batch ID cannot be NaN")
    return (0, value)
