"""The model repository on disk: configuration files and version folders (memory is ``registry``)."""

from v2server.repository.config import BACKEND, CONFIG_FILENAME, PLATFORM, complete_config, read_config
from v2server.repository.layout import available_versions, discover_models, select_versions

__all__ = [
    "BACKEND",
    "CONFIG_FILENAME",
    "PLATFORM",
    "available_versions",
    "complete_config",
    "discover_models",
    "read_config",
    "select_versions",
]
