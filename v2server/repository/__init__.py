"""The model repository on disk: configuration files and version folders (memory is ``registry``)."""

from v2server.repository.config import (
    CONFIG_FILENAME,
    apply_override,
    complete_config,
    default_config,
    read_raw_config,
)
from v2server.repository.labels import read_labels
from v2server.repository.layout import available_versions, discover_models, fingerprint, select_versions

__all__ = [
    "CONFIG_FILENAME",
    "apply_override",
    "available_versions",
    "complete_config",
    "default_config",
    "discover_models",
    "fingerprint",
    "read_labels",
    "read_raw_config",
    "select_versions",
]
