"""REST errors: the one mapping of an exception to (HTTP status, message), and the body styles of the routes.

Every handler maps an error through :func:`describe_error` (in its ``write_error``) and renders it with the
``ErrorBody`` its route family chose in the route table: ``{"error": ...}`` on the V2 and ``/v1`` routes, as
Triton and tritonclient expect; ``{"detail": ...}`` on ``/predict``, as the FastAPI-style servers it imitates
answer (500s read ``Inference failed: ...`` there). The style is chosen up front, so no handler rewrites a
body another has rendered.
"""

from __future__ import annotations

from collections.abc import Callable
from http.client import responses

import grpc
import tornado.web

from v2server.errors import V2Error, http_status

__all__ = ["ErrorBody", "describe_error", "predict_error_body", "v2_error_body"]

#: (HTTP status, message) -> the JSON object sent
ErrorBody = Callable[[int, str], dict[str, str]]


def describe_error(exc: BaseException | None, status_code: int) -> tuple[int, str]:
    """The HTTP status and message for ``exc`` (None: Tornado sends ``status_code`` without an exception).

    Our errors carry their status; a remote core's ``grpc.RpcError`` its code (gateway mode); Tornado's
    ``HTTPError`` its log message (never its reason, which is the status line); anything else is a 500 that
    names the exception.
    """
    if isinstance(exc, V2Error):
        return http_status(exc.grpc_code), exc.message
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return http_status(exc.code()), exc.details() or str(exc.code())
    if isinstance(exc, tornado.web.HTTPError):
        if exc.log_message:
            return status_code, exc.log_message % exc.args
        return status_code, exc.reason or _status_text(status_code)
    if exc is not None:
        return status_code, f"internal error: {exc}"
    return status_code, _status_text(status_code)


def _status_text(status_code: int) -> str:
    return responses.get(status_code, "Unknown")


def v2_error_body(status: int, message: str) -> dict[str, str]:
    """``{"error": message}``: the V2 protocol's error object (also used by the ``/v1`` routes)."""
    return {"error": message}


def predict_error_body(status: int, message: str) -> dict[str, str]:
    """``{"detail": message}``, with ``Inference failed: `` before the message of a 500."""
    return {"detail": f"Inference failed: {message}" if status == 500 else message}
