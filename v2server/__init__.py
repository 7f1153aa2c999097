"""v2server: a KServe V2 / Open Inference Protocol server for TorchScript models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("v2server")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
