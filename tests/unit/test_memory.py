"""The allocator settings are applied where glibc is the C library (these machines), and refused nowhere."""

from __future__ import annotations

import platform
import sys

import pytest

from v2server.memory import keep_freed_memory


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)
def test_glibc_takes_the_settings() -> None:
    assert keep_freed_memory() is True
