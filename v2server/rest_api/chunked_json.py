"""JSON parsing and rendering in bounded steps, for bodies too large for one ``orjson`` call.

``orjson`` holds the GIL for a whole call: 250 MB of floats take seconds, and no other thread (the event
loop's included) runs meanwhile, even when the call is made from a worker thread. :func:`loads` and
:func:`dumps` give the same result as ``orjson.loads`` and ``orjson.dumps`` but cut large arrays and objects
into pieces of at most about :data:`CHUNK_BYTES` of text (:data:`~v2server.offload.CHUNK_ELEMENTS` values),
each one ``orjson`` call, so the thread doing the work hands the GIL back every few milliseconds. Small
documents take the single call.

How :func:`loads` cuts: a vectorised scan (numpy, in windows) finds the quotes that are not escaped and the
brackets and braces outside strings, with their nesting depth. A large array or object is then split at
commas of its own depth (outside strings and outside its children) into runs of members of at most
:data:`CHUNK_BYTES`, each parsed as ``[run]`` or ``{run}`` and joined; a member larger than that is parsed the
same way, recursively. A comma at its own depth outside strings separates two members in every valid JSON
text, so the pieces parse to exactly what the whole would, and invalid text is refused (by ``orjson`` on a
piece, or here when the brackets do not balance).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from v2server.offload import CHUNK_ELEMENTS

__all__ = ["CHUNK_BYTES", "FlatArray", "discard", "dumps", "loads"]

#: A piece of JSON text parsed in one call: ``orjson`` takes 1-3 ms for 64 KiB of numbers.
CHUNK_BYTES = 64 * 1024

_SCAN_WINDOW = 1 << 20  # bytes scanned per numpy pass: bounded temporaries, a GIL turn between windows
_WHITESPACE = b" \t\n\r"
_COMMA = ord(",")
_OPEN = {ord("["): ord("]"), ord("{"): ord("}")}

# byte -> 0: plain, 1: quote, 2: backslash, 3: opening bracket or brace, 4: closing one
_CLASS = np.zeros(256, np.uint8)
_CLASS[ord('"')] = 1
_CLASS[ord("\\")] = 2
_CLASS[[ord("["), ord("{")]] = 3
_CLASS[[ord("]"), ord("}")]] = 4


def _error(message: str) -> orjson.JSONDecodeError:
    return orjson.JSONDecodeError(message, "", 0)


# --- parsing -----------------------------------------------------------------------------------------------


def loads(body: bytes, end: int | None = None, chunk: int = CHUNK_BYTES, defer: bool = False) -> Any:
    """``orjson.loads(body[:end])``, in pieces of at most about ``chunk`` bytes when the text is larger.

    With ``defer``, a large flat array of numbers (and literals) is left unparsed: it is a
    :class:`FlatArray`, whose length is known at once and whose values come a piece at a time, so a caller
    can check the length first and convert each piece as it comes (a 250 MB array of floats would otherwise
    become 1.5 GB of Python objects before any check).

    Raises:
        orjson.JSONDecodeError: the text is not valid JSON (a :class:`FlatArray`'s text, when it is read).
    """
    end = len(body) if end is None else end
    if end <= chunk:
        return orjson.loads(memoryview(body)[:end])
    start = 0
    while start < end and body[start] in _WHITESPACE:
        start += 1
    while end > start and body[end - 1] in _WHITESPACE:
        end -= 1
    if start == end or body[start] not in _OPEN:
        return orjson.loads(memoryview(body)[start:end])  # one scalar (a long string): one copy, no pieces
    return _Parser(body, end, chunk, defer).value(start, end)


class FlatArray:
    """A large JSON array without strings or nested arrays or objects, not parsed yet (see :func:`loads`).

    ``len()`` counts its commas (numpy, no parse); :meth:`pieces` parses it a piece at a time;
    :meth:`tolist` is what ``orjson.loads`` would have given.
    """

    def __init__(self, parser: _Parser, start: int, end: int) -> None:
        self._parser = parser
        self._start = start  # the opening bracket
        self._end = end  # past the closing bracket
        self._length: int | None = None

    def __len__(self) -> int:
        if self._length is None:
            inside = self._end - self._start - 2  # between the brackets
            data = np.frombuffer(self._parser.body, np.uint8, count=inside, offset=self._start + 1)
            commas = sum(
                int(np.count_nonzero(data[at : at + _SCAN_WINDOW] == _COMMA)) for at in range(0, len(data), _SCAN_WINDOW)
            )
            empty = not commas and not bytes(data).strip(_WHITESPACE)
            self._length = 0 if empty else commas + 1
        return self._length

    def pieces(self) -> Any:
        """The values, as lists of consecutive elements of at most about ``chunk`` bytes of text each."""
        body = self._parser.body
        none = np.empty(0, np.int64)
        for start, end, single in _Members(self._parser, self._start + 1, self._end - 1, none, none):
            yield [orjson.loads(body[start:end])] if single else orjson.loads(b"[" + body[start:end] + b"]")

    def tolist(self) -> list[Any]:
        items: list[Any] = []
        for piece in self.pieces():
            items.extend(piece)
        return items


class _Parser:
    """The structure of one JSON text (quotes, brackets, depths) and the piecewise parse over it."""

    def __init__(self, body: bytes, end: int, chunk: int, defer: bool = False) -> None:
        self.body = body
        self.chunk = chunk
        self.defer = defer
        quotes, backslashes, marks = _scan(body, end)
        self.quotes = _unescaped(quotes, backslashes)  # string i spans quotes[2i] .. quotes[2i + 1]
        if len(self.quotes) % 2:
            raise _error("a string is not terminated")
        outside = np.searchsorted(self.quotes, marks) % 2 == 0
        self.marks = marks[outside]
        codes = np.frombuffer(body, np.uint8, count=end)[self.marks]
        opening = _CLASS[codes] == 3
        self.depth = np.cumsum(np.where(opening, 1, -1), dtype=np.int64)  # depth after each mark
        self.opening = opening
        if len(self.depth) and (self.depth.min() < 0 or self.depth[-1] != 0):
            raise _error("brackets and braces do not balance")

    def value(self, start: int, end: int) -> Any:
        """The JSON value that ``body[start:end]`` (without surrounding whitespace) holds."""
        body = self.body
        if end - start <= self.chunk or body[start] not in _OPEN:
            return orjson.loads(memoryview(body)[start:end])
        first = int(np.searchsorted(self.marks, start))
        last = int(np.searchsorted(self.marks, end - 1))
        if first >= len(self.marks) or int(self.marks[first]) != start:
            raise _error("brackets and braces do not match")
        depth = int(self.depth[first])
        if (
            last >= len(self.marks)
            or int(self.marks[last]) != end - 1
            or int(self.depth[last]) != depth - 1
            or body[end - 1] != _OPEN[body[start]]
            or (last > first + 1 and int(self.depth[first + 1 : last].min()) < depth)
        ):
            raise _error("brackets and braces do not match")
        if self.defer and body[start] == ord("[") and last == first + 1 and self._no_string(start, end):
            return FlatArray(self, start, end)
        inner = slice(first + 1, last)
        marks, opening, depths = self.marks[inner], self.opening[inner], self.depth[inner]
        opens = marks[opening & (depths == depth + 1)]  # where this container's own children start
        closes = marks[~opening & (depths == depth)]  # and end
        members = _Members(self, start + 1, end - 1, opens, closes)
        if body[start] == ord("["):
            items: list[Any] = []
            for piece_start, piece_end, single in members:
                if single:
                    items.append(self.value(piece_start, piece_end))
                else:
                    items.extend(orjson.loads(b"[" + body[piece_start:piece_end] + b"]"))
            return items
        fields: dict[str, Any] = {}
        for piece_start, piece_end, single in members:
            if single:
                key, value_start = self._key(piece_start, piece_end)
                fields[key] = self.value(value_start, piece_end)
            else:
                fields.update(orjson.loads(b"{" + body[piece_start:piece_end] + b"}"))
        return fields

    def _no_string(self, start: int, end: int) -> bool:
        index = int(np.searchsorted(self.quotes, start))
        return index == len(self.quotes) or int(self.quotes[index]) > end

    def _key(self, start: int, end: int) -> tuple[str, int]:
        """An object member ``"key": value`` too large for one piece: its key and where its value starts."""
        body = self.body
        index = int(np.searchsorted(self.quotes, start))
        if body[start] != ord('"') or index + 1 >= len(self.quotes) or int(self.quotes[index]) != start:
            raise _error("an object member does not start with a key")
        close = int(self.quotes[index + 1])
        key = orjson.loads(body[start : close + 1])
        colon = close + 1
        while colon < end and body[colon] in _WHITESPACE:
            colon += 1
        if colon >= end or body[colon] != ord(":"):
            raise _error("an object key is not followed by ':'")
        value_start = colon + 1
        while value_start < end and body[value_start] in _WHITESPACE:
            value_start += 1
        return key, value_start


class _Members:
    """The members of one large array or object, as pieces ``(start, end, single)``.

    A piece is a run of whole members (``single`` False: parse ``[run]`` or ``{run}``) of at most ``chunk``
    bytes, or one member larger than that (``single`` True, whitespace stripped: parse it recursively).
    ``opens`` and ``closes`` are where the container's own children containers start and end.
    """

    def __init__(self, parser: _Parser, start: int, end: int, opens: np.ndarray, closes: np.ndarray) -> None:
        self.parser = parser
        self.start = start
        self.end = end
        self.opens = opens
        self.closes = closes

    def __iter__(self) -> Any:
        body, chunk = self.parser.body, self.parser.chunk
        position, end = self.start, self.end
        while position < end and body[position] in _WHITESPACE:
            position += 1
        if position == end:
            return  # an empty container (only whitespace inside)
        while True:
            if end - position <= chunk:
                yield self._piece(position, end)
                return
            cut = self._separator_before(position, position + chunk)
            if cut is None:  # the member at ``position`` alone is larger than a piece
                cut = self._separator_after(position)
                stop = end if cut is None else cut
                while stop > position and body[stop - 1] in _WHITESPACE:
                    stop -= 1
                yield position, stop, True
            else:
                yield self._piece(position, cut)
            if cut is None:
                return
            position = cut + 1
            while position < end and body[position] in _WHITESPACE:
                position += 1
            if position == end:
                raise _error("a trailing comma")

    def _piece(self, start: int, end: int) -> tuple[int, int, bool]:
        if not self.parser.body[start:end].strip(_WHITESPACE):
            raise _error("an empty member between commas")
        return start, end, False

    def _separator_before(self, position: int, limit: int) -> int | None:
        """The last comma of this container's own depth in ``(position, limit]``, or None."""
        body = self.parser.body
        at = body.rfind(b",", position, limit + 1)
        while at > position:
            skip = self._skip(at)
            if skip is None:
                return at
            at = body.rfind(b",", position, skip)
        return None

    def _separator_after(self, position: int) -> int | None:
        """The first comma of this container's own depth after ``position``, or None (the last member)."""
        body = self.parser.body
        at = body.find(b",", position, self.end)
        while at != -1:
            skip = self._skip(at)
            if skip is None:
                return at
            after = self._end_of(at)
            at = body.find(b",", after, self.end)
        return None

    def _skip(self, comma: int) -> int | None:
        """None when ``comma`` separates this container's members; else where the child container or string
        that holds it starts."""
        child = int(np.searchsorted(self.opens, comma)) - 1
        if child >= 0 and comma < int(self.closes[child]):
            return int(self.opens[child])
        quotes = self.parser.quotes
        index = int(np.searchsorted(quotes, comma))
        if index % 2:
            return int(quotes[index - 1])
        return None

    def _end_of(self, comma: int) -> int:
        """Where the child container or string holding ``comma`` ends (past its last byte)."""
        child = int(np.searchsorted(self.opens, comma)) - 1
        if child >= 0 and comma < int(self.closes[child]):
            return int(self.closes[child]) + 1
        quotes = self.parser.quotes
        return int(quotes[int(np.searchsorted(quotes, comma))]) + 1


def _scan(body: bytes, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of every quote, backslash and bracket or brace in ``body[:end]`` (numpy, window by window)."""
    data = np.frombuffer(body, np.uint8, count=end)
    found: list[tuple[np.ndarray, np.ndarray]] = []
    for offset in range(0, end, _SCAN_WINDOW):
        classes = _CLASS[data[offset : offset + _SCAN_WINDOW]]
        where = np.flatnonzero(classes)
        found.append((where + offset, classes[where]))
    positions = np.concatenate([p for p, _ in found])
    classes = np.concatenate([c for _, c in found])
    return positions[classes == 1], positions[classes == 2], positions[classes >= 3]


def _unescaped(quotes: np.ndarray, backslashes: np.ndarray) -> np.ndarray:
    """The quotes not escaped: those not preceded by an odd run of backslashes."""
    if not len(backslashes) or not len(quotes):
        return quotes
    run_starts = np.ones(len(backslashes), bool)
    run_starts[1:] = np.diff(backslashes) != 1
    run_of = np.cumsum(run_starts) - 1  # each backslash's run
    start_of_run = backslashes[run_starts]
    before = quotes - 1
    index = np.minimum(np.searchsorted(backslashes, before), len(backslashes) - 1)
    preceded = backslashes[index] == before
    run_length = before - start_of_run[run_of[index]] + 1
    return quotes[~(preceded & (run_length % 2 == 1))]


def discard(value: Any, chunk: int = CHUNK_ELEMENTS) -> None:
    """Empty the large lists of a parsed document (and of dicts in it) a piece at a time.

    Freeing a list is one C loop that holds the GIL: 60 million floats take most of a second, stalling the
    event loop from whichever thread drops the last reference (an exception's traceback can carry a worker's
    document to the loop). A worker calls this when it is done with a large document, so the freeing
    happens there in steps of about ``chunk`` values. The lists are emptied: nothing may use them after.
    """
    if isinstance(value, dict):
        for item in value.values():
            discard(item, chunk)
    elif isinstance(value, list) and _weight(value) > chunk:
        step = max(1, chunk // max(1, _weight(value[0])))
        while value:
            if step == 1:
                discard(value[-1], chunk)
            del value[-step:]


# --- rendering ---------------------------------------------------------------------------------------------


def dumps(value: Any, option: int = 0, chunk: int = CHUNK_ELEMENTS) -> bytes:
    """``orjson.dumps(value, option=option)``, rendering arrays, lists and objects of more than ``chunk``
    values piece by piece."""
    if _weight(value) <= chunk:
        return orjson.dumps(value, option=option)
    parts: list[bytes] = []
    _render(value, option, chunk, parts)
    return b"".join(parts)


def _render(value: Any, option: int, chunk: int, parts: list[bytes]) -> None:
    if _weight(value) <= chunk:
        parts.append(orjson.dumps(value, option=option))
    elif isinstance(value, dict):
        parts.append(b"{")
        for index, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                raise orjson.JSONEncodeError("Dict key must be str")
            parts.append(b"," + orjson.dumps(key) + b":" if index else orjson.dumps(key) + b":")
            _render(item, option, chunk, parts)
        parts.append(b"}")
    else:  # a large list, tuple or array
        parts.append(b"[")
        per_item = max(1, _weight(value[0]))
        step = max(1, chunk // per_item)
        for start in range(0, len(value), step):
            if start:
                parts.append(b",")
            group = value[start : start + step]
            if step == 1:
                _render(group[0], option, chunk, parts)
            else:
                parts.append(orjson.dumps(group, option=option)[1:-1])
        parts.append(b"]")


def _weight(value: Any) -> int:
    """About how many values ``value`` holds (a list is taken to hold items like its first)."""
    if isinstance(value, np.ndarray):
        return int(value.size)
    if isinstance(value, dict):
        return len(value) + sum(map(_weight, value.values()))
    if isinstance(value, (list, tuple)):
        if not value:
            return 1
        first = value[0]
        if isinstance(first, dict):
            return sum(map(_weight, value))
        if isinstance(first, (list, tuple, np.ndarray)):
            return len(value) * max(1, _weight(first))
        return len(value)
    return 1
