"""Stamped, locked virtual environments for third-party servers and clients that must not meet our ``.venv``.

The benchmark's peers (``bench/peers/envs.py``) and the interop suite's clients (``tests/interop/envs.py``) each
live in a venv of their own, because they pin web stacks that conflict with ours and with each other. Both
build them the same way, here (stdlib only: callers import this from our venv):

* a stamp file holding a hash of the Python version and the requirements is written last, so an interrupted
  install is redone and a changed pin rebuilds the venv;
* a lock file beside the venv serialises callers: two test sessions or harnesses sharing a folder would
  otherwise pip-install into one venv at once (pip then fails reading half-written metadata);
* ``preinstall`` goes in first and alone, then again with the requirements, so pip resolves against it (the
  bench uses it to keep the local CPU torch wheel instead of downloading a CUDA one).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ensure_venv", "venv_python"]

_STAMP = ".requirements-sha256"


def venv_python(venv: Path) -> Path:
    """The interpreter of ``venv`` (which may not exist yet)."""
    return Path(venv) / "bin" / "python"


def ensure_venv(venv: Path, requirements: Sequence[str], preinstall: Sequence[str] = ()) -> Path:
    """Create ``venv`` with ``requirements`` (or reuse it when they are unchanged); returns its python.

    Args:
        venv: the venv's folder; its parent is created if needed and holds the lock file.
        requirements: pip requirement specifiers, pinned by the caller so reruns install alike.
        preinstall: specifiers installed first and alone, then kept in the final resolve.
    """
    venv = Path(venv).resolve()
    venv.parent.mkdir(parents=True, exist_ok=True)
    stamp = _stamp(requirements, preinstall)
    with (venv.parent / f".{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _fresh(venv, stamp):
            _build(venv, requirements, preinstall, stamp)
    return venv_python(venv)


def _stamp(requirements: Sequence[str], preinstall: Sequence[str]) -> str:
    text = json.dumps([sys.version_info[:2], list(preinstall), list(requirements)])
    return hashlib.sha256(text.encode()).hexdigest()


def _fresh(venv: Path, stamp: str) -> bool:
    stamp_file = venv / _STAMP
    return stamp_file.exists() and stamp_file.read_text().strip() == stamp and venv_python(venv).exists()


def _run(argv: Sequence[str]) -> None:
    print("+", " ".join(argv), file=sys.stderr, flush=True)
    subprocess.run(list(argv), check=True, stdout=sys.stderr)


def _build(venv: Path, requirements: Sequence[str], preinstall: Sequence[str], stamp: str) -> None:
    print(f"[venv] building {venv} ({' '.join([*preinstall, *requirements])})", file=sys.stderr, flush=True)
    started = time.monotonic()
    _run([sys.executable, "-m", "venv", "--clear", str(venv)])
    pip = [str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    if preinstall:
        _run([*pip, *preinstall])
    if requirements:
        _run([*pip, *preinstall, *requirements])
    (venv / _STAMP).write_text(stamp + "\n")
    print(f"[venv] {venv.name} built in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
