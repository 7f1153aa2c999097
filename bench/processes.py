"""Starting, pinning, watching and stopping the processes a benchmark runs: servers on one CPU, clients on another.

The machine's cores are shared by client and server, so each side is pinned (``taskset``) to its own CPU when
there are two or more; the layout is recorded with the results. What a server process tree costs is read from
``/proc``: its resident sets (``rss_bytes``, ``peak_rss_bytes``) and the CPU time it has used (``cpu_seconds``).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Pinning", "cpu_seconds", "free_port", "http_get", "peak_rss_bytes", "pinning", "reset_peak_rss", "rss_bytes",
    "started",
    "tree", "wait_http_ok", "wait_tcp",
]


@dataclass(frozen=True)
class Pinning:
    server_cpus: str
    client_cpus: str

    def server(self, argv: Sequence[str]) -> list[str]:
        return ["taskset", "-c", self.server_cpus, *argv] if self.server_cpus else list(argv)

    def client(self, argv: Sequence[str]) -> list[str]:
        return ["taskset", "-c", self.client_cpus, *argv] if self.client_cpus else list(argv)


def pinning() -> Pinning:
    """Server on the first CPU this process may use, clients on the second; no pinning on one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Pinning("", "")
    return Pinning(str(cpus[0]), str(cpus[1]))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def started(
    argv: Sequence[str], log_file: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` in its own process group (output to ``log_file``); SIGTERM the group on exit, then SIGKILL."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, env=dict(env or os.environ), cwd=cwd,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            _stop_group(process)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # workers a server forked (MLServer's) may outlive their parent: the group goes too
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def http_get(port: int, path: str, timeout: float = 10) -> tuple[int, bytes]:
    """``GET path`` on 127.0.0.1:``port``: the status and the body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_http_ok(port: int, paths: Sequence[str], process: subprocess.Popen[bytes], seconds: float) -> None:
    """Until every ``GET path`` answers 200 (a server's readiness), or fail naming what did not."""
    deadline = time.monotonic() + seconds
    pending = list(paths)
    while pending:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {seconds:.0f} s: {pending}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", pending[0])
            status = connection.getresponse().status
            connection.close()
        except OSError:
            status = 0
        if status == 200:
            pending.pop(0)
        else:
            time.sleep(0.2)


def wait_tcp(port: int, process: subprocess.Popen[bytes], seconds: float) -> None:
    """Until something accepts connections on ``port``."""
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                tree.setdefault(parent, []).append(int(entry.name))
    return tree


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server's worker processes)."""
    children, found, stack = _children(), [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its descendants (``/proc/PID/stat``).

    Each process counts its own ``utime + stime`` and the ``cutime + cstime`` of the children it has reaped, so
    a worker that exits between two readings still counts, once. The difference of two readings is what the
    tree spent in between (to a clock tick, ``SC_CLK_TCK``, usually 10 ms); processes gone unreaped are lost.
    """
    ticks = 0
    for current in tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime (fields 14-17)
    return ticks / _CLOCK_TICKS


def _status_bytes(pids: Sequence[int], field: str) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1]) * 1024
    return total


def peak_rss_bytes(pid: int) -> int:
    """Sum of the peak resident set (VmHWM) of ``pid`` and its descendants: a server's worker processes count."""
    return _status_bytes(tree(pid), "VmHWM")


def rss_bytes(pids: Sequence[int]) -> int:
    """Sum of the current resident sets (VmRSS) of ``pids`` (those that still exist)."""
    return _status_bytes(pids, "VmRSS")


def reset_peak_rss(pid: int) -> bool:
    """Reset the peak resident set (VmHWM) of ``pid`` and its descendants to their current one (Linux 4.0+);
    False where the kernel refused it for some process."""
    done = True
    for current in tree(pid):
        try:
            Path(f"/proc/{current}/clear_refs").write_text("5")
        except OSError:
            done = False
    return done
