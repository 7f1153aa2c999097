"""Request inflation with its size cap, Accept-Encoding negotiation, and when an answer is worth compressing."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import Callable

import numpy as np
import orjson
import pytest

from v2server.errors import InvalidRequest, PayloadTooLarge
from v2server.rest_api.compression import (
    MIN_COMPRESSED_SIZE,
    compress,
    decode_body,
    encode_answer,
    negotiate_encoding,
    worth_compressing,
)

LIMIT = 1 << 20


@pytest.mark.parametrize(
    ("encoding", "pack"),
    [("gzip", gzip.compress), ("GZIP", gzip.compress), ("deflate", zlib.compress),
     (None, bytes), ("", bytes), ("identity", bytes)],
)
def test_decode_body(encoding: str | None, pack: Callable[[bytes], bytes]) -> None:
    body = b'{"inputs": []}' * 100
    assert decode_body(pack(body), encoding, LIMIT) == body


def test_a_body_of_many_steps_inflates_whole() -> None:
    body = bytes(range(256)) * (5 << 12)  # 5 MiB: 5 steps of output
    assert decode_body(zlib.compress(body, 1, 31), "gzip", 0) == body
    assert decode_body(zlib.compress(body, 1), "deflate", len(body)) == body


@pytest.mark.parametrize(
    ("body", "encoding", "message"),
    [
        (b"abc", "br", "unsupported Content-Encoding 'br'; expected gzip, deflate or identity"),
        (b"not gzip", "gzip", "request body is not valid gzip data"),
        (gzip.compress(b"x" * 100)[:20], "gzip", "request body is not valid gzip data"),
        (b"not zlib", "deflate", "request body is not valid deflate data"),
        (b"", "gzip", "request body is not valid gzip data: it ends early"),
    ],
)
def test_decode_body_errors(body: bytes, encoding: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_body(body, encoding, LIMIT)
    assert caught.value.message.startswith(message)


def _bomb(encoding: str, size: int) -> bytes:
    """``size`` zero bytes, compressed as tightly as zlib can, built without holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    return b"".join([*(packer.compress(zeros) for _ in range(size >> 20)), packer.flush()])


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_bomb_is_refused_without_inflating_past_the_limit(encoding: str) -> None:
    bomb = _bomb(encoding, 64 * LIMIT)
    assert len(bomb) < LIMIT // 10
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge, match=f"inflates past the limit of {LIMIT} bytes .--http-max-body-size."):
            decode_body(bomb, encoding, LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * LIMIT  # the limit plus a step or two: never the 64 MiB the bomb stands for


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
    unpack = gzip.decompress if encoding == "gzip" else zlib.decompress
    assert unpack(compress(body, encoding)) == body


# --- when an answer is worth compressing ----------------------------------------------------------------------

_RNG = np.random.default_rng(7)
FLOATS = _RNG.random(1 << 18).astype(np.float32)  # 1 MiB of float32: shrinks by less than 10 %
JSON_FLOATS = orjson.dumps({"outputs": [{"data": FLOATS[: 1 << 16]}]}, option=orjson.OPT_SERIALIZE_NUMPY)
SMALL_INTS = _RNG.integers(0, 100, 1 << 16).astype(np.int32).tobytes()


@pytest.mark.parametrize(
    ("body", "worth"),
    [
        (b"a" * (MIN_COMPRESSED_SIZE - 1), False),  # tiny: headers weigh more than the saving
        (b"a" * MIN_COMPRESSED_SIZE, True),
        (FLOATS.tobytes(), False),  # float tensors hardly shrink
        (b'{"outputs":[]}' + FLOATS.tobytes(), False),  # a binary answer: its tail decides
        (JSON_FLOATS, True),  # JSON numbers halve
        (SMALL_INTS, True),  # small integers shrink even as binary
        (FLOATS.tobytes()[:8192] + b"a" * (1 << 20), True),  # the probe samples the whole body, not its start
    ],
)
def test_worth_compressing(body: bytes, worth: bool) -> None:
    assert worth_compressing(body) is worth


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_encode_answer(encoding: str) -> None:
    assert encode_answer(JSON_FLOATS, None) == (JSON_FLOATS, None)
    assert encode_answer(JSON_FLOATS, "br") == (JSON_FLOATS, None)
    raw = FLOATS.tobytes()
    assert encode_answer(raw, f"{encoding}, identity") == (raw, None)
    packed, chosen = encode_answer(JSON_FLOATS, encoding)
    assert chosen == encoding and len(packed) < len(JSON_FLOATS) * 0.7
    assert decode_body(packed, encoding, 0) == JSON_FLOATS
