"""glibc's allocator: keep freed memory while requests reuse it, give it back once a burst is over.

Every request with a large tensor allocates and frees buffers of its size (the request bytes, the response
message, its serialised form). Left to itself, glibc serves blocks over 128 KiB with fresh ``mmap`` pages and
trims freed heap eagerly, so each request touches new pages, and a page fault costs microseconds (more in a VM):
the benchmark measured 1.3 ms to build and serialise a 1 MiB response, 0.2 ms when the heap keeps them. So
blocks up to ``MMAP_THRESHOLD`` (32 MiB) come from the heap, and up to ``TRIM_THRESHOLD`` (256 MiB) of free
heap top stays mapped while the server works. Both are needed for the sizes clients send: measured with 16 MiB
requests, a 4 MiB mmap threshold costs 42,000 page faults and 4x the CPU per request, and a trim threshold of
32 or 128 MiB still 12,000-41,000 faults (one request frees more than that at the heap's top).

Keeping, though, must not mean keeping forever. After 20 concurrent 16 MiB requests those settings alone left a
server at 0.8-1.5 GiB where it had idled at 270 MiB: free chunks stranded inside the heaps (a live block above
them stops a heap's top from shrinking) and the tops of the per-thread arenas (glibc makes up to 8 per core).
Two more parts bound that:

- :class:`IdleTrimmer`, on its own thread, calls ``malloc_trim(0)``, the only call that returns free pages
  *inside* the heaps, once the resident size is more than ``RETAIN`` (64 MiB) above the lowest of the last
  minute and has stopped growing (polled every second): after a burst, not during one. Trims are at least
  ``MIN_TRIM_INTERVAL`` apart, and a trim that returned nothing is not repeated until the process has grown
  again, so steady load costs at most one refault of what a trim gave back per interval.
- ``ARENA_MAX`` (2: the event loop's main arena and one shared by every other thread). ``malloc_trim`` can
  give back the free top of the main heap but not of a thread arena's heap (glibc only shrinks those from
  ``free`` when their top passes the trim threshold, which a 64 MiB arena heap never does), so each thread
  arena may keep up to a heap (64 MiB) that never comes back. Python allocates under the GIL, so few threads
  allocate at once; with 2 arenas the CPU per request measured the same as with glibc's default (small and
  1 MiB requests, gRPC and REST, concurrency 4).

Measured on 2 CPUs (20 concurrent 16 MiB ``simple_identity`` requests over REST, then over gRPC, twice): idle
at 270 MiB before, 0.84-1.52 GiB after each burst with the old settings, 0.30-0.37 GiB with these.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = [
    "ARENA_MAX",
    "MIN_TRIM_INTERVAL",
    "MMAP_THRESHOLD",
    "RETAIN",
    "TRIM_THRESHOLD",
    "IdleTrimmer",
    "keep_freed_memory",
    "release_free_memory",
    "resident_bytes",
    "start_trimmer",
]

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to this come from the heap, which is reused
TRIM_THRESHOLD = 256 << 20  # free heap top beyond this goes back to the OS at once
_TOP_PAD = 16 << 20  # grow the heap in steps of at least this
ARENA_MAX = 2  # the main arena and one for every other thread: each arena may keep one heap's top
RETAIN = 64 << 20  # resident growth over the last minute's low that the trimmer lets stay
MIN_TRIM_INTERVAL = 5.0  # seconds between two trims, at least
_POLL_SECONDS = 1.0
_WINDOW_POLLS = 60  # the idle level is the lowest resident size of the last minute of polls
_REGROWTH = 16 << 20  # after a trim, growth that makes another one worth trying

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8  # <malloc.h>

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_trimmer: IdleTrimmer | None = None
_trimmer_lock = threading.Lock()


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # musl (Alpine) has neither mallopt nor malloc_trim
        return None
    return libc


def keep_freed_memory(trim_when_idle: bool = True) -> bool:
    """Apply the settings where the C library is glibc and start the process's :class:`IdleTrimmer` (once).

    Call it before the server starts its threads (an arena, once made, stays). Returns whether glibc took
    the settings.
    """
    libc = _glibc()
    if libc is None:
        return False
    applied = all(
        libc.mallopt(option, value)
        for option, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_TOP_PAD, _TOP_PAD),
            (_M_ARENA_MAX, ARENA_MAX),
        )
    )
    if not applied:
        log.debug("mallopt refused the allocator settings")
    if trim_when_idle:
        start_trimmer()
    return applied


def release_free_memory() -> bool:
    """``malloc_trim(0)``: give the heaps' free pages back to the OS; returns whether any were (glibc only)."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def resident_bytes() -> int:
    """This process's resident set size (``/proc/self/statm``); 0 where there is no such file."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


class IdleTrimmer:
    """When to trim, decided from the resident size at each poll; :meth:`poll` is the whole decision.

    A poll trims when the resident size

    - is more than ``retain`` above the lowest of the last ``window`` polls (the level before the burst),
    - has not grown since the previous poll (the burst is over, or paused),
    - and, if there was a trim before, is ``regrowth`` above what that trim left (a trim that could not get
      below the line is not repeated for nothing: what is left is in use, such as a model loaded meanwhile,
      and stops counting once the window has moved past the lower readings);

    and ``min_interval`` seconds have passed since the last trim.
    """

    def __init__(
        self,
        trim: Callable[[], object] = release_free_memory,
        resident: Callable[[], int] = resident_bytes,
        retain: int = RETAIN,
        min_interval: float = MIN_TRIM_INTERVAL,
        window: int = _WINDOW_POLLS,
        regrowth: int = _REGROWTH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._trim, self._resident, self._clock = trim, resident, clock
        self.retain, self.min_interval, self.regrowth = retain, min_interval, regrowth
        self._history: deque[int] = deque(maxlen=window)
        self._last_trim = float("-inf")
        self._left: int | None = None  # resident size the last trim left
        self.trims = 0

    def poll(self) -> bool:
        """One look at the resident size; trims when the rule says so. Returns whether it trimmed."""
        resident = self._resident()
        history = self._history
        growing = not history or resident > history[-1]
        low = min(history, default=resident)
        history.append(resident)
        if growing or resident - low <= self.retain:
            return False
        if self._left is not None and resident - self._left < self.regrowth:
            return False
        now = self._clock()
        if now - self._last_trim < self.min_interval:
            return False
        self._trim()
        self._last_trim = now
        self.trims += 1
        self._left = history[-1] = self._resident()
        log.debug("malloc_trim: resident %d -> %d MiB (low %d MiB)", resident >> 20, self._left >> 20, low >> 20)
        return True

    def run(self, stop: threading.Event, every: float = _POLL_SECONDS) -> None:
        """Poll every ``every`` seconds until ``stop`` is set (the trimmer thread's body)."""
        while not stop.wait(every):
            try:
                self.poll()
            except Exception:  # never take the process down over memory accounting
                log.exception("idle memory trim failed; the trimmer stops")
                return


def start_trimmer() -> bool:
    """Start the process's trimmer thread, once, where glibc and ``/proc`` are; returns whether one runs."""
    global _trimmer
    with _trimmer_lock:
        if _trimmer is None and _glibc() is not None and resident_bytes() > 0:
            _trimmer = IdleTrimmer()
            _spawn(_trimmer)
        return _trimmer is not None


def _spawn(trimmer: IdleTrimmer) -> None:
    """The trimmer's thread: a daemon, it ends with the process."""
    threading.Thread(target=trimmer.run, args=(threading.Event(),), name="v2server-malloc-trim", daemon=True).start()
