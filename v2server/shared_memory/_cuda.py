"""CUDA shared memory: device memory another process exported with ``cudaIpcGetMemHandle``.

tritonclient's ``cuda_shared_memory.create_shared_memory_region`` allocates with ``cudaMalloc`` and sends the
64 raw bytes of the ``cudaIpcMemHandle_t``; we open it with ``cudaIpcOpenMemHandle`` from the CUDA runtime
that torch already loaded (through ``ctypes``: no extra dependency), check the claimed size against the
allocation (``cuMemGetAddressRange``: a size larger than the allocation would let a request read or write
past it, and an illegal address poisons the whole CUDA context), and keep a ``uint8`` torch view of it
(``__cuda_array_interface__``, no copy).

Reads and writes are device copies through that view. The model pipeline works on host arrays (the
backends stage inputs to their device themselves), so an input read from a CUDA region comes to the host
once, and an output is copied to the device once; each copy blocks, so callers run them in a worker thread.
A server without a GPU refuses to register a CUDA region with ``InvalidRequest`` (400), as Triton built
without GPU support does.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from v2server.errors import InvalidRequest, V2Error
from v2server.shared_memory._region import Region

__all__ = ["IPC_HANDLE_SIZE", "CudaRegion", "gpu_count"]

#: bytes of a ``cudaIpcMemHandle_t`` (``CUDA_IPC_HANDLE_SIZE``)
IPC_HANDLE_SIZE = 64
_LAZY_ENABLE_PEER_ACCESS = 1  # cudaIpcMemLazyEnablePeerAccess


class _IpcMemHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_char * IPC_HANDLE_SIZE)]


def gpu_count() -> int:
    """GPUs this process can use (0 without CUDA); torch is imported only when asked."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@functools.cache
def _runtime() -> ctypes.CDLL:
    """The CUDA runtime torch uses (already loaded by torch's CUDA initialisation: found by its soname)."""
    import torch

    torch.cuda.init()
    major = (torch.version.cuda or "").split(".")[0]
    names = [f"libcudart.so.{major}", "libcudart.so"] if major else ["libcudart.so"]
    folders = [Path(torch.__file__).parent / "lib"]
    folders += [Path(entry) / "nvidia" / "cuda_runtime" / "lib" for entry in sys.path if entry]
    candidates = names + [str(folder / name) for folder in folders for name in names]
    for candidate in candidates:
        try:
            library = ctypes.CDLL(candidate, mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL)
        except OSError:
            try:
                library = ctypes.CDLL(candidate)
            except OSError:
                continue
        library.cudaIpcOpenMemHandle.argtypes = [ctypes.POINTER(ctypes.c_void_p), _IpcMemHandle, ctypes.c_uint]
        library.cudaIpcOpenMemHandle.restype = ctypes.c_int
        library.cudaIpcCloseMemHandle.argtypes = [ctypes.c_void_p]
        library.cudaIpcCloseMemHandle.restype = ctypes.c_int
        library.cudaGetErrorString.argtypes = [ctypes.c_int]
        library.cudaGetErrorString.restype = ctypes.c_char_p
        return library
    raise V2Error("CUDA shared memory: could not find the CUDA runtime library (libcudart) that torch uses")


@functools.cache
def _driver() -> ctypes.CDLL:
    library = ctypes.CDLL("libcuda.so.1")
    library.cuMemGetAddressRange_v2.argtypes = [
        ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_size_t), ctypes.c_uint64,
    ]
    library.cuMemGetAddressRange_v2.restype = ctypes.c_int
    return library


class _DeviceMemory:
    """Describes device memory to torch (``__cuda_array_interface__``) so it can view it without a copy."""

    def __init__(self, pointer: int, byte_size: int) -> None:
        self.__cuda_array_interface__ = {
            "shape": (byte_size,), "typestr": "|u1", "data": (pointer, False), "strides": None, "version": 2,
        }


class CudaRegion(Region):
    """``byte_size`` bytes of another process's device memory on GPU ``device_id``."""

    kind = "cuda"

    def __init__(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        """Open the IPC handle on ``device_id`` (blocking CUDA calls: run it in a worker thread).

        Raises:
            InvalidRequest: no GPU, an unknown device, a malformed handle, a size beyond the allocation.
        """
        super().__init__(name, byte_size)
        self.device_id = device_id
        where = f"failed to register CUDA shared memory region '{name}'"
        count = gpu_count()
        if count == 0:
            raise InvalidRequest(f"{where}: this server has no GPU (CUDA is not available)")
        if not 0 <= device_id < count:
            raise InvalidRequest(f"{where}: device_id {device_id} is not one of this server's {count} GPUs")
        if len(raw_handle) != IPC_HANDLE_SIZE:
            raise InvalidRequest(
                f"{where}: raw_handle must be the {IPC_HANDLE_SIZE} bytes of a cudaIpcMemHandle_t, "
                f"got {len(raw_handle)}"
            )
        if byte_size <= 0:
            raise InvalidRequest(f"{where}: invalid args (byte_size must be > 0)")
        import torch

        self._device = torch.device("cuda", device_id)
        runtime = _runtime()
        pointer = ctypes.c_void_p()
        with torch.cuda.device(self._device):
            error = runtime.cudaIpcOpenMemHandle(
                ctypes.byref(pointer), _IpcMemHandle.from_buffer_copy(raw_handle), _LAZY_ENABLE_PEER_ACCESS
            )
            if error:
                text = runtime.cudaGetErrorString(error).decode(errors="replace")
                raise InvalidRequest(f"failed to register shared memory region '{name}': invalid args ({text})")
            self._pointer = pointer.value or 0
            try:
                allocation = self._allocation_size()
                if byte_size > allocation:
                    raise InvalidRequest(
                        f"failed to register shared memory region '{name}': invalid args (byte_size {byte_size} "
                        f"is larger than the {allocation} bytes the handle refers to)"
                    )
                self._view: Any = torch.as_tensor(_DeviceMemory(self._pointer, byte_size), device=self._device)
            except BaseException:
                runtime.cudaIpcCloseMemHandle(ctypes.c_void_p(self._pointer))
                raise

    def _allocation_size(self) -> int:
        """Bytes from the handle's address to the end of its allocation."""
        base, size = ctypes.c_uint64(), ctypes.c_size_t()
        error = _driver().cuMemGetAddressRange_v2(ctypes.byref(base), ctypes.byref(size), self._pointer)
        if error:
            raise InvalidRequest(
                f"failed to register shared memory region '{self.name}': invalid args "
                f"(cuMemGetAddressRange failed with CUresult {error})"
            )
        return int(base.value) + int(size.value) - self._pointer

    def read(self, offset: int, byte_size: int) -> np.ndarray:
        """One device-to-host copy (blocking)."""
        import torch

        with torch.cuda.device(self._device):
            host: np.ndarray = self._view[offset : offset + byte_size].cpu().numpy()
        return host

    def write(self, offset: int, data: np.ndarray) -> None:
        """One host-to-device copy, finished before this returns (the client reads it after our answer)."""
        import torch

        with torch.cuda.device(self._device):
            self._view[offset : offset + data.size].copy_(torch.from_numpy(np.ascontiguousarray(data)))
            torch.cuda.current_stream(self._device).synchronize()

    def _close(self) -> None:
        import torch

        self._view = None
        with torch.cuda.device(self._device):
            torch.cuda.synchronize(self._device)
            _runtime().cudaIpcCloseMemHandle(ctypes.c_void_p(self._pointer))
