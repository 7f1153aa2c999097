"""Request inflation with its size cap, and Accept-Encoding negotiation."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

import pytest

from v2server.errors import InvalidRequest, PayloadTooLarge
from v2server.rest_api.compression import compress, decode_body, negotiate_encoding

LIMIT = 1 << 20


@pytest.mark.parametrize(
    ("encoding", "pack"),
    [("gzip", gzip.compress), ("GZIP", gzip.compress), ("deflate", zlib.compress),
     (None, bytes), ("", bytes), ("identity", bytes)],
)
def test_decode_body(encoding: str | None, pack: Callable[[bytes], bytes]) -> None:
    body = b'{"inputs": []}' * 100
    assert decode_body(pack(body), encoding, LIMIT) == body


@pytest.mark.parametrize(
    ("body", "encoding", "message"),
    [
        (b"abc", "br", "unsupported Content-Encoding 'br'; expected gzip, deflate or identity"),
        (b"not gzip", "gzip", "request body is not valid gzip data"),
        (gzip.compress(b"x" * 100)[:20], "gzip", "request body is not valid gzip data"),
        (b"not zlib", "deflate", "request body is not valid deflate data"),
    ],
)
def test_decode_body_errors(body: bytes, encoding: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_body(body, encoding, LIMIT)
    assert caught.value.message.startswith(message)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_inflating_past_the_limit_is_refused(encoding: str) -> None:
    bomb = compress(b"\0" * (LIMIT * 8), encoding)
    assert len(bomb) < LIMIT // 100
    with pytest.raises(PayloadTooLarge, match=str(LIMIT)):
        decode_body(bomb, encoding, LIMIT)


@pytest.mark.parametrize(
    ("header", "chosen"),
    [
        (None, None), ("", None), ("identity", None), ("br", None), ("gzip", "gzip"), ("deflate", "deflate"),
        ("gzip;q=0.5, deflate;q=0.8", "deflate"), ("gzip, deflate;q=0.1", "gzip"), ("gzip;q=0", None),
        ("br, GZIP", "gzip"), ("deflate;q=bad, gzip;q=0.2", "gzip"),
    ],
)
def test_negotiate_encoding(header: str | None, chosen: str | None) -> None:
    assert negotiate_encoding(header) == chosen


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compress_round_trips(encoding: str) -> None:
    body = b"payload" * 50
    assert decode_body(compress(body, encoding), encoding, LIMIT) == body
