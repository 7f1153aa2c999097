"""Sequence batching (``sequence_batching`` in ``config.pbtxt``): Triton's ``direct`` and ``oldest`` strategies,
control inputs and implicit state.

``_config`` validates the config and parses it once; ``_request`` reads a request's sequence parameters;
``_scheduler`` is the :class:`SequenceBatcher` a sequence model's handle owns.
"""

from v2server.sequences._config import (
    DEFAULT_IDLE_US,
    BooleanControl,
    CorridControl,
    SequenceSpec,
    StateSpec,
    backend_signature,
    complete_sequence_batching,
)
from v2server.sequences._request import SequenceControl, SequenceId, sequence_control
from v2server.sequences._scheduler import (
    DEFAULT_MAX_BACKLOG,
    DEFAULT_MAX_QUEUED,
    Clock,
    LoopClock,
    SequenceBatcher,
    SlotRunner,
)

__all__ = [
    "DEFAULT_IDLE_US",
    "DEFAULT_MAX_BACKLOG",
    "DEFAULT_MAX_QUEUED",
    "BooleanControl",
    "Clock",
    "CorridControl",
    "LoopClock",
    "SequenceBatcher",
    "SequenceControl",
    "SequenceId",
    "SequenceSpec",
    "SlotRunner",
    "StateSpec",
    "backend_signature",
    "complete_sequence_batching",
    "sequence_control",
]
