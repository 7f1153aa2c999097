"""``--workers N``: N server processes on the same ports under a small supervisor (docs/operations.md).

- ``supervisor``: starts, restarts and drains the workers, serves the summed ``/metrics``;
- ``worker``: what a server process adds when it is one of them (``server.V2Server`` uses it);
- ``peers``, ``private``: a worker's client to the others and its own private endpoint (a unix socket);
- ``journal``: the changes a restarted worker replays; ``merge``: sums of statistics and metrics;
- ``identity``: who a worker is and where the shared private folder's files are.
"""

from v2server.workers.identity import WorkerIdentity, is_worker
from v2server.workers.supervisor import supervise

__all__ = ["WorkerIdentity", "is_worker", "supervise"]
