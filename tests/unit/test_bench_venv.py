"""``bench.venv.ensure_venv``: built once, reused while the stamp matches, rebuilt when it does not.

No package index is needed: an empty requirement list builds a bare venv.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.venv import ensure_venv, venv_python


def test_a_venv_is_built_once_and_rebuilt_when_its_stamp_is_stale(tmp_path: Path) -> None:
    venv = tmp_path / "envs" / "bare"
    python = ensure_venv(venv, ())
    assert python == venv_python(venv.resolve()) and python.exists()
    stamp = venv / ".requirements-sha256"
    marker = venv / "marker"
    marker.write_text("kept while the stamp matches")

    assert ensure_venv(venv, ()) == python and marker.exists()  # fresh: untouched
    assert (tmp_path / "envs" / ".bare.lock").exists()

    stamp.write_text("stale\n")  # as after a pin changed, or an install interrupted before the stamp
    assert ensure_venv(venv, ()) == python
    assert not marker.exists() and stamp.read_text() != "stale\n"  # rebuilt with --clear, stamp written last
    argv = [str(python), "-c", "import sys; print(sys.prefix)"]
    done = subprocess.run(argv, check=False, capture_output=True, text=True)
    assert done.returncode == 0 and Path(done.stdout.strip()).resolve() == venv.resolve()
