"""Triton's shared-memory extensions: tensors that travel through memory the client and server share.

- ``_region``: what every region has: bounds, and leases that keep it open while requests use it;
- ``_system``: system shared memory (a ``/dev/shm`` segment, opened by key and mapped);
- ``_cuda``: CUDA shared memory (device memory opened from a ``cudaIpcMemHandle_t``);
- ``_registry``: the registered regions, in one namespace, bounded in number;
- ``_request``: one inference request's tensors in regions: checks, zero-copy reads, writes.

The data plane owns one ``SharedMemoryRegistry`` and serves the six RPCs from it; the REST gateway reaches
them through the same RPCs.
"""

from v2server.shared_memory._cuda import IPC_HANDLE_SIZE, CudaRegion, gpu_count
from v2server.shared_memory._region import Kind, Region
from v2server.shared_memory._registry import DEFAULT_MAX_REGIONS, SharedMemoryRegistry
from v2server.shared_memory._request import (
    SHM_BYTE_SIZE,
    SHM_OFFSET,
    SHM_PARAMETERS,
    SHM_REGION,
    Placement,
    RequestMemory,
    bind_request,
    read_inputs,
    uses_shared_memory,
    write_outputs,
)
from v2server.shared_memory._system import SHM_ROOT, SystemRegion, segment_file_name

__all__ = [
    "DEFAULT_MAX_REGIONS",
    "IPC_HANDLE_SIZE",
    "SHM_BYTE_SIZE",
    "SHM_OFFSET",
    "SHM_PARAMETERS",
    "SHM_REGION",
    "SHM_ROOT",
    "CudaRegion",
    "Kind",
    "Placement",
    "Region",
    "RequestMemory",
    "SharedMemoryRegistry",
    "SystemRegion",
    "bind_request",
    "gpu_count",
    "read_inputs",
    "segment_file_name",
    "uses_shared_memory",
    "write_outputs",
]
