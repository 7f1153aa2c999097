"""HTTP body compression both ways, as tritonclient uses it.

Requests may arrive gzip- or zlib-compressed (``Content-Encoding``); the whole response body (JSON and
binary tail) is compressed only when ``Accept-Encoding`` asks, and ``Inference-Header-Content-Length`` keeps
giving the uncompressed JSON length.
"""

from __future__ import annotations

import gzip
import zlib

from v2server.errors import InvalidRequest, PayloadTooLarge

__all__ = ["compress", "decode_body", "negotiate_encoding"]

_SUPPORTED = ("gzip", "deflate")


def negotiate_encoding(accept_encoding: str | None) -> str | None:
    """The encoding to answer with: the supported one with the highest q-value, or None for identity."""
    if not accept_encoding:
        return None
    best: tuple[float, str] | None = None
    for item in accept_encoding.split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        if name not in _SUPPORTED:
            continue
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0 and (best is None or quality > best[0]):
            best = (quality, name)
    return best[1] if best else None


def compress(body: bytes, encoding: str) -> bytes:
    """``deflate`` is zlib-wrapped, as Python clients (and Triton) mean it."""
    return gzip.compress(body, compresslevel=6) if encoding == "gzip" else zlib.compress(body)


def decode_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The request body without its ``Content-Encoding``, refusing to inflate past ``limit`` bytes.

    The cap matters: a few kilobytes of gzip can inflate to gigabytes.
    """
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in _SUPPORTED:
        raise InvalidRequest(f"unsupported Content-Encoding '{content_encoding}'; expected gzip, deflate or identity")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"request body is not valid {encoding} data: {exc}") from None
    if len(plain) > limit:
        raise PayloadTooLarge(f"request body inflates past the limit of {limit} bytes (--http-max-body-size)")
    if not inflater.eof:
        raise InvalidRequest(f"request body is not valid {encoding} data: it ends early")
    return plain
