"""``mlserver infer`` (MLServer 1.7's batch-inference command) against v2server's REST address.

Usage: ``python mlserver_infer.py HOST:PORT``. Writes an input file of V2 requests for ``simple`` (INT32 add/sub),
one JSON request per line (one that names an input the model lacks), runs this venv's ``mlserver infer`` on it
in three modes (one request per call; micro-batches of 2, which MLServer merges along the batch dimension
and splits back; ``--binary-data``), and prints one JSON object: per mode the command's exit code and every
output line as MLServer wrote it, sorted by ``batch_index``. The assertions live in test_mlserver.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

COUNT = 6  # valid requests (even, so micro-batches of 2 never pair one with the bad request that follows)
MODES = {"single": ["--batch-size", "1"], "micro_batch": ["--batch-size", "2"], "binary": ["--binary-data"]}


def requests() -> list[dict]:
    """The input file's requests: ``INPUT0 = arange(16) + 100 i``, ``INPUT1 = i``, id ``req-i``; then a bad one."""
    lines = []
    for i in range(COUNT):
        a = (np.arange(16, dtype=np.int32) + 100 * i).reshape(1, 16)
        lines.append(
            {
                "id": f"req-{i}",
                "inputs": [
                    {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": a.ravel().tolist()},
                    {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [i] * 16},
                ],
            }
        )
    lines.append(
        {
            "id": "req-bad",
            "inputs": [{"name": "NOPE", "datatype": "INT32", "shape": [1, 16], "data": [0] * 16}],
        }
    )
    return lines


def run(address: str, mode: str, flags: list[str], source: Path) -> dict:
    """One ``mlserver infer`` run; its exit code, the tail of its log, and its output lines by batch_index."""
    target = Path(f"out-{mode}.txt")
    command = [
        str(Path(sys.executable).parent / "mlserver"),
        "infer",
        "--url",
        address,
        "--model-name",
        "simple",
        "--input-data-path",
        str(source),
        "--output-data-path",
        str(target),
        "--workers",
        "2",
        "--retries",
        "1",
        *flags,
    ]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    lines = (
        [json.loads(line) for line in target.read_text().splitlines() if line.strip()]
        if target.exists()
        else []
    )
    lines.sort(key=lambda line: line.get("parameters", {}).get("batch_index", -1))
    return {"returncode": done.returncode, "log_tail": done.stderr[-2000:], "lines": lines}


def main(address: str) -> None:
    source = Path("requests.txt")
    source.write_text("".join(json.dumps(line) + "\n" for line in requests()))
    print(json.dumps({mode: run(address, mode, flags, source) for mode, flags in MODES.items()}))


if __name__ == "__main__":
    main(sys.argv[1])
