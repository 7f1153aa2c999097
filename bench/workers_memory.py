"""Memory of ``--workers N``: the whole process tree (supervisor included) once the server is ready.

Run from the repository root: ``.venv/bin/python bench/workers_memory.py [COUNTS...]`` (default: 1 2). For each
count it starts ``python -m v2server --model-repository model_repository --workers N`` on 127.0.0.1 (free
ports), waits for readiness and 5 s more, reads every process of the tree from /proc (VmRSS; and Pss and the
private pages from smaps_rollup, since RSS counts the shared libraries and the interpreter's shared pages once per
process), stops it with SIGTERM and writes docs/bench/workers.json (docs/operations.md cites it). Linux only.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "bench" / "workers.json"
SETTLE_SECONDS = 5.0
READY_TIMEOUT = 300.0


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def _tree(pid: int) -> list[int]:
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        queue += _children(current)
    return pids


def _kib(text: str, field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _memory(pid: int, workers: int) -> dict[str, Any]:
    status = Path(f"/proc/{pid}/status").read_text()
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    worker = re.search(r"^V2SERVER_WORKER_INDEX=(\d+)$", Path(f"/proc/{pid}/environ").read_text().replace("\0", "\n"),
                       re.MULTILINE)
    return {
        "pid": pid,
        "role": f"worker {worker.group(1)}" if worker else ("supervisor" if workers > 1 else "server"),
        "rss_mib": round(_kib(status, "VmRSS") / 1024, 1),
        "pss_mib": round(_kib(rollup, "Pss") / 1024, 1),
        "private_mib": round((_kib(rollup, "Private_Clean") + _kib(rollup, "Private_Dirty")) / 1024, 1),
    }


def measure(workers: int) -> dict[str, Any]:
    args = [sys.executable, "-m", "v2server", "--model-repository", "model_repository", "--workers", str(workers),
            "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1",
            "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    process = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    ready = threading.Event()
    ready_line = "server ready: True" if workers == 1 else f"server ready: all {workers} workers up"

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            if ready_line in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not ready.wait(READY_TIMEOUT):
            raise SystemExit(f"--workers {workers}: not ready in {READY_TIMEOUT:.0f} s")
        time.sleep(SETTLE_SECONDS)
        processes = sorted((_memory(pid, workers) for pid in _tree(process.pid)), key=lambda p: str(p["role"]))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=10)
        assert process.stderr is not None
        process.stderr.close()
    total = {key: round(sum(float(p[key]) for p in processes), 1)
             for key in ("rss_mib", "pss_mib", "private_mib")}
    return {"workers": workers, "processes": processes, **{f"total_{key}": value for key, value in total.items()}}


def main(argv: list[str]) -> int:
    counts = [int(arg) for arg in argv] or [1, 2]
    runs = [measure(count) for count in counts]
    for run in runs:
        print(f"--workers {run['workers']}: RSS {run['total_rss_mib']} MiB, PSS {run['total_pss_mib']} MiB, "
              f"private {run['total_private_mib']} MiB over {len(run['processes'])} processes")
    OUTPUT.write_text(json.dumps({
        "what": "memory of the process tree of `v2server --model-repository model_repository --workers N` once "
                "ready (bench/workers_memory.py): VmRSS, Pss and private pages, per process and summed",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()},
        "runs": runs,
    }, indent=2) + "\n")
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
