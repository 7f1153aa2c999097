"""Which backend serves a config: the ``v2server.backends`` entry points, by ``backend`` and ``platform``.

An entry point names a callable that returns a ``ModelBackend`` (``pytorch =
"v2server.backends.torchscript:backend"`` in our own ``pyproject.toml``). Entry points are read once, on first
use; a config that names neither a backend nor a platform gets ``DEFAULT_BACKEND``, as the bundled
repository expects.
"""

from __future__ import annotations

import logging
from functools import cache
from importlib.metadata import entry_points

from v2server._proto import model_config_pb2 as mc
from v2server.backends.base import ModelBackend
from v2server.errors import ModelLoadError

__all__ = ["DEFAULT_BACKEND", "ENTRY_POINT_GROUP", "available", "resolve"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "v2server.backends"
DEFAULT_BACKEND = "pytorch"


@cache
def available() -> dict[str, ModelBackend]:
    """Every installed backend by name (loaded once; a backend that fails to import is logged and left out)."""
    found: dict[str, ModelBackend] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            backend = entry.load()()
        except Exception:
            log.exception("backend entry point %s = %s failed to load; it is left out", entry.name, entry.value)
            continue
        if not isinstance(backend, ModelBackend):
            log.error("backend entry point %s = %s is not a ModelBackend; it is left out", entry.name, entry.value)
            continue
        found[backend.name] = backend
    return found


def resolve(config: mc.ModelConfig, source: str) -> ModelBackend:
    """The backend for ``config``; fills its ``platform``, ``backend`` and ``default_model_filename``.

    Raises:
        ModelLoadError: no installed backend serves the config's ``backend`` / ``platform``.
    """
    backends = available()
    wanted = config.backend or (DEFAULT_BACKEND if not config.platform else "")
    backend = backends.get(wanted) if wanted else None
    if backend is None and not wanted:
        backend = next((b for b in backends.values() if config.platform in b.platforms), None)
    if backend is None or (config.platform and config.platform not in backend.platforms):
        served = ", ".join(f"backend \"{b.name}\" (platform {' or '.join(b.platforms)})" for b in backends.values())
        raise ModelLoadError(
            f"{source}: platform '{config.platform}' / backend '{config.backend}' is not served here; "
            f"use {served or 'an installed backend (none is installed)'}"
        )
    config.backend = backend.name
    config.platform = config.platform or backend.platforms[0]
    if not config.default_model_filename:
        config.default_model_filename = backend.default_model_filename
    return backend
