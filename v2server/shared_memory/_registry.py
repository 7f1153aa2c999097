"""The registered regions, system and CUDA, in one namespace (as in Triton), bounded in number.

Triton's rules, which tritonclient and Triton's examples depend on: registering a name that is taken (by either
kind) is ALREADY_EXISTS; the status of an unknown name, or of a name of the other kind, is NOT_FOUND;
unregistering a name that is not registered (or is of the other kind) succeeds, and so does unregistering all
when there is nothing to unregister (the examples start by doing both). Unregistering takes the name off at
once and retires the region: requests that hold it finish on it (see ``_region``).
"""

from __future__ import annotations

import threading
import unicodedata
from typing import TypeVar

from v2server.errors import AlreadyExists, InvalidRequest, NotFound, QueueFull, Unsupported
from v2server.names import MAX_NAME_BYTES
from v2server.shared_memory._cuda import CudaRegion
from v2server.shared_memory._region import Kind, Region
from v2server.shared_memory._system import SystemRegion

__all__ = ["DEFAULT_MAX_REGIONS", "SharedMemoryRegistry"]

#: the default of --max-shm-regions: every region holds a file descriptor and a mapping (or a CUDA handle)
DEFAULT_MAX_REGIONS = 1024

_KIND_TEXT = {"system": "system", "cuda": "CUDA"}

_R = TypeVar("_R", bound=Region)


class SharedMemoryRegistry:
    """Regions by name. ``max_regions`` bounds how many are registered at once; with ``allowed`` false every
    registration and every tensor in shared memory is refused (``--allow-client-shm=false``)."""

    def __init__(self, max_regions: int = DEFAULT_MAX_REGIONS, allowed: bool = True) -> None:
        self.max_regions = max_regions
        self.allowed = allowed
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._regions)

    # -- registration ----------------------------------------------------------------------------------------

    def register_system(self, name: str, key: str, offset: int, byte_size: int) -> SystemRegion:
        """Map ``byte_size`` bytes at ``offset`` of the segment ``key`` as region ``name``."""
        self._check_new(name, "system")
        return self._add(SystemRegion(name, key, offset, byte_size))

    def register_cuda(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> CudaRegion:
        """Open the device memory behind ``raw_handle`` as region ``name`` (blocking CUDA calls)."""
        self._check_new(name, "cuda")
        return self._add(CudaRegion(name, raw_handle, device_id, byte_size))

    def _check_new(self, name: str, kind: Kind) -> None:
        """The checks before a region is opened (cheap, so a refused registration costs no system call)."""
        if not self.allowed:
            raise Unsupported(
                f"failed to register {_KIND_TEXT[kind]} shared memory region '{name}': client shared memory is "
                "disabled on this server (--allow-client-shm=false)"
            )
        _check_region_name(name)
        with self._lock:
            self._check_free(name)

    def _check_free(self, name: str) -> None:
        if name in self._regions:
            raise AlreadyExists(f"shared memory region '{name}' already in manager")
        if len(self._regions) >= self.max_regions:
            raise QueueFull(
                f"failed to register shared memory region '{name}': {len(self._regions)} regions are registered, "
                f"the most this server allows (--max-shm-regions); unregister some first"
            )

    def _add(self, region: _R) -> _R:
        with self._lock:
            try:
                self._check_free(region.name)  # a registration of the same name may have won meanwhile
            except BaseException:
                region.retire()
                raise
            self._regions[region.name] = region
        return region

    # -- status and unregistration ---------------------------------------------------------------------------

    def status(self, kind: Kind, name: str = "") -> list[Region]:
        """Every region of ``kind``, or the one named (NOT_FOUND when unknown or of the other kind)."""
        with self._lock:
            if not name:
                return [region for region in self._regions.values() if region.kind == kind]
            region = self._regions.get(name)
        if region is None:
            raise NotFound(f"Unable to find {_KIND_TEXT[kind]} shared memory region: '{name}'")
        if region.kind != kind:
            other = _KIND_TEXT[region.kind]
            raise NotFound(
                f"The region named '{name}' is registered as {other} shared memory, not "
                f"{_KIND_TEXT[kind]} shared memory"
            )
        return [region]

    def unregister(self, kind: Kind, name: str = "") -> None:
        """Unregister region ``name`` of ``kind``, or every region of ``kind``; unknown names are no error."""
        with self._lock:
            names = [name] if name else list(self._regions)
            retired = [self._regions.pop(n) for n in names if n in self._regions and self._regions[n].kind == kind]
        for region in retired:
            region.retire()

    def close(self) -> None:
        """Unregister everything (the server is stopping)."""
        self.unregister("system")
        self.unregister("cuda")

    # -- requests --------------------------------------------------------------------------------------------

    def lease(self, name: str) -> Region:
        """Region ``name`` with a lease taken for one request (``release`` it when the request ends)."""
        if not self.allowed:
            raise Unsupported("client shared memory is disabled on this server (--allow-client-shm=false)")
        with self._lock:
            region = self._regions.get(name)
        if region is None:
            raise NotFound(f"Unable to find shared memory region: '{name}'")
        region.acquire()
        return region


def _check_region_name(name: str) -> None:
    """A region name is only a key in our table and in URLs, but it appears in logs and error messages."""
    problem = None
    if not name:
        problem = "must not be empty"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        problem = f"must be at most {MAX_NAME_BYTES} bytes long"
    elif any(unicodedata.category(char) == "Cc" for char in name):
        problem = "must not contain NUL or other control characters"
    if problem is not None:
        raise InvalidRequest(f"invalid shared memory region name {name[:64]!r}: a region name {problem}")

