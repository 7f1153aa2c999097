"""The model repository on disk: configuration files and version folders (memory is ``registry``)."""

from v2server.repository.config import (
    BACKEND,
    CONFIG_FILENAME,
    PLATFORM,
    apply_override,
    complete_config,
    read_config,
    read_raw_config,
)
from v2server.repository.layout import available_versions, discover_models, fingerprint, select_versions

__all__ = [
    "BACKEND",
    "CONFIG_FILENAME",
    "PLATFORM",
    "apply_override",
    "available_versions",
    "complete_config",
    "discover_models",
    "fingerprint",
    "read_config",
    "read_raw_config",
    "select_versions",
]
