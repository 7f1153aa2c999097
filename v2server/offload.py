"""Work proportional to a request's size, off the event loop when it is large (design rule 13).

One asyncio loop serves every client, the health probes included, so a step that takes seconds on a large
body (inflating it, parsing or rendering its JSON, converting its values, compressing the answer) stalls all
of them. :func:`run_sized` runs such a step inline when it is small and in a worker thread when it is large.

A worker thread gives the loop its turns only while the worker releases the GIL (zlib and numpy's loops do)
or runs Python code (the interpreter hands the GIL over every ``sys.getswitchinterval()``, 5 ms). A single C
call that holds the GIL (``orjson.loads`` of 250 MB: seconds; freeing a list of 60 million floats: most of
a second; a garbage collection over a large body's rows: 100 ms) would stall the loop from any thread, so the
large-body code paths also cut their work into bounded calls (:data:`CHUNK_ELEMENTS`, ``chunked_json``),
free what they built in steps before they return, and a worker runs with collections paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import gc
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from v2server.errors import V2Error

__all__ = ["CHUNK_ELEMENTS", "COPY_DISCOUNT", "INLINE_BYTES", "run_in_worker", "run_sized"]

#: Work on at most this many bytes runs inline. Moving a step to a thread and back costs about 100 us; JSON,
#: zlib and numpy get through 64 KiB in well under a millisecond, so below this the hop costs more than the
#: stall it would avoid, and above it the stall grows with the body while the hop stays the same.
INLINE_BYTES = 64 * 1024

#: Bytes that are only copied (binary tensors: joined, sliced, written) cost about this many times less than bytes
#: that are parsed or printed (JSON numbers, inflating), so they count as this many times less work: copying a
#: 1 MiB binary tensor costs less than sending it to a thread and back (with a GIL hand-off each way):
#: ``make bench``, ``identity-1mib`` over REST binary (docs/benchmark.md).
COPY_DISCOUNT = 64

#: One C call (orjson, numpy list conversion, a type scan) handles at most this many values at a time, so a
#: worker thread returns to the interpreter, and the loop can take the GIL, every few milliseconds.
CHUNK_ELEMENTS = 64 * 1024

_P = ParamSpec("_P")
_T = TypeVar("_T")

_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """A small pool of its own: large requests wait for a worker here rather than take every thread of the
    loop's default executor (and its memory grows with the requests being converted at once, not with all
    requests in flight)."""
    global _executor
    if _executor is None:
        workers = min(4, os.cpu_count() or 1)
        _executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="v2server-offload")
    return _executor


async def run_sized(size: int, function: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``function(*args, **kwargs)``: inline when ``size`` (the bytes it works on) is at most
    :data:`INLINE_BYTES`, else in a worker thread, awaited (with the caller's context variables)."""
    if size <= INLINE_BYTES:
        return function(*args, **kwargs)
    return await run_in_worker(function, *args, **kwargs)


async def run_in_worker(function: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``function(*args, **kwargs)`` in a worker thread of the offload pool, awaited (for callers that judge
    the size in their own units, such as per-element steps)."""
    call = functools.partial(contextvars.copy_context().run, _in_worker, function, args, kwargs)
    return await asyncio.get_running_loop().run_in_executor(_pool(), call)


def _in_worker(function: Callable[..., _T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> _T:
    try:
        with _no_collections():
            return function(*args, **kwargs)
    except V2Error as exc:
        # Our errors say in their message what is wrong. Their traceback would carry the worker's frames, and
        # with them the body and the parsed document, to the event loop, to be freed there (250 MB: 50 ms).
        exc.__context__ = exc.__cause__ = None
        raise exc.with_traceback(None) from None


_paused = 0  # workers running with collections paused
_was_enabled = False
_paused_lock = threading.Lock()


@contextlib.contextmanager
def _no_collections() -> Iterator[None]:
    """No cyclic garbage collection while a worker builds a large request's objects.

    A collection runs in whichever thread allocates when it falls due and holds the GIL throughout: it walks
    every container, and the rows of a large body are hundreds of thousands of them (100,000 ``/v1`` rows:
    100 ms, the event loop stalled for all of it). Those objects are acyclic and go by reference counting,
    so a collection has nothing to find in them; while any worker runs, collections wait (for every thread:
    the switch is the interpreter's), and they resume, as they were, when the last one is done.
    """
    global _paused, _was_enabled
    with _paused_lock:
        if _paused == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _paused_lock:
            _paused -= 1
            if _paused == 0 and _was_enabled:
                gc.enable()
