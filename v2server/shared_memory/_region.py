"""A registered region's common part: its bounds and the leases that keep it open while requests use it.

Unregistering must never pull memory from under a request that is reading its inputs from a region or
writing its outputs into one (an unmapped page is a crash, not an error). So a request *leases* every region it
names for its whole duration; unregistering *retires* the region (no new lease is granted, the name is free
again at once) and the memory is released when the last lease ends. A request that arrives after the
unregister does not find the region, and gets a clear error.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import numpy as np

from v2server.errors import InvalidRequest, NotFound

__all__ = ["Kind", "Region"]

Kind = Literal["system", "cuda"]


class Region(ABC):
    """One registered region of ``byte_size`` bytes; subclasses say how its bytes are read and written.

    Offsets given to :meth:`read` and :meth:`write` are relative to the region's start and must have been
    checked with :meth:`check_span` (the request-side code does so before any work).
    """

    kind: ClassVar[Kind]

    def __init__(self, name: str, byte_size: int) -> None:
        self.name = name
        self.byte_size = byte_size
        self._leases = 0
        self._retired = False
        self._closed = False
        self._lock = threading.Lock()

    # -- leases ----------------------------------------------------------------------------------------------

    def acquire(self) -> None:
        """Take a lease for one request (refused once the region is retired)."""
        with self._lock:
            if self._retired:
                raise NotFound(f"Unable to find shared memory region: '{self.name}' (it was unregistered)")
            self._leases += 1
        try:
            self.check_usable()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """End one lease; the last one of a retired region releases its memory."""
        with self._lock:
            self._leases -= 1
            close = self._retired and self._leases == 0 and not self._closed
            self._closed = self._closed or close
        if close:
            self._close()

    def retire(self) -> None:
        """Unregistered: no new lease; the memory goes now, or when the last lease ends."""
        with self._lock:
            self._retired = True
            close = self._leases == 0 and not self._closed
            self._closed = self._closed or close
        if close:
            self._close()

    @property
    def leases(self) -> int:
        return self._leases

    @property
    def closed(self) -> bool:
        return self._closed

    # -- bounds ----------------------------------------------------------------------------------------------

    def check_span(self, offset: int, byte_size: int) -> None:
        """Triton's bounds check of a tensor's ``[offset, offset + byte_size)`` against this region."""
        if offset < 0 or byte_size < 0:
            raise InvalidRequest(
                f"Invalid offset + byte size for shared memory region: '{self.name}' "
                "(offset and byte size must not be negative)"
            )
        if offset >= self.byte_size and (offset or byte_size):
            raise InvalidRequest(
                f"Invalid offset for shared memory region: '{self.name}' "
                f"(offset {offset}, the region has {self.byte_size} bytes)"
            )
        if offset + byte_size > self.byte_size:
            raise InvalidRequest(
                f"Invalid offset + byte size for shared memory region: '{self.name}' "
                f"(offset {offset} + byte size {byte_size} > the region's {self.byte_size} bytes)"
            )

    # -- what each kind does ---------------------------------------------------------------------------------

    def check_usable(self) -> None:
        """Raise when the memory behind the region can no longer be used (called with each new lease)."""

    @property
    def zero_copy(self) -> bool:
        """Whether :meth:`read` returns a view of the region itself (no copy, no device transfer)."""
        return False

    @abstractmethod
    def read(self, offset: int, byte_size: int) -> np.ndarray:
        """The bytes ``[offset, offset + byte_size)`` as a 1-D ``uint8`` array on the host."""

    @abstractmethod
    def write(self, offset: int, data: np.ndarray) -> None:
        """Copy ``data`` (1-D ``uint8``) to ``offset``; visible to the client when this returns."""

    @abstractmethod
    def _close(self) -> None:
        """Release the memory (called once, when retired and no lease is left)."""
