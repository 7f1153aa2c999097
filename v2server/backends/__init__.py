"""Model backends: how a model file is loaded onto devices and executed."""

from v2server.backends.devices import place_instances
from v2server.backends.torchscript import StageTimes, TorchScriptInstance, load_instance

__all__ = ["StageTimes", "TorchScriptInstance", "load_instance", "place_instances"]
