"""Building the handles of one model from its folder: config (override, auto-complete, validation), the
backend that serves it, instances on their devices, warmup.

Every step that touches the disk or loads a model runs in a worker thread; the event loop only awaits.
Failures are per version: one that fails to load does not stop the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from pathlib import Path

from v2server._proto import model_config_pb2 as mc
from v2server.backends import ModelBackend, ModelInstance, resolve
from v2server.errors import V2Error
from v2server.handle import ModelHandle
from v2server.repository import (
    CONFIG_FILENAME,
    apply_override,
    complete_config,
    default_config,
    read_labels,
    read_raw_config,
    select_versions,
)
from v2server.sequences import backend_signature
from v2server.signature import Signature
from v2server.statistics import DEFAULT_BUCKETS_US
from v2server.warmup import run_warmup, warmup_requests

__all__ = ["ModelLoader"]

log = logging.getLogger(__name__)


class ModelLoader:
    """Loads every version a model's policy selects into ``ModelHandle``s."""

    def __init__(
        self,
        strict_model_config: bool = True,
        latency_buckets_us: tuple[float, ...] = DEFAULT_BUCKETS_US,
        renamed: Collection[str] = (),
    ) -> None:
        self._strict = strict_model_config
        self._buckets_us = latency_buckets_us
        self._renamed = frozenset(renamed)  # single model folders served under a name given by flag

    async def build(
        self, name: str, model_dir: Path, config_override: str | None
    ) -> tuple[dict[int, ModelHandle], dict[int, str]]:
        """The handles that loaded, by version, and the reasons of the versions that did not.

        Raises:
            ModelLoadError: the config is unusable (no version is tried).
        """
        config, backend = await asyncio.to_thread(self.read_config, name, model_dir, config_override)
        labels = await asyncio.to_thread(read_labels, config, model_dir)
        versions = select_versions(model_dir, config.version_policy)
        results = await asyncio.gather(
            *(self._load_version(backend, name, model_dir, config, v, labels) for v in versions),
            return_exceptions=True,
        )
        handles: dict[int, ModelHandle] = {}
        failures: dict[int, str] = {}
        for version, result in zip(versions, results, strict=True):
            if isinstance(result, ModelHandle):
                handles[version] = result
            else:
                failures[version] = result.message if isinstance(result, V2Error) else repr(result)
        return handles, failures

    def read_config(
        self, name: str, model_dir: Path, config_override: str | None
    ) -> tuple[mc.ModelConfig, ModelBackend]:
        """The file's config, the override merged over it, auto-completed when not strict, validated
        (blocking: reads files and, to auto-complete, the model)."""
        config = read_raw_config(model_dir, missing_ok=not self._strict or config_override is not None)
        if not config.ListFields() and not self._strict:
            config = default_config(name)
        if config_override is not None:
            config = apply_override(config, config_override)
        if name in self._renamed:
            config.name = name  # a folder served under a name given by flag (KServe's --model-name)
        source = model_dir / CONFIG_FILENAME
        backend = resolve(config, str(source))
        if not self._strict and (not config.input or not config.output):
            policy = config.version_policy if config.HasField("version_policy") else mc.ModelVersionPolicy()
            latest = select_versions(model_dir, policy)[-1]
            for note in backend.complete(config, model_dir / str(latest) / config.default_model_filename):
                log.info("model '%s': %s", name, note)
        complete_config(config, name, source)
        return config, backend

    async def _load_version(
        self, backend: ModelBackend, name: str, model_dir: Path, config: mc.ModelConfig, version: int,
        labels: dict[str, tuple[str, ...]],
    ) -> ModelHandle:
        version_config = mc.ModelConfig()
        version_config.CopyFrom(config)
        devices = backend.devices(version_config)
        signature = Signature.from_config(version_config)
        bound = backend_signature(version_config, signature)  # + a sequence model's control and state tensors
        path = model_dir / str(version) / version_config.default_model_filename
        parameters = {key: value.string_value for key, value in version_config.parameters.items()}
        results = await asyncio.gather(
            *(
                asyncio.to_thread(backend.load, path, device, bound, f"{name}-v{version}-{i}-{device}", parameters)
                for i, device in enumerate(devices)
            ),
            return_exceptions=True,
        )
        instances: list[ModelInstance] = [r for r in results if not isinstance(r, BaseException)]
        handle = ModelHandle(name, version, version_config, signature, instances, self._buckets_us, labels)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        try:
            if failure is not None:
                raise failure
            requests = await asyncio.to_thread(warmup_requests, version_config, model_dir)  # reads files
            if requests:
                await run_warmup(handle.instances, requests, list(signature.outputs))
        except BaseException:
            await asyncio.to_thread(handle.close)
            raise
        return handle
