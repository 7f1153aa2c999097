"""glibc's allocator, told to keep freed memory: large tensors otherwise cost page faults on every request.

Every request with a large tensor allocates and frees buffers of its size (the request bytes, the response
message, its serialised form). glibc serves allocations over 128 KiB-32 MiB with fresh ``mmap`` pages and hands
freed heap back to the OS, so each request touches new pages, and a page fault costs microseconds (more in a VM):
the benchmark measured 1.3 ms to build and serialise a 1 MiB response, 0.2 ms with the settings below. The price
is memory kept for reuse: up to ``TRIM_THRESHOLD`` of freed heap stays mapped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to this come from the heap, which is reused
TRIM_THRESHOLD = 256 << 20  # free heap beyond this goes back to the OS
_TOP_PAD = 16 << 20  # grow the heap in steps of at least this

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # <malloc.h>


def keep_freed_memory() -> bool:
    """Apply the settings where the C library is glibc; returns whether it did."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl (Alpine) has no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    applied = all(
        mallopt(option, value)
        for option, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD)
        )
    )
    if not applied:
        log.debug("mallopt refused the allocator settings")
    return applied
