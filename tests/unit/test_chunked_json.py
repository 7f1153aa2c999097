"""JSON in bounded pieces: exactly what one ``orjson`` call gives, for valid text and invalid text alike."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import orjson
import pytest

from v2server.rest_api.chunked_json import FlatArray, discard, dumps, loads

_TRICKY = ["a", ",", "[", "]", "{", "}", '"', "\\", " ", "é", ":", "\n", "\\\\", '\\"']


def _document(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value whose strings hold the characters a splitter could trip on."""
    roll = rng.random()
    if depth > 4 or roll < 0.4:
        text = "".join(rng.choice(_TRICKY) for _ in range(rng.randint(0, 6)))
        return rng.choice([rng.randint(-(10**6), 10**6), rng.random(), True, False, None, text])
    if roll < 0.75:
        return [_document(rng, depth + 1) for _ in range(rng.randint(0, 12))]
    keys = ("".join(rng.choice(_TRICKY) for _ in range(rng.randint(0, 4))) for _ in range(rng.randint(0, 6)))
    return {key: _document(rng, depth + 1) for key in keys}


DOCUMENTS = [_document(random.Random(seed)) for seed in range(150)]


@pytest.mark.parametrize("chunk", [1, 2, 7, 64])
def test_loads_in_pieces_is_orjson_loads(chunk: int) -> None:
    for index, document in enumerate(DOCUMENTS):
        option = orjson.OPT_INDENT_2 if index % 3 == 0 else 0
        text = orjson.dumps(document, option=option)
        if index % 4 == 0:
            text = b" \n" + text + b"\r\n "
        assert loads(text, chunk=chunk) == document, text


def test_loads_stops_at_end() -> None:
    text = orjson.dumps({"inputs": list(range(1000))})
    assert loads(text + b"binary tail", len(text), chunk=16) == {"inputs": list(range(1000))}


@pytest.mark.parametrize(
    "text",
    [
        b"[1, 2,, 3, 4, 5, 6]", b"[1, 2, 3, 4, 5, 6,]", b"[,1, 2, 3, 4, 5, 6]", b"[1, 2, 3, 4, 5, 6",
        b"[1, 2, 3, 4, 5, 6]]", b"[[1, 2], [3, 4}, 5, 6]", b'{"a": 1, "b" 2, "c": 3}', b'{"a": 1, "b": 2, "c": }',
        b'["abc", "de\\", "f"]', b"[1, 2, 3] [4, 5, 6]", b'{"a": [1, 2, 3, 4], "b": [5, 6, 7, 8}', b"[1 2, 3, 4, 5]",
        b'{"a": 1, 2: 3, "b": 4, "c": 5}',
    ],
)
def test_invalid_text_is_refused_as_orjson_refuses_it(text: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(text)
    for chunk in (1, 4, 9):
        with pytest.raises(orjson.JSONDecodeError):
            loads(text, chunk=chunk)


def test_mutated_text_parses_exactly_when_orjson_parses_it() -> None:
    rng = random.Random(5)
    for document in DOCUMENTS[:100]:
        text = orjson.dumps(document)
        for _ in range(3):
            at = rng.randrange(len(text))
            mutated = text[:at] + rng.choice([b",", b"]", b"[", b"}", b'"', b"", b"x", b":", b"\\"]) + text[at + 1 :]
            try:
                expected: Any = orjson.loads(mutated)
            except orjson.JSONDecodeError:
                expected = orjson.JSONDecodeError
            for chunk in (1, 3, 16):
                try:
                    got: Any = loads(mutated, chunk=chunk)
                except orjson.JSONDecodeError:
                    got = orjson.JSONDecodeError
                assert got == expected, (mutated, chunk)


@pytest.mark.parametrize("chunk", [1, 3, 50])
def test_dumps_in_pieces_is_orjson_dumps(chunk: int) -> None:
    for document in DOCUMENTS:
        assert dumps(document, chunk=chunk) == orjson.dumps(document)
    arrays: dict[str, Any] = {
        "flat": np.arange(200, dtype=np.float32) / 7,
        "matrix": np.arange(300, dtype=np.int64).reshape(30, 10),
        "rows": [[i, {"a": np.arange(3)}] for i in range(40)],
    }
    option = orjson.OPT_SERIALIZE_NUMPY
    assert dumps(arrays, option, chunk=chunk) == orjson.dumps(arrays, option=option)


def test_dumps_refuses_keys_orjson_refuses() -> None:
    with pytest.raises(orjson.JSONEncodeError):
        dumps({1: list(range(10))}, chunk=2)


def test_discard_empties_large_lists_in_place_and_leaves_small_ones() -> None:
    big = [[i, float(i)] for i in range(1000)]
    flat = list(range(1000))
    shape = [1, 1000]
    document = {"inputs": [{"shape": shape, "data": flat}], "rows": big, "id": "x"}
    discard(document, chunk=64)
    assert big == [] and flat == [] and shape == [1, 1000] and document["id"] == "x"


def _materialised(value: Any) -> Any:
    if isinstance(value, FlatArray):
        return value.tolist()
    if isinstance(value, list):
        return [_materialised(item) for item in value]
    if isinstance(value, dict):
        return {key: _materialised(item) for key, item in value.items()}
    return value


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_deferred_flat_arrays_are_what_orjson_gives(chunk: int) -> None:
    for document in DOCUMENTS:
        text = orjson.dumps(document)
        assert _materialised(loads(text, chunk=chunk, defer=True)) == document


def test_a_large_flat_array_is_counted_before_it_is_parsed() -> None:
    text = b'{"data": [' + b", ".join([b"1.5", b"true", b"-2e3", b"null"] * 50) + b' ], "strings": ["a", "b", "c", "d"]}'
    document = loads(text, chunk=16, defer=True)
    data = document["data"]
    assert isinstance(data, FlatArray) and len(data) == 200
    assert data.tolist() == [1.5, True, -2000.0, None] * 50
    assert all(len(piece) < 10 for piece in data.pieces())
    assert document["strings"] == ["a", "b", "c", "d"]  # strings inside: parsed as usual
    assert len(loads(b"[" + b" " * 40 + b"]", chunk=16, defer=True)) == 0
    broken = loads(b"[" + b"1, " * 20 + b"2,, 3]", chunk=16, defer=True)
    assert len(broken) == 23  # counted from the text; reading it finds the fault
    with pytest.raises(orjson.JSONDecodeError):
        broken.tolist()
