"""System shared memory: a client's POSIX segment under ``/dev/shm``, opened by key and mapped.

The key is client input that reaches the file system, so it must name one plain file directly under
``/dev/shm`` (design rule 14; ``names.check_file_name``): leading slashes are dropped as ``shm_open`` drops
them (tritonclient's keys look like ``/input_simple``), and what remains may not hold another ``/``, be ``..``,
hold NUL or control characters, or be longer than a file name. The file is opened with ``O_NOFOLLOW`` (a
symbolic link planted in ``/dev/shm`` does not lead elsewhere) and must be a regular file.

The segment is the client's: the server maps it and never unlinks it. We do not use
``multiprocessing.shared_memory``: before Python 3.13 its resource tracker unlinks a segment that a process
merely attached to, when that process closes it.

A client can shrink its segment after registering it; touching a mapped page past the end of a file is a
SIGBUS, which would kill the server. So the descriptor stays open and each new lease checks the file size
against the registered span first (:meth:`SystemRegion.check_usable`).
"""

from __future__ import annotations

import mmap
import os
import stat

import numpy as np

from v2server.errors import InvalidRequest
from v2server.names import check_file_name
from v2server.shared_memory._region import Region

__all__ = ["SHM_ROOT", "SystemRegion", "segment_file_name"]

#: where POSIX shared memory segments live on Linux (``shm_open`` opens files here)
SHM_ROOT = "/dev/shm"


def segment_file_name(key: str) -> str:
    """The file under ``/dev/shm`` that ``key`` names; ``InvalidRequest`` when it is not one plain file name."""
    return check_file_name(key.lstrip("/"), "shared memory key")


class SystemRegion(Region):
    """``byte_size`` bytes at ``offset`` in the segment ``key``, mapped read-write."""

    kind = "system"

    def __init__(self, name: str, key: str, offset: int, byte_size: int, root: str = SHM_ROOT) -> None:
        """Open and map the segment (``root`` is ``/dev/shm``; tests may point it elsewhere).

        Raises:
            InvalidRequest: a hostile or unknown key, or a span outside the segment (Triton's texts).
        """
        super().__init__(name, byte_size)
        self.key = key
        self.offset = offset
        path = os.path.join(root, segment_file_name(key))
        if offset < 0 or byte_size <= 0:
            raise InvalidRequest(
                f"failed to register shared memory region '{name}': invalid args "
                f"(offset must be >= 0 and byte_size > 0, got offset {offset} and byte_size {byte_size})"
            )
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidRequest(f"Unable to open shared memory region: '{key}' ({exc.strerror})") from None
        try:
            info = os.fstat(self._fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidRequest(f"Unable to open shared memory region: '{key}' (not a shared memory segment)")
            if offset + byte_size > info.st_size:
                raise InvalidRequest(
                    f"failed to register shared memory region '{name}': invalid args (offset {offset} + byte_size "
                    f"{byte_size} is past the end of segment '{key}', which has {info.st_size} bytes)"
                )
            # mmap's offset must be a multiple of the allocation granularity: map from the page below it
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            self._map = mmap.mmap(self._fd, offset + byte_size - start, offset=start)
            self._base = offset - start
        except BaseException:
            os.close(self._fd)
            raise

    def check_usable(self) -> None:
        size = os.fstat(self._fd).st_size
        if self.offset + self.byte_size > size:
            raise InvalidRequest(
                f"shared memory region '{self.name}': its segment '{self.key}' shrank to {size} bytes since it "
                f"was registered (offset {self.offset} + byte_size {self.byte_size})"
            )

    @property
    def zero_copy(self) -> bool:
        return True

    def read(self, offset: int, byte_size: int) -> np.ndarray:
        """A view of the mapped bytes (no copy); it keeps the mapping alive for as long as it lives."""
        return np.frombuffer(self._map, dtype=np.uint8, count=byte_size, offset=self._base + offset)

    def write(self, offset: int, data: np.ndarray) -> None:
        np.frombuffer(self._map, dtype=np.uint8, count=data.size, offset=self._base + offset)[:] = data

    def _close(self) -> None:
        try:
            self._map.close()
        except BufferError:
            pass  # a view still lives (a model kept its input): the mapping goes with the last view
        finally:
            os.close(self._fd)
