"""Model backends: the ``ModelBackend`` protocol, and the catalog that finds one for a config.

Backends themselves live in sub-packages (``torchscript``) or in other distributions, found through the
``v2server.backends`` entry points; importing this package imports no backend (and no torch).
"""

from v2server.backends.base import ModelBackend, ModelInstance, StageTimes
from v2server.backends.catalog import available, resolve

__all__ = ["ModelBackend", "ModelInstance", "StageTimes", "available", "resolve"]
