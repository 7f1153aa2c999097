"""HTTP body compression both ways, as tritonclient uses it, and only where it pays.

Requests may arrive gzip- or zlib-compressed (``Content-Encoding``); they are inflated in steps with the body
limit applied as the output grows, so a few kilobytes that would inflate to gigabytes cost no more than the
limit (413) before they are refused.

Answers: every common HTTP client sends ``Accept-Encoding: gzip, deflate`` by default, and float tensors
hardly shrink, so an answer is compressed only when that is worth its CPU (:func:`encode_answer`): it is at
least :data:`MIN_COMPRESSED_SIZE` bytes, and a :data:`PROBE_SIZE` sample of it, taken across the whole body,
shrinks to at most :data:`WORTH_RATIO` of its size at level 1. Then the whole body (JSON and binary tail) is
compressed at level 1, the fastest, which keeps most of the gain on compressible answers (JSON text, small
integers). ``Inference-Header-Content-Length`` keeps giving the uncompressed JSON length, and an answer sent
as is has no ``Content-Encoding``.
"""

from __future__ import annotations

import zlib

from v2server.errors import InvalidRequest, PayloadTooLarge

__all__ = [
    "LEVEL",
    "MAX_INFLATE_RATIO",
    "MIN_COMPRESSED_SIZE",
    "PROBE_SIZE",
    "WORTH_RATIO",
    "compress",
    "decode_body",
    "encode_answer",
    "negotiate_encoding",
    "worth_compressing",
]

_SUPPORTED = ("gzip", "deflate")

#: Answers smaller than this go out as they are: the saving is a few hundred bytes at most, less than the
#: headers, and the client pays to inflate it.
MIN_COMPRESSED_SIZE = 1024

#: Bytes of the answer compressed to judge it: four 4 KiB slices spread over the body (its JSON header and its
#: binary tail both get a say), about 50 us at level 1.
PROBE_SIZE = 16 * 1024

#: Compress only when the probe shrinks to this fraction or less (a saving of 15 % or more). Float tensors
#: shrink to 0.90-0.93 at any level: a 10 % saving on those costs ten times the time of sending them as they
#: are (1 MiB: 70 ms at level 6 against 6.6 ms); JSON numbers shrink to about 0.5.
WORTH_RATIO = 0.85

#: Deflate's largest expansion: one compressed byte stands for at most about 1032 bytes, so a compressed body
#: of N bytes is inflating work on up to 1032 N bytes (what decides whether to inflate off the event loop).
MAX_INFLATE_RATIO = 1032

#: zlib's fastest level: about 3x the speed of the default (6) for a few percent less saving.
LEVEL = 1

_INFLATE_STEP = 1 << 20  # bytes inflated per call: the limit is checked after each


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
    """``body`` compressed at :data:`LEVEL`; ``deflate`` is zlib-wrapped, as Python clients (and Triton) mean
    it. zlib releases the GIL while it works, so a worker thread can do this beside the event loop."""
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    return zlib.compress(body, LEVEL, wbits)


def worth_compressing(body: bytes) -> bool:
    """Whether compressing ``body`` pays (see the module's docstring): cheap, a fixed amount of work."""
    if len(body) < MIN_COMPRESSED_SIZE:
        return False
    if len(body) <= PROBE_SIZE:
        sample = body
    else:
        slice_size = PROBE_SIZE // 4
        step = (len(body) - slice_size) // 3
        sample = b"".join(body[i * step : i * step + slice_size] for i in range(4))
    return len(zlib.compress(sample, LEVEL)) <= WORTH_RATIO * len(sample)


def encode_answer(body: bytes, accept_encoding: str | None) -> tuple[bytes, str | None]:
    """The answer to send and its ``Content-Encoding`` (None: sent as is), after the client's
    ``Accept-Encoding`` and :func:`worth_compressing`."""
    encoding = negotiate_encoding(accept_encoding)
    if encoding is None or not worth_compressing(body):
        return body, None
    return compress(body, encoding), encoding


def decode_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The request body without its ``Content-Encoding``, refusing to inflate past ``limit`` bytes (0: none).

    The cap matters: a few kilobytes of gzip can inflate to gigabytes. Inflating goes in steps of 1 MiB of
    output with the cap checked after each, so no more than ``limit`` bytes (plus one step) are ever held;
    zlib releases the GIL while it inflates.
    """
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in _SUPPORTED:
        raise InvalidRequest(f"unsupported Content-Encoding '{content_encoding}'; expected gzip, deflate or identity")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    pieces: list[bytes] = []
    size = 0
    pending = body
    try:
        while not inflater.eof:
            piece = inflater.decompress(pending, _INFLATE_STEP)
            pending = inflater.unconsumed_tail
            pieces.append(piece)
            size += len(piece)
            if limit and size > limit:
                raise PayloadTooLarge(
                    f"request body inflates past the limit of {limit} bytes (--http-max-body-size)"
                )
            if not piece and not pending:
                break  # the input is spent before the end of the stream
    except zlib.error as exc:
        raise InvalidRequest(f"request body is not valid {encoding} data: {exc}") from None
    if not inflater.eof:
        raise InvalidRequest(f"request body is not valid {encoding} data: it ends early")
    return b"".join(pieces)  # (joining over 1 MiB releases the GIL)
