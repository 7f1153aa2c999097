"""Which devices a model's instances go to, from ``instance_group``.

KIND_GPU places ``count`` instances on each listed GPU (all GPUs when none are listed); KIND_AUTO means GPU
when CUDA is available, else CPU. Without CUDA, GPU groups fall back to CPU with a warning so a config
written for a GPU node still serves on a laptop. Groups are rewritten to the kind actually used, as Triton
reports it in ``ModelConfig``.
"""

from __future__ import annotations

import logging

import torch

from v2server._proto import model_config_pb2 as mc
from v2server.errors import ModelLoadError

__all__ = ["place_instances"]

log = logging.getLogger(__name__)
_Kind = mc.ModelInstanceGroup.Kind


def place_instances(config: mc.ModelConfig) -> list[str]:
    """One torch device string per instance to load; updates ``config.instance_group`` in place."""
    gpu_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices: list[str] = []
    for group in config.instance_group:
        if group.kind == _Kind.KIND_AUTO:
            group.kind = _Kind.KIND_GPU if gpu_count else _Kind.KIND_CPU
        if group.kind == _Kind.KIND_GPU:
            if not gpu_count:
                log.warning(
                    "model '%s' instance group '%s' asks for GPUs but CUDA is not available: serving on CPU",
                    config.name, group.name,
                )
                devices.extend(["cpu"] * group.count)
                continue
            if not group.gpus:
                group.gpus.extend(range(gpu_count))
            for gpu in group.gpus:
                if not 0 <= gpu < gpu_count:
                    raise ModelLoadError(
                        f"model '{config.name}' instance group '{group.name}' lists GPU {gpu}, "
                        f"but only {gpu_count} GPU(s) are visible"
                    )
                devices.extend([f"cuda:{gpu}"] * group.count)
        else:  # KIND_CPU, and KIND_MODEL whose module places itself: inputs start on the CPU
            devices.extend(["cpu"] * group.count)
    return devices
